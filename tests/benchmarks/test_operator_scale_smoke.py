"""Smoke test of the operator-scale benchmark (benchmarks/operator_scale/): N=3 on the real control plane.

Three DistillationJobs, the real operator, the fake trainer (a recorded result); all three must
end Succeeded and the operator's requests must show up in the API server's audit log. Skips when
the control plane is not built (scripts/build-control-plane.sh), unless
DISTILLERY_REQUIRE_CONTROL_PLANE=1, like tests/cluster/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.cluster.conftest import require_binaries


@pytest.fixture(scope="module")
def control_plane_built() -> None:
    require_binaries()


def test_fake_trainer_result_matches_what_the_operator_checks(tmp_path):
    """The fake trainer's result.json passes the operator's spec-hash check (no cluster needed)."""
    from benchmarks.operator_scale.run import FAKE_TRAINER, job_document

    from distillery.api.job import DistillationJob
    from distillery.api.result import TrainerResult
    from distillery.controller.settings import Settings
    from distillery.controller.trainer_job import build_trainer_job, for_generation
    from distillery.fingerprint import spec_hash

    doc = job_document("bench-0000", tmp_path)
    doc["metadata"].update(namespace="ns", generation=1)
    job = DistillationJob.model_validate(doc)
    container = build_trainer_job(job, "uid", 1, Settings())["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    subprocess.run([sys.executable, str(FAKE_TRAINER)], env={**os.environ, **env}, check=True, timeout=60)
    out = tmp_path / "out" / "bench-0000" / "g1"
    result = TrainerResult.model_validate(json.loads((out / "result.json").read_text()))
    assert result.spec_hash == spec_hash(for_generation(job, 1).spec)
    assert result.job == "bench-0000" and result.decision.accepted
    assert result.artifacts.result == f"file://{out}/result.json"
    assert (out / "progress.json").is_file()


@pytest.mark.timeout(300)
def test_three_jobs_end_succeeded_and_requests_are_audited(control_plane_built):
    from benchmarks.operator_scale.run import run_one

    r = run_one(3, poll_interval=1.0, timeout=120)
    assert not r.get("timed_out"), r["timeline"][-3:]
    assert r["phases"] == {"Succeeded": 3}, r["phases"]
    assert r["student_models"] == 3
    requests = r["requests"]["run"]
    assert requests["non_watch"] > 0, requests
    by = requests["by_verb_resource"]
    assert by.get("create jobs", 0) >= 3 and by.get("patch distillationjobs/status", 0) >= 3, by
    assert r["requests"]["startup"]["watch"] >= 2  # its watches on DistillationJobs and StudentModels
    assert r["operator"]["peak_rss_mib"] > 0
    assert r["time_to_all_jobs_s"] <= r["time_to_all_final_s"]
