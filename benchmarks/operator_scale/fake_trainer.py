"""A stand-in for `distillery-trainer` that finishes at once with a RECORDED result.

The operator-scale benchmark sets ``DISTILLERY_TRAINER_COMMAND="<python> <this file>"``; the test
node agent runs it as the trainer pod's process. It reads the per-generation job document from
``DISTILLERY_JOB`` (what the operator puts in the pod), takes ``recorded-result.json`` (one real
`distillery run` of the digits job, see record_result.py), makes it this job's result — ``job``,
``specHash`` and ``fingerprint`` of this spec, ``teacherUri``, the artifact URIs under this
job's output, fresh start/completion times — and writes ``progress.json`` (100 %) and then
``result.json`` to the job's output store, exactly where the operator looks. Exit code 0.

``--jitter`` (the benchmark's ``--metrics jitter`` appends it to the command) perturbs the
student's accuracy and latency deterministically per job name, so the students of one group are
no longer all equal and the registry's frontier changes as they arrive.

Kept light (it runs once per job): json, hashlib and the operator's pydantic models only.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

RECORDED = Path(__file__).resolve().with_name("recorded-result.json")
RECORDED_OUT = "file:///RECORDED/out"


def rescore(result: dict, job) -> None:
    """The variants' verdicts, the choice and the derived scores of changed metrics, as the trainer
    computes them (the operator checks that they follow from the measured numbers)."""
    from distillery.api.result import TrainerResult
    from distillery.variants import rejudge

    for variant in result["variants"]:
        if variant["name"] == result["variant"]:
            variant["metrics"] = result["student"]
    rejudged, _ = rejudge(TrainerResult.model_validate(result), job.spec.targets)
    result.clear()
    result.update(rejudged.to_wire())


def make_result(document: dict, recorded: dict, jitter: bool = False) -> tuple[str, dict]:
    """(the job's output URI, its result.json body)."""
    from distillery.api.job import DistillationJob
    from distillery.fingerprint import spec_hash, training_fingerprint

    job = DistillationJob.model_validate(document)
    out = job.spec.output.uri.rstrip("/")
    result = json.loads(json.dumps(recorded))  # deep copy
    now = datetime.now(UTC).isoformat(timespec="seconds")
    result.update(job=job.metadata.name, specHash=spec_hash(job.spec), fingerprint=training_fingerprint(job.spec),
                  teacherUri=job.spec.teacher.uri, startTime=now, completionTime=now)
    result["artifacts"] = {k: v.replace(RECORDED_OUT, out) for k, v in recorded["artifacts"].items()}
    if jitter:
        h = hashlib.sha256(job.metadata.name.encode()).digest()
        a, b = h[0] / 255.0, h[1] / 255.0  # two independent-ish numbers in [0, 1]
        student = result["student"]
        student["accuracy"] = round(student["accuracy"] - 0.02 * a, 6)
        student["latencyP50Ms"] = round(student["latencyP50Ms"] * (0.8 + 0.4 * b), 6)
        rescore(result, job)
    return out, result


def main() -> int:
    from distillery.api.result import PROGRESS_KEY, RESULT_KEY
    from distillery.store import open_store

    document = json.loads(os.environ["DISTILLERY_JOB"])
    recorded = json.loads(RECORDED.read_text())
    out, result = make_result(document, recorded, jitter="--jitter" in sys.argv[1:])
    store = open_store(out)
    store.write_json(PROGRESS_KEY, {"stage": "writing", "percent": 100.0, "epoch": 2, "totalEpochs": 2,
                                    "updated": result["completionTime"]})
    store.write_json(RESULT_KEY, result)  # last: its presence means the run is complete
    termination = os.environ.get("DISTILLERY_TERMINATION_LOG")
    if termination:  # what the real trainer reports; the operator checks result.json against it
        from distillery.api.result import TrainerResult

        Path(termination).write_text(TrainerResult.model_validate(result).termination_message())
    print(f"fake trainer: {result['job']} -> {out}/{RESULT_KEY} (specHash {result['specHash']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
