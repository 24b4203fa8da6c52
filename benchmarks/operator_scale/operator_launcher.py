"""What-if launcher: `distillery operator` with kopf's sync-handler thread pool resized.

Used only by ``run.py --kopf-max-workers N`` to test whether the operator is limited by kopf's
default executor (a ThreadPoolExecutor with min(32, cores + 4) threads: 6 on 2 cores), which
runs every sync handler (reconcile, the `follow` timer, the frontier handlers). It registers
one more startup handler that sets ``settings.execution.max_workers`` and then runs the
operator's own CLI unchanged:

    BENCH_KOPF_MAX_WORKERS=32 python benchmarks/operator_scale/operator_launcher.py operator --namespace NS
"""

from __future__ import annotations

import os
import sys

import kopf


@kopf.on.startup()
def _bench_thread_pool(settings: kopf.OperatorSettings, **_) -> None:
    settings.execution.max_workers = int(os.environ["BENCH_KOPF_MAX_WORKERS"])


if __name__ == "__main__":
    from distillery.cli import main

    sys.exit(main(sys.argv[1:]))
