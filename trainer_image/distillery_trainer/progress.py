"""Progress for people and for the operator: a bar on the terminal, progress.json in the store.

A distributed run's ranks other than 0 publish their own progress on the process group's
key-value store (RankBoard); rank 0 adds them to progress.json where they differ from its own."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime

# Share of the whole run each stage ends at; training takes most of it.
STAGE_END = {
    "loading": 5,
    "teacher-outputs": 15,
    "selecting-layers": 20,
    "training": 80,
    "evaluating": 86,
    "exporting": 92,
    "benchmarking": 98,
    "writing": 100,
}

# Ranks closer than this are where rank 0 is: in lockstep a worker's published percent trails
# rank 0's by less than PUBLISH_EVERY_PERCENT and a step.
SAME_PERCENT_WITHIN = 1.0
# A worker publishes at each stage and epoch and whenever its percent moved this far, not every few
# seconds: what rank 0 reads is never further behind than that however fast the steps run, and the
# percent adds at most 200 publishes to a run.
PUBLISH_EVERY_PERCENT = SAME_PERCENT_WITHIN / 2
# progress.json and the job's status stay small at any world size: the ranks furthest from rank 0.
MAX_LISTED_RANKS = 32
# How often rank 0 looks at the other ranks between its own writes (it may wait in a collective
# for minutes, the time when a rank that lags matters most).
PEER_LOOK_S = 5.0
_SHOWN = ("stage", "percent", "epoch", "totalEpochs")


def rank_entry(rank: int, body: Mapping) -> dict:
    """One rank's line in progress.json's `ranks`."""
    return {"rank": rank, **{k: body[k] for k in _SHOWN if body.get(k) is not None}}


def differs(main: Mapping, other: Mapping) -> bool:
    """Whether a rank is somewhere other than rank 0 (another stage, or a point or more apart); a
    rank whose part is over (done) is where it should be."""
    if other.get("stage") == "done":
        return False
    return (other.get("stage") != main.get("stage")
            or abs(float(other.get("percent", 0.0)) - float(main.get("percent", 0.0))) >= SAME_PERCENT_WITHIN)


def ranks_where_they_differ(main: Mapping, others: Mapping[int, Mapping]) -> list[dict] | None:
    """progress.json's `ranks`: rank 0 and every rank not where rank 0 is (the MAX_LISTED_RANKS
    furthest from it), in rank order; None while they move together or once rank 0 is done
    (a finished run has no rank behind)."""
    if main.get("stage") == "done":
        return None
    apart = [rank for rank, body in others.items() if differs(main, body)]
    if not apart:
        return None
    here = float(main.get("percent", 0.0))
    furthest = sorted(apart, key=lambda rank: -abs(float(others[rank].get("percent", 0.0)) - here))
    return [rank_entry(0, main)] + [rank_entry(rank, others[rank]) for rank in sorted(furthest[:MAX_LISTED_RANKS])]


class RankBoard:
    """Each rank's progress in the process group's key-value store (torch.distributed's c10d
    store), one key per rank: the other ranks publish without touching the object store, and
    rank 0 reads them without ever waiting for a key (a rank that has not published is left out)."""

    def __init__(self, store, rank: int, size: int):
        self.store, self.rank, self.size = store, rank, size

    @staticmethod
    def _key(rank: int) -> str:
        return f"progress/{rank}"

    def publish(self, body: Mapping) -> None:
        try:
            self.store.set(self._key(self.rank), json.dumps(dict(body)))
        except Exception as err:  # progress is best-effort; never fail a run over it
            print(f"[distillery] warning: rank {self.rank} could not publish its progress: {err}", file=sys.stderr)

    def others(self) -> dict[int, dict]:
        """The other ranks' last published progress, by rank."""
        keys = {self._key(rank): rank for rank in range(self.size) if rank != self.rank}
        if not keys:
            return {}
        # check() answers at once where get() would wait for a key no rank has set yet.
        present = list(keys) if self.store.check(list(keys)) else [k for k in keys if self.store.check([k])]
        values = self.store.multi_get(present) if present else []
        return {keys[key]: body for key, raw in zip(present, values, strict=True)
                if isinstance(body := _json_object(raw), dict)}


