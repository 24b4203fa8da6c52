"""A trainer stand-in for tests/cluster/test_hostile_store.py, run by the node agent as the pod.

Jobs that name their own S3 endpoint (the test's endpoint that never answers) get a trainer that
runs for a few seconds and exits 0 without touching the store, so the operator alone meets the
hanging store: first for progress, then for the result. Every other job gets the operator-scale
benchmark's fake trainer (a recorded result written to the job's file:// output)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    spec = json.loads(os.environ["DISTILLERY_JOB"])["spec"]
    if spec["output"].get("endpoint"):
        time.sleep(float(os.environ.get("STORE_FREE_TRAINER_SECONDS", "8")))
        raise SystemExit(0)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
    from benchmarks.operator_scale.fake_trainer import main

    raise SystemExit(main())
