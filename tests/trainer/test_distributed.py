"""Data-parallel healing under torchrun: two CPU processes (gloo) against the one-process run.

The rule under test (distributed.py): batchSize is the global batch, so with the same seed both
runs take the same steps on the same rows and their loss curves agree up to float summation order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from distillery_trainer.distributed import World, shard, share_range, shared_outputs, world_from_env
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.outputs import OutputWriter, TeacherOutputs
from tests.digits import digits_job_document

# Summation order differs (two half-batch means, then an average of gradients), so losses drift
# apart by float rounding only; measured on digits (3 epochs, 66 steps): at most 1.4e-5 relative.
LOSS_RTOL = 1e-3


def torchrun(job_file: Path, *extra: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *extra,
            "-m", "distillery.cli", "run", str(job_file), "--json", "--no-progress"]


def one_process(job_file: Path) -> list[str]:
    return [sys.executable, "-m", "distillery.cli", "run", str(job_file), "--json", "--no-progress"]


def run_json(cmd: list[str]) -> dict:
    return run_json_and_log(cmd)[0]


def run_json_and_log(cmd: list[str]) -> tuple[dict, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout), done.stderr


def cached_teacher_outputs(output: Path) -> dict[str, torch.Tensor]:
    (entry,) = (output / "cache").glob("teacher-outputs-*.safetensors")
    return load_file(entry)


# ----------------------------------------------------------------------------- the pure parts


def test_each_rank_takes_every_world_th_row_weighted_by_its_share():
    batch = torch.arange(10, 17)  # 7 rows over 2 ranks: 4 and 3
    rows0, w0 = shard(batch, World(0, 2))
    rows1, w1 = shard(batch, World(1, 2))
    assert rows0.tolist() == [10, 12, 14, 16] and rows1.tolist() == [11, 13, 15]
    # DDP averages the ranks' gradients: (w0 * mean0 + w1 * mean1) / 2 is the batch's mean.
    assert w0 == pytest.approx(4 * 2 / 7) and w1 == pytest.approx(3 * 2 / 7)
    assert (w0 + w1) / 2 == pytest.approx(1.0)


def test_a_rank_without_rows_steps_with_weight_zero():
    rows, weight = shard(torch.tensor([5]), World(1, 2))
    assert rows.tolist() == [5] and weight == 0.0


def test_one_process_is_untouched():
    batch = torch.arange(5)
    rows, weight = shard(batch, World())
    assert rows is batch and weight == 1.0


def test_the_teacher_pass_shares_are_contiguous_and_cover_every_row_once():
    for rows in (0, 1, 5, 7, 1400):
        for size in (1, 2, 3):
            shares = [share_range(rows, World(rank, size)) for rank in range(size)]
            assert [i for share in shares for i in share] == list(range(rows))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_world_comes_from_torchruns_environment():
    assert world_from_env({}) == World(0, 1, 0)
    assert world_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == World(1, 2, 1)
    with pytest.raises(InputError, match="WORLD_SIZE"):
        world_from_env({"WORLD_SIZE": "two"})
    with pytest.raises(InputError, match="process group"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def _share_in_group(rank: int, store_path: str, fail_on: int | None, results, work: str, chunk_rows: int) -> None:
    """One rank of a real two-process gloo group running shared_outputs over 7 rows (and 2)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        data = Encoded({"features": torch.arange(14.0).reshape(7, 2)}, None)

        def compute(part: Encoded, into: Path) -> TeacherOutputs:
            if rank == fail_on:
                raise InputError("teacher.uri: a broken teacher file")
            writer = OutputWriter(into, len(part))  # as the teacher does: the share on disk
            writer.add(TeacherOutputs(part.tensors["features"] * 10, None))
            return writer.finish()

        try:
            out = shared_outputs(compute, [data, data.rows(torch.arange(2))], World(rank, 2),
                                 Path(work) / f"rank{rank}", chunk_rows)
            results.put((rank, None if out is None else [o.logits.tolist() for o in out]))
        except Exception as err:  # noqa: BLE001 - reported to the test
            results.put((rank, f"{type(err).__name__}: {err}"))
    finally:
        dist.destroy_process_group()


def share_in_group(tmp_path: Path, fail_on: int | None, chunk_rows: int = 1024) -> dict:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_share_in_group, args=(rank, str(tmp_path / "store"), fail_on, results,
                                                       str(tmp_path / "work"), chunk_rows))
             for rank in range(2)]
    for proc in procs:
        proc.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    return got


