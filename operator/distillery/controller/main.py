"""Starting the operator: `distillery operator` (the container's command)."""

from __future__ import annotations

import kopf


def run(namespaces: list[str], liveness: str | None, verbose: bool = False) -> int:
    """Runs kopf with the handlers registered; blocks until stopped."""
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON)
    from distillery.controller import handlers  # importing registers the handlers

    handlers.WATCHED_NAMESPACES = list(namespaces)

    kopf.run(
        standalone=True,  # one replica (Recreate); no peering objects needed
        clusterwide=not namespaces,
        namespaces=namespaces or (),  # kopf iterates it: () means none (cluster-wide)
        liveness_endpoint=liveness,
    )
    return 0
