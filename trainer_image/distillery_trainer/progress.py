"""Progress for people and for the operator: a bar on the terminal, progress.json in the store."""

from __future__ import annotations

import sys
import time
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

    def _stage_span(self, name: str) -> tuple[float, float]:
        names = list(STAGE_END)
        start = STAGE_END[names[names.index(name) - 1]] if names.index(name) > 0 else 0
        return float(start), float(STAGE_END[name])

    def stage(self, name: str, message: str = "") -> None:
        self.close_bar()
        self.stage_name = name
        self.percent = self._stage_span(name)[0]
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

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.store is None or (not force and now - self._last_write < self.min_interval_s):
            return
        self._last_write = now
        body = {"stage": self.stage_name, "percent": self.percent,
                "updated": datetime.now(UTC).isoformat(timespec="seconds")}
        if self.epoch is not None:
            body.update(epoch=self.epoch, totalEpochs=self.total_epochs)
        try:
            self.store.write_json("progress.json", body)
        except Exception as err:  # progress is best-effort; never fail a run over it
            print(f"[distillery] warning: could not write progress.json: {err}", file=sys.stderr)
