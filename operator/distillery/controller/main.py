"""Starting the operator: `distillery operator` (the container's command)."""

from __future__ import annotations

import contextlib
import ctypes
import logging

import kopf

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena, so the operator's threads
    (kopf's, asyncio's, the store readers') keep fragmented arenas; two are plenty for a process
    that mostly waits on the network. No-op off glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)


def run(namespaces: list[str], liveness: str | None, verbose: bool = False) -> int:
    """Runs kopf with the handlers registered and one OperatorContext as its memo; blocks until stopped."""
    from distillery.controller import handlers
    from distillery.controller.settings import Settings

    limit_malloc_arenas()  # before any thread starts
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON)
    if not verbose:  # kopf logs every handler success at INFO: a line per job per tick at scale
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = Settings.from_env()
    ctx = handlers.context_for(settings, list(namespaces))
    # The default registry: handlers others registered there (e.g. a launcher's) still run.
    registry = handlers.register(kopf.get_default_registry(), settings.poll_interval_s)
    kopf.run(
        registry=registry,
        memo=ctx,
        standalone=True,  # one replica (Recreate); no peering objects needed
        clusterwide=not namespaces,
        namespaces=namespaces or (),  # kopf iterates it: () means none (cluster-wide)
        liveness_endpoint=liveness,
    )
    return 0
