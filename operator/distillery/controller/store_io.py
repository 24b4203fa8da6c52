"""Store reads off kopf's handler threads: a small bounded pool, one call in flight per job.

A handler asks for a read and returns at once; the next tick takes the last completed read.
A store that never answers therefore holds one pool thread for at most its timeouts, never a
handler, and never more than one thread per job; the opened store (a Secret GET and a boto3
client) is kept per job generation and dropped when the job finishes or is deleted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreRead:
    """The last completed read of one kind for one job: its value, or why it failed."""

    value: Any = None
    error: str | None = None
    failures: int = 0  # consecutive failed reads of this kind
    finished_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class StoreIO:
    """Reads for jobs, keyed by ``job`` (a (uid, generation) pair) and a kind ("progress", ...)."""

    def __init__(self, max_workers: int = 4, clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="store-io")
        self._lock = threading.Lock()
        self._in_flight: set[Hashable] = set()
        self._reads: dict[tuple[Hashable, str], StoreRead] = {}
        self._stores: dict[Hashable, Any] = {}
        self._clock = clock

    def submit(self, job: Hashable, kind: str, open_store: Callable[[], Any],
               read: Callable[[Any], Any]) -> Future | None:
        """Start ``read(store)`` for a job unless one of its calls is in flight (then None).

        ``open_store()`` runs in the pool too (it reads the job's Secret), once per job."""
        with self._lock:
            if job in self._in_flight:
                return None
            self._in_flight.add(job)
        return self._pool.submit(self._run, job, kind, open_store, read)

    def _run(self, job: Hashable, kind: str, open_store: Callable[[], Any], read: Callable[[Any], Any]) -> None:
        try:
            with self._lock:
                store = self._stores.get(job)
            if store is None:
                store = open_store()
                with self._lock:
                    if job in self._in_flight:  # not forgotten meanwhile
                        self._stores[job] = store
            value, error = read(store), None
        except Exception as err:  # noqa: BLE001 - any failure is this read's outcome, kept for the handler
            value, error = None, str(err) or type(err).__name__
        with self._lock:
            previous = self._reads.get((job, kind))
            failures = 0 if error is None else (previous.failures if previous else 0) + 1
            if job in self._in_flight:  # not forgotten meanwhile
                self._reads[(job, kind)] = StoreRead(value, error, failures, self._clock())
            self._in_flight.discard(job)

    def latest(self, job: Hashable, kind: str) -> StoreRead | None:
        with self._lock:
            return self._reads.get((job, kind))

    def in_flight(self, job: Hashable) -> bool:
        with self._lock:
            return job in self._in_flight

    def forget(self, match: Callable[[Hashable], bool]) -> None:
        """Drop the opened stores and reads of the jobs ``match`` selects (finished or deleted)."""
        with self._lock:
            for job in [j for j in self._stores if match(j)]:
                del self._stores[job]
            for key in [k for k in self._reads if match(k[0])]:
                del self._reads[key]
            self._in_flight -= {j for j in self._in_flight if match(j)}

    def held(self) -> int:
        with self._lock:
            return len(self._stores)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
