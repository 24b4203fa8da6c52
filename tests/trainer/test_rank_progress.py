"""Per-rank progress of a distributed run: the ranks other than 0 publish theirs on the process
group's key-value store, and rank 0 lists them in progress.json where they differ from its own."""

from __future__ import annotations

import json
import socket
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from distillery.store import open_store
from distillery_trainer.distributed import World, process_group
from distillery_trainer.progress import (
    MAX_LISTED_RANKS,
    Progress,
    RankBoard,
    WorkerProgress,
    ranks_where_they_differ,
)

# ----------------------------------------------------------------------------- the merge


def test_ranks_moving_together_are_not_listed():
    main = {"stage": "training", "percent": 42.3, "epoch": 2, "totalEpochs": 3}
    # A worker's published percent trails its own by up to half a point and a step: together.
    others = {1: {"stage": "training", "percent": 41.9, "epoch": 2, "totalEpochs": 3}, 2: dict(main)}
    assert ranks_where_they_differ(main, others) is None
    assert ranks_where_they_differ(main, {}) is None


def test_a_rank_elsewhere_lists_rank_0_and_each_rank_that_differs():
    main = {"stage": "selecting-layers", "percent": 17.5}
    others = {1: {"stage": "waiting", "percent": 5.0}, 2: {"stage": "selecting-layers", "percent": 17.5},
              3: {"stage": "teacher-outputs", "percent": 5.0, "epoch": None}}
    assert ranks_where_they_differ(main, others) == [
        {"rank": 0, "stage": "selecting-layers", "percent": 17.5},
        {"rank": 1, "stage": "waiting", "percent": 5.0},
        {"rank": 3, "stage": "teacher-outputs", "percent": 5.0}]
    # The same stage, but further apart than a publishing interval explains: a lagging rank.
    lagging = ranks_where_they_differ({"stage": "training", "percent": 50.0}, {1: {"stage": "training", "percent": 45}})
    assert [line["rank"] for line in lagging] == [0, 1]


def test_a_rank_whose_part_is_over_and_a_finished_run_list_nothing():
    # The other ranks end with training; rank 0 evaluates, exports and benchmarks alone.
    assert ranks_where_they_differ({"stage": "evaluating", "percent": 82.0}, {1: {"stage": "done", "percent": 100}}) is None
    # Rank 0 done (it may finish before a waiting rank has heard DONE): no rank is behind.
    assert ranks_where_they_differ({"stage": "done", "percent": 100.0}, {1: {"stage": "waiting", "percent": 5}}) is None


def test_at_most_the_ranks_furthest_from_rank_0_are_listed_in_rank_order():
    main = {"stage": "training", "percent": 50.0}
    others = {rank: {"stage": "training", "percent": 50.0 - rank % 40} for rank in range(1, 200)}
    listed = ranks_where_they_differ(main, others)
    assert len(listed) == MAX_LISTED_RANKS + 1 and listed[0]["rank"] == 0
    assert [line["rank"] for line in listed[1:]] == sorted(line["rank"] for line in listed[1:])
    assert min(line["percent"] for line in listed[1:]) == 11.0  # the furthest behind is kept
    assert all(line["percent"] <= 50.0 - 33 for line in listed[1:])


# ----------------------------------------------------------------------------- the board


def hash_store() -> dist.HashStore:
    """torch.distributed's in-process key-value store; a get that waited would fail within seconds."""
    store = dist.HashStore()
    store.set_timeout(timedelta(seconds=5))
    return store


def test_the_board_reads_only_the_ranks_that_published_without_waiting():
    store = hash_store()
    RankBoard(store, 2, 4).publish({"stage": "waiting", "percent": 5.0})
    store.set("progress/3", b"not json")
    assert RankBoard(store, 0, 4).others() == {2: {"stage": "waiting", "percent": 5.0}}
    RankBoard(store, 1, 4).publish({"stage": "loading", "percent": 0.0})
    RankBoard(store, 3, 4).publish({"stage": "loading", "percent": 0.0})
    assert sorted(RankBoard(store, 0, 4).others()) == [1, 2, 3]
    assert RankBoard(store, 0, 1).others() == {}