def _json_object(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


class Progress:
    """Reports stage, percent and epoch. `store` may be None (no progress.json)."""

    def __init__(self, store=None, *, show_bar: bool | None = None, min_interval_s: float = 2.0):
        self.store = store
        self.show_bar = sys.stderr.isatty() if show_bar is None else show_bar
        self.min_interval_s = min_interval_s
        self.stage_name = "pending"
        self.percent = 0.0
        self.epoch: int | None = None
        self.total_epochs: int | None = None
        self._last_write = 0.0
        self._bar = None
        self.peers: RankBoard | None = None  # rank 0 of a distributed run: where the other ranks publish
        self._lock = threading.Lock()  # one write at a time: the run's and the peer watch's
        self._listed: list[dict] | None = None  # the `ranks` last written
        self._watch: threading.Thread | None = None
        self._stop_watch = threading.Event()

    def _stage_span(self, name: str) -> tuple[float, float]:
        names = list(STAGE_END)
        start = STAGE_END[names[names.index(name) - 1]] if names.index(name) > 0 else 0
        return float(start), float(STAGE_END[name])

    def _enter(self, name: str) -> None:
        self.close_bar()
        self.stage_name = name
        self.percent = self._stage_span(name)[0]

    def stage(self, name: str, message: str = "") -> None:
        self._enter(name)
        print(f"[distillery] {name}{': ' + message if message else ''}", file=sys.stderr, flush=True)
        self._write(force=True)

    def fraction(self, done: float, epoch: int | None = None, total_epochs: int | None = None) -> None:
        """Progress within the current stage, 0..1."""
        start, end = self._stage_span(self.stage_name)
        self.percent = round(start + (end - start) * min(max(done, 0.0), 1.0), 1)
        self.epoch, self.total_epochs = epoch, total_epochs
        self._write()

    def open_bar(self, total: int, desc: str, initial: int = 0):
        if self.show_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr,
                             dynamic_ncols=True, leave=False)
        return self._bar

    def tick(self, n: int = 1, **postfix) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def log(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(f"[distillery] {message}", file=sys.stderr)
        else:
            print(f"[distillery] {message}", file=sys.stderr, flush=True)

    def interrupted(self) -> None:
        """The run was stopped by a signal: progress.json says so (with the percent reached), so
        nobody reading it waits for a stage that will not end."""
        self.close_bar()
        self.stage_name = "interrupted"
        self._write(force=True)

    def finish(self) -> None:
        self.close_bar()
        self.stage_name, self.percent = "done", 100.0
        self._write(force=True)

    def snapshot(self) -> dict:
        """Where this process is: stage, percent and, while training, the epoch."""
        body = {"stage": self.stage_name, "percent": self.percent}
        if self.epoch is not None:
            body.update(epoch=self.epoch, totalEpochs=self.total_epochs)
        return body

    def watch_peers(self, board: RankBoard, every_s: float = PEER_LOOK_S) -> None:
        """Rank 0: list the other ranks from `board`, also between this process's own writes (a
        thread looks every `every_s` seconds and writes progress.json when the list changed)."""
        self.peers = board
        self._stop_watch.clear()
        self._watch = threading.Thread(target=self._look_at_peers, args=(every_s,), daemon=True,
                                       name="distillery-peer-progress")
        self._watch.start()

    def stop_watching_peers(self) -> None:
        """Before the process group (and its store) goes away."""
        self._stop_watch.set()
        if self._watch is not None:
            self._watch.join()
        self._watch, self.peers = None, None

    def _look_at_peers(self, every_s: float) -> None:
        while not self._stop_watch.wait(every_s):
            with self._lock:
                if self.peers is not None and self._ranks_beside(self.snapshot()) != self._listed:
                    self._publish(self.snapshot())

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < self.min_interval_s:
            return
        self._last_write = now
        with self._lock:
            self._publish(self.snapshot())

    def _publish(self, body: dict) -> None:
        """progress.json: this process's progress, and the other ranks' where they differ from it."""
        if self.store is None:
            return
        document = {**body, "updated": datetime.now(UTC).isoformat(timespec="seconds")}
        ranks = self._ranks_beside(body)
        self._listed = ranks
        if ranks is not None:
            document["ranks"] = ranks
        try:
            self.store.write_json("progress.json", document)
        except Exception as err:  # progress is best-effort; never fail a run over it
            print(f"[distillery] warning: could not write progress.json: {err}", file=sys.stderr)

    def _ranks_beside(self, body: dict) -> list[dict] | None:
        if self.peers is None:
            return None
        try:
            return ranks_where_they_differ(body, self.peers.others())
        except Exception as err:  # progress is best-effort; never fail a run over it
            print(f"[distillery] warning: could not read the other ranks' progress: {err}", file=sys.stderr)
            return None


class WorkerProgress(Progress):
    """A rank other than 0: nothing on the terminal (rank 0 speaks for the run); its progress goes
    to the board, where rank 0 reads it."""

    def __init__(self, board: RankBoard | None):
        super().__init__(None, show_bar=False)
        self.board = board
        self._published: dict | None = None

    def stage(self, name: str, message: str = "") -> None:
        self._enter(name)
        self._write(force=True)

    def log(self, message: str) -> None:
        pass

    def waiting(self) -> None:
        """Waiting for rank 0: this rank's part of the stage it was in is done."""
        if self.stage_name in STAGE_END:
            self.percent = float(STAGE_END[self.stage_name])
        self.stage_name = "waiting"
        self._write(force=True)

    def _write(self, force: bool = False) -> None:
        body = self.snapshot()
        if force or self._moved(body):
            self._published = body
            if self.board is not None:
                self.board.publish(body)

    def _moved(self, body: dict) -> bool:
        last = self._published
        return (last is None or body.get("epoch") != last.get("epoch")
                or abs(body["percent"] - last["percent"]) >= PUBLISH_EVERY_PERCENT)