def test_rank_0_gathers_every_share_in_row_order(tmp_path):
    got = share_in_group(tmp_path, fail_on=None)
    assert got[1] is None
    assert got[0] == [(torch.arange(14.0).reshape(7, 2) * 10).tolist(), [[0.0, 10.0], [20.0, 30.0]]]


def test_rank_0_receives_the_shares_chunk_by_chunk_into_files_on_disk(tmp_path):
    """Shares of 4 and 3 rows (and 1 and 1) sent 2 rows at a time: rank 0 never holds a whole
    share, and what it returns is the memory-mapped file it wrote, in row order."""
    got = share_in_group(tmp_path, fail_on=None, chunk_rows=2)
    assert got[1] is None
    assert got[0] == [(torch.arange(14.0).reshape(7, 2) * 10).tolist(), [[0.0, 10.0], [20.0, 30.0]]]
    on_disk = np.load(tmp_path / "work" / "rank0" / "gathered-0" / "logits.npy", mmap_mode="r")
    assert on_disk.tolist() == got[0][0]
    assert not (tmp_path / "work" / "rank1" / "gathered-0").exists()  # only rank 0 gathers


def test_a_share_refused_as_invalid_input_fails_rank_0_with_the_message(tmp_path):
    got = share_in_group(tmp_path, fail_on=1)
    assert got[1] is None  # the other rank returns and waits for rank 0's DONE
    assert got[0].startswith("InputError: rank 1, computing its share") and "a broken teacher file" in got[0]


# ----------------------------------------------------------------------------- real runs


def assert_same_training(one: dict, two: dict) -> None:
    assert two["training"]["steps"] == one["training"]["steps"]
    for a, b in zip(one["training"]["history"], two["training"]["history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_RTOL), (one["training"]["history"],
                                                                     two["training"]["history"])
    assert two["training"]["worldSize"] == 2 and one["training"].get("worldSize") in (None, 1)


def test_two_processes_heal_the_digits_mlp_like_one(digits_workspace, tmp_path, write_job_file):
    docs = {name: digits_job_document(digits_workspace, tmp_path / name, distillation={"epochs": 3})
            for name in ("one", "two")}
    one = run_json(one_process(write_job_file(docs["one"], "one.yaml")))
    two, log = run_json_and_log(torchrun(write_job_file(docs["two"], "two.yaml")))
    assert_same_training(one, two)
    # The teacher pass was shared: each process computed part of the rows, and rank 0's cache
    # entry holds what one process computes alone.
    assert "each of 2 processes computes a share of the rows" in log
    alone, shared = cached_teacher_outputs(tmp_path / "one"), cached_teacher_outputs(tmp_path / "two")
    assert sorted(shared) == sorted(alone)
    for name, tensor in alone.items():
        torch.testing.assert_close(shared[name], tensor, rtol=1e-5, atol=1e-6)
    eval_rows = 397  # tests/digits.py: 1797 digits, 1400 for training
    assert abs(two["student"]["accuracy"] - one["student"]["accuracy"]) <= 1 / eval_rows + 1e-9
    assert two["student"]["accuracy"] > 0.85
    # One result, one set of artifacts: the other rank wrote nothing.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def rank_pids(marker: str, rank: int) -> list[int]:
    """Processes whose command line holds `marker` and whose environment says RANK=rank."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmdline and "distillery.cli" in cmdline and f"RANK={rank}".encode() in environ:
            found.append(int(entry.name))
    return found


def test_a_killed_rank_restarts_the_group_from_the_last_checkpoint(digits_workspace, tmp_path, write_job_file):
    out = tmp_path / "out"
    doc = digits_job_document(digits_workspace, out, distillation={"epochs": 40, "checkpointEverySteps": 5})
    job_file = write_job_file(doc, "killed.yaml")
    latest = out / "checkpoints" / "latest.json"
    proc = subprocess.Popen(torchrun(job_file, "--max-restarts=1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 600
        # Step 0 is the student rank 0 shares; wait for one written by training.
        while not latest.exists() or json.loads(latest.read_text())["state"]["global_step"] < 5:
            assert proc.poll() is None, proc.stderr.read()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.2)
        pids = rank_pids(str(job_file), rank=1)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-4000:]
    result = json.loads(stdout)
    assert result["training"]["resumedFromStep"] >= 5
    assert result["training"]["steps"] == 40 * 22  # every step once: none repeated, none lost
    assert result["student"]["accuracy"] > 0.85