def test_a_worker_publishes_each_stage_and_its_wait_at_the_end_of_the_stage_it_was_in():
    store = hash_store()
    progress = WorkerProgress(RankBoard(store, 1, 2))
    rank_0 = RankBoard(store, 0, 2)
    progress.stage("loading")
    assert rank_0.others() == {1: {"stage": "loading", "percent": 0.0}}
    progress.waiting()
    assert rank_0.others() == {1: {"stage": "waiting", "percent": 5.0}}
    progress.stage("training")
    progress.fraction(0.5, 1, 2)
    assert rank_0.others() == {1: {"stage": "training", "percent": 50.0, "epoch": 1, "totalEpochs": 2}}
    progress.finish()
    assert rank_0.others()[1]["stage"] == "done"


def test_a_worker_publishes_as_its_percent_moves_not_as_the_clock_does():
    store = hash_store()
    progress = WorkerProgress(RankBoard(store, 1, 2))
    rank_0 = RankBoard(store, 0, 2)
    progress.stage("training")
    progress.fraction(0.004, 1, 2)  # 20.2: the epoch is news
    progress.fraction(0.008, 1, 2)  # 20.5: less than half a point since
    assert rank_0.others()[1]["percent"] == 20.2
    progress.fraction(0.02, 1, 2)  # 21.2
    assert rank_0.others()[1]["percent"] == 21.2


def test_rank_0_lists_a_lagging_rank_while_it_writes_nothing_itself(tmp_path):
    """Rank 0 waiting in a collective writes nothing of its own; its peer watch still lists a rank
    that moved (and writes again only when the list changes)."""
    store = hash_store()
    progress = Progress(open_store(str(tmp_path)), show_bar=False, min_interval_s=3600)
    progress.watch_peers(RankBoard(store, 0, 2), every_s=0.05)
    try:
        progress.stage("teacher-outputs")  # then, as if waiting in the gather
        assert "ranks" not in json.loads((tmp_path / "progress.json").read_text())
        RankBoard(store, 1, 2).publish({"stage": "teacher-outputs", "percent": 9.5})

        def written() -> dict:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                document = json.loads((tmp_path / "progress.json").read_text())
                if "ranks" in document:
                    return document
                time.sleep(0.05)
            raise AssertionError("the peer watch never wrote the lagging rank")

        assert written()["ranks"] == [{"rank": 0, "stage": "teacher-outputs", "percent": 5.0},
                                      {"rank": 1, "stage": "teacher-outputs", "percent": 9.5}]
    finally:
        progress.stop_watching_peers()
    assert progress.peers is None and progress._watch is None


# ----------------------------------------------------------------------------- two real processes


def _rank_main(rank: int, port: int, out: str, results) -> None:
    """One rank of a real two-process gloo group set up as the trainer sets it up (env rendezvous,
    rank 0 hosting the store): rank 1 publishes, rank 0 writes progress.json."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    try:
        with process_group(World(rank, 2), torch.device("cpu")) as group_store:
            board = RankBoard(group_store, rank, 2)
            if rank == 0:
                results.put((0, rank_0_writes(board, Path(out))))
            else:
                rank_1_publishes(board)
                results.put((1, None))
    except Exception as err:  # noqa: BLE001 - reported to the test
        results.put((rank, f"{type(err).__name__}: {err}"))


def rank_0_writes(board: RankBoard, out: Path) -> list[dict]:
    progress = Progress(open_store(str(out)), show_bar=False, min_interval_s=0)
    progress.peers = board
    documents = []
    dist.barrier()  # rank 1 waits for rank 0, which selects layers alone
    progress.stage("selecting-layers")
    documents.append(json.loads((out / "progress.json").read_text()))
    dist.barrier()
    dist.barrier()  # both train, at the same step
    progress.stage("training")
    progress.fraction(0.5, 1, 2)
    documents.append(json.loads((out / "progress.json").read_text()))
    return documents


def rank_1_publishes(board: RankBoard) -> None:
    progress = WorkerProgress(board)
    progress.stage("loading")
    progress.waiting()
    dist.barrier()
    dist.barrier()
    progress.stage("training")
    progress.fraction(0.5, 1, 2)
    dist.barrier()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_rank_1s_progress_reaches_rank_0s_progress_json_only_where_it_differs(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(rank, port, str(tmp_path), results)) for rank in range(2)]
    for proc in procs:
        proc.start()
    got = dict(results.get(timeout=180) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert got[1] is None, got
    apart, together = got[0]
    assert apart["stage"] == "selecting-layers" and apart["ranks"] == [
        {"rank": 0, "stage": "selecting-layers", "percent": 15.0},
        {"rank": 1, "stage": "waiting", "percent": 5.0}]
    assert together["stage"] == "training" and together["percent"] == 50.0 and "ranks" not in together
