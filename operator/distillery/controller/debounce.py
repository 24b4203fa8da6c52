"""Coalescing bursts of work per key: one run per key per window, in one background thread.

Each request carries the data the run needs (a snapshot taken by the caller), and the newest
request's data is what the run gets: the thread never reads shared state such as kopf's indexes,
which the event loop changes while it runs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger(__name__)


class Debouncer:
    """``schedule(key, data)`` asks for ``fn(key, data)`` to run once, ``window_s`` after the first
    request, with the data of the newest request.

    Requests for a key that is already waiting join it, so a burst of N events costs one run; a
    request that arrives while its key runs waits for the next window, so the last event is never
    lost. Runs are serial (one thread): two passes never write the same objects at once.
    """

    def __init__(self, fn: Callable[[Hashable, Any], None], window_s: float, retry_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fn, self.window_s, self.retry_s, self.clock = fn, window_s, retry_s, clock
        self._due: dict[Hashable, float] = {}
        self._data: dict[Hashable, Any] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def schedule(self, key: Hashable, data: Any = None, delay_s: float | None = None) -> None:
        with self._cond:
            self._data[key] = data  # the newest snapshot wins
            if key not in self._due:
                self._due[key] = self.clock() + (self.window_s if delay_s is None else delay_s)
                self._cond.notify()

    def pending(self) -> dict[Hashable, float]:
        with self._cond:
            return dict(self._due)

    def run_due(self) -> list[Hashable]:
        """Run every key whose window has passed (the thread's step; tests call it directly)."""
        with self._cond:
            now = self.clock()
            ready = [(k, self._data.pop(k, None)) for k, t in self._due.items() if t <= now]
            for k, _ in ready:
                del self._due[k]
        for key, data in ready:
            try:
                self.fn(key, data)
            except Exception:  # noqa: BLE001 - one failing key must not stop the others
                log.exception("debounced run for %r failed; retrying in %.0f s", key, self.retry_s)
                with self._cond:
                    newer = key in self._due
                if not newer:
                    self.schedule(key, data, self.retry_s)
        return [k for k, _ in ready]

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = self.clock()
                    wake = min(self._due.values(), default=None)
                    if wake is not None and wake <= now:
                        break
                    self._cond.wait(None if wake is None else wake - now)
                if self._stopped:
                    return
            self.run_due()

    def start(self, name: str = "debouncer") -> Debouncer:
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
