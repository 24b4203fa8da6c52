"""The operator's one shared state, made at startup and handed to every handler as kopf's memo.

kopf gives each object a shallow copy of the memo, so everything here that changes is a
container changed in place (never an attribute assigned after startup).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from distillery.api.job import DistillationJob
from distillery.controller import policy
from distillery.controller.debounce import Debouncer
from distillery.controller.kube import Kube
from distillery.controller.settings import Settings
from distillery.controller.store_io import StoreIO
from distillery.store import Store, StoreError, open_store

CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
API_THREADS = 6  # asyncio's default on 2 cores; 10 raised peak RSS (154 vs 136 MiB at N=200), not speed


@dataclass
class OperatorContext:
    settings: Settings
    kube: Any  # Kube, or a stand-in with the same methods in tests
    namespaces: list[str]  # watched namespaces; empty: the whole cluster
    store_io: StoreIO
    frontier: Debouncer  # recomputes frontier groups from snapshots, off the event loop
    gone: set[str] = field(default_factory=set)  # StudentModel uids a resync LIST no longer had
    trainer_checked: dict[tuple[str, str], float] = field(default_factory=dict)  # last GET per trainer Job
    # What this operator wrote and the watch may not have brought back yet (per job uid), so a
    # tick that sees the old status neither writes the same progress again nor finishes twice.
    progress_written: dict[str, tuple[int, dict]] = field(default_factory=dict)
    finished: dict[str, int] = field(default_factory=dict)  # uid -> the generation finished
    started: dict[str, tuple[int, float]] = field(default_factory=dict)  # uid -> (generation, monotonic time)
    frontier_written: dict[tuple[str, str], dict] = field(default_factory=dict)  # (ns, model) -> status
    tasks: list[Any] = field(default_factory=list)  # background asyncio tasks, cancelled at cleanup
    # Kubernetes calls from the event loop run here, apart from kopf's pool and the store readers.
    api_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="kube-api"))

    def note_started(self, uid: str, generation: int) -> None:
        self.started[uid] = (generation, time.monotonic())

    def started_recently(self, uid: str, generation: int) -> bool:
        """Whether this operator started the generation within trainer_recheck_s: a status that
        does not show it yet is the watch lagging our write. Later, the start is tried again (its
        status patch may have failed); creating the Job again is a harmless 409."""
        seen = self.started.get(uid)
        return seen is not None and seen[0] == generation and time.monotonic() - seen[1] < self.settings.trainer_recheck_s

    async def api(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) (a blocking Kubernetes call) in the API pool, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.api_pool, fn, *args)

    @classmethod
    def create(cls, settings: Settings, namespaces: list[str], kube: Any | None = None,
               write_frontier: Callable[[Any, tuple[str, str], list], None] | None = None) -> OperatorContext:
        """The context, its frontier debouncer not started yet (a startup handler starts it)."""
        kube = kube if kube is not None else Kube.connect()
        holder: dict[str, OperatorContext] = {}

        def run_group(key, snapshot):
            if write_frontier is not None:
                write_frontier(holder["ctx"], key, snapshot if snapshot is not None else ([], False))

        ctx = cls(settings=settings, kube=kube, namespaces=list(namespaces),
                  store_io=StoreIO(settings.store_workers),
                  frontier=Debouncer(run_group, settings.frontier_debounce_s))
        holder["ctx"] = ctx
        return ctx

    # -- the job's store (runs in store_io's threads: it reads the Secret and builds a client)
    def open_job_store(self, job: DistillationJob) -> Store:
        name = job.spec.output.credentials_secret or self.settings.default_credentials_secret
        credentials = None
        if name:
            found = self.kube.read_secret(job.metadata.namespace, name)
            if found is None:
                raise StoreError(f"Secret {name!r} (output.credentialsSecret) not found")
            metadata, data = found
            if not policy.secret_opted_in(metadata, name, self.settings):
                raise StoreError(f"Secret {name!r} (output.credentialsSecret) is not marked for use by jobs")
            credentials = {k: data[k] for k in CREDENTIAL_KEYS if k in data} or None
        s = self.settings
        return open_store(job.spec.output.uri, endpoint=job.spec.output.endpoint or s.default_endpoint,
                          region=job.spec.output.region, credentials=credentials,
                          connect_timeout=s.store_connect_timeout_s, read_timeout=s.store_read_timeout_s,
                          max_attempts=s.store_max_attempts)


def read_json_document(store: Store, key: str) -> Any:
    """A JSON file as parsed, NaN and Infinity included (the checks refuse them by name)."""
    try:
        return json.loads(store.read_bytes(key))
    except (UnicodeDecodeError, ValueError) as err:
        raise StoreError(f"{store.uri_for(key)} is not JSON: {type(err).__name__}") from None
