"""The Argo CD health checks in deploy/argocd/ run on real statuses, in Lua 5.1.

Argo CD runs resource health scripts with gopher-lua (Lua 5.1) and a global ``obj`` holding the
live object (JSON null fields are absent). ``lupa`` (PyPI) embeds real Lua interpreters; the
scripts run here under Lua 5.1 with the same contract. The statuses come from the operator's own
status builders (``distillery.controller.status``, ``registry.frontier_statuses``), so a change
to what the operator writes is checked against what Argo CD will show.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from distillery.api.job import Artifacts, Decision, Hardware, ModelMetrics, Task, Variant
from distillery.api.result import TrainerResult
from distillery.controller import registry
from distillery.controller import status as st

lupa = pytest.importorskip(
    "lupa", reason="lupa (a Lua interpreter from PyPI) is not installed: pip install -e '.[dev]'")
try:
    from lupa import lua51
except ImportError:  # pragma: no cover - every lupa 2.x wheel ships Lua 5.1
    pytest.skip("this lupa build has no Lua 5.1 runtime (Argo CD's gopher-lua is Lua 5.1)",
                allow_module_level=True)

ARGOCD = Path(__file__).resolve().parents[2] / "deploy" / "argocd"
JOB_SCRIPT = ARGOCD / "health-distillationjob.lua"
STUDENT_SCRIPT = ARGOCD / "health-studentmodel.lua"
SEARCH_SCRIPT = ARGOCD / "health-distillationsearch.lua"
ARGOCD_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _drop_nulls(value):
    """Argo CD converts the object to Lua tables; JSON nulls become absent keys."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value if v is not None]
    return value


def run_health(script: Path, obj: dict) -> dict:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    # Argo CD's sandbox: no os/io; the scripts must not need them.
    lua.execute("os = nil; io = nil; require = nil; dofile = nil; loadfile = nil")
    lua.globals().obj = lua.table_from(_drop_nulls(copy.deepcopy(obj)), recursive=True)
    result = lua.execute(script.read_text())
    assert result is not None, f"{script.name} returned nothing"
    out = {k: result[k] for k in ("status", "message") if result[k] is not None}
    assert out.get("status") in ARGOCD_STATUSES, out
    return out


def job(status: dict | None = None, generation: int = 1) -> dict:
    obj = {
        "apiVersion": "distillery.io/v1alpha1",
        "kind": "DistillationJob",
        "metadata": {"name": "digits", "namespace": "ml", "generation": generation},
        "spec": {"teacher": {"uri": "s3://models/t"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def result(accepted: bool, reasons: list[str]) -> TrainerResult:
    teacher = ModelMetrics(accuracy=0.96, metric_name="accuracy", latency_p50_ms=100.0, parameters=1000,
                           size_bytes=4000, num_layers=6)
    student = ModelMetrics(accuracy=0.95, metric_name="accuracy", latency_p50_ms=40.0, parameters=500,
                           size_bytes=2000, num_layers=3)
    return TrainerResult(
        job="digits", task=Task.TABULAR_CLASSIFICATION, hardware=Hardware.CPU, fingerprint="f" * 16,
        spec_hash="s" * 16, teacher_uri="s3://models/t", teacher=teacher, student=student,
        variants=[Variant(name="fp32", metrics=student, accepted=accepted)], layers_kept=[1, 3, 5], speedup=2.5, accuracy_retention=0.95 / 0.96, compression_ratio=2.0,
        pareto_score=2.5 * 0.95 / 0.96, decision=Decision(accepted=accepted, reasons=reasons),
        artifacts=Artifacts(uri="s3://runs/digits/g1"),
        start_time="2026-01-01T00:00:00+00:00", completion_time="2026-01-01T00:10:00+00:00",
    )


# ------------------------------------------------------------------------- DistillationJob


def test_no_status_is_progressing():
    health = run_health(JOB_SCRIPT, job())
    assert health["status"] == "Progressing"
    assert "operator" in health["message"]


def test_pending_is_progressing():
    health = run_health(JOB_SCRIPT, job(st.started(1, "distill-digits-g1", None, queued=False).to_wire()))
    assert health["status"] == "Progressing"
    assert health["message"].startswith("Pending")


def test_queued_for_kueue_is_progressing():
    health = run_health(JOB_SCRIPT, job(st.started(1, "distill-digits-g1", None, queued=True).to_wire()))
    assert health["status"] == "Progressing"


def test_running_is_progressing_with_the_progress():
    started = st.started(1, "distill-digits-g1", None, queued=False).to_wire()
    running = {**started, **st.running(1, {"stage": "training", "percent": 42.4, "epoch": 2, "totalEpochs": 4},
                                       started["conditions"]).to_wire()}
    health = run_health(JOB_SCRIPT, job(running))
    assert health == {"status": "Progressing", "message": "Running: training 42%, epoch 2/4"}


def test_running_without_progress_yet():
    started = st.started(1, "distill-digits-g1", None, queued=False).to_wire()
    running = {**started, **st.running(1, None, started["conditions"]).to_wire()}
    health = run_health(JOB_SCRIPT, job(running))
    assert health["status"] == "Progressing" and health["message"].startswith("Running")


def test_succeeded_and_accepted_is_healthy():
    done = st.finished(1, result(True, ["speedup 2.50x >= 1.5x"]), True, ["speedup 2.50x >= 1.5x"],
                       "digits-g1", None).to_wire()
    health = run_health(JOB_SCRIPT, job(done))
    assert health["status"] == "Healthy"
    assert health["message"] == "accepted: StudentModel digits-g1 (speedup 2.50x, retention 0.9896)"


def test_succeeded_and_rejected_is_healthy_with_the_reasons():
    # A rejected student is a finished job with a verdict, not a broken resource (see the
    # comment at the top of the script); the message says it was rejected and why.
    reasons = ["relative accuracy drop 0.0104 > 0.01", "speedup 2.50x >= 1.5x"]
    done = st.finished(1, result(False, reasons), False, reasons, None, None).to_wire()
    health = run_health(JOB_SCRIPT, job(done))
    assert health["status"] == "Healthy"
    assert health["message"].startswith("rejected: relative accuracy drop 0.0104 > 0.01; speedup")


def test_rejected_by_the_frontier_rule_says_who_dominates():
    reasons = ["dominated on the frontier by digits-old-g1"]
    done = st.finished(1, result(True, ["ok"]), False, reasons, None, None).to_wire()
    health = run_health(JOB_SCRIPT, job(done))
    assert health["status"] == "Healthy"
    assert "rejected: dominated on the frontier by digits-old-g1" in health["message"]


def test_failed_is_degraded_with_the_reason_and_message():
    failed = st.failed(1, "OOMKilled", "the trainer ran out of memory (raise spec.resources.memory)", None).to_wire()
    health = run_health(JOB_SCRIPT, job(failed))
    assert health["status"] == "Degraded"
    assert health["message"] == "OOMKilled: the trainer ran out of memory (raise spec.resources.memory)"


def test_missing_secret_is_degraded():
    failed = st.failed(1, "SecretMissing", "Secret 'store-creds' not found in namespace 'ml'", None).to_wire()
    health = run_health(JOB_SCRIPT, job(failed))
    assert health["status"] == "Degraded" and "store-creds" in health["message"]


def test_status_of_an_older_generation_is_progressing():
    # The spec changed (generation 2) and the operator has not started the new run yet: whatever
    # generation 1 ended with, Argo CD must not report it as the current state.
    for old in (st.failed(1, "TrainerFailed", "boom", None).to_wire(),
                st.finished(1, result(True, ["ok"]), True, ["ok"], "digits-g1", None).to_wire()):
        health = run_health(JOB_SCRIPT, job(old, generation=2))
        assert health["status"] == "Progressing"
        assert "generation 2" in health["message"]


def test_the_new_generation_runs_after_a_failure():
    failed = st.failed(1, "TrainerFailed", "boom", None).to_wire()
    restarted = {**failed, **st.started(2, "distill-digits-g2", failed["conditions"], queued=False).to_wire()}
    health = run_health(JOB_SCRIPT, job(restarted, generation=2))
    assert health["status"] == "Progressing"


# ------------------------------------------------------------------------- StudentModel


def student(name: str, accuracy: float, latency: float, size: int) -> dict:
    return {
        "apiVersion": "distillery.io/v1alpha1",
        "kind": "StudentModel",
        "metadata": {"name": name, "namespace": "ml", "generation": 1,
                     "labels": {"distillery.io/frontier-group": "g1"}},
        "spec": {"metrics": {"accuracy": accuracy, "latencyP50Ms": latency, "sizeBytes": size}},
    }


def test_student_without_status_is_progressing():
    health = run_health(STUDENT_SCRIPT, student("a", 0.9, 10.0, 100))
    assert health["status"] == "Progressing"


def test_students_on_and_off_the_frontier_are_healthy():
    models = [student("fast", 0.90, 10.0, 100), student("accurate", 0.95, 30.0, 100),
              student("worse", 0.89, 40.0, 200)]
    statuses = registry.frontier_statuses(models)
    for m in models:
        m["status"] = statuses[m["metadata"]["name"]]
    by_name = {m["metadata"]["name"]: run_health(STUDENT_SCRIPT, m) for m in models}
    assert by_name["fast"] == {"status": "Healthy", "message": "on the Pareto frontier of group g1"}
    assert by_name["accurate"]["status"] == "Healthy"
    assert by_name["worse"]["status"] == "Healthy"
    assert sorted(statuses["worse"]["dominatedBy"]) == ["accurate", "fast"]
    assert by_name["worse"]["message"] == "dominated by " + ", ".join(statuses["worse"]["dominatedBy"])


def test_student_status_of_an_older_generation_is_progressing():
    m = student("a", 0.9, 10.0, 100)
    m["metadata"]["generation"] = 2
    m["status"] = {"onFrontier": True, "dominatedBy": [], "group": "g1", "observedGeneration": 1}
    assert run_health(STUDENT_SCRIPT, m)["status"] == "Progressing"


# ------------------------------------------------------------------------- argocd-cm snippet


def test_argocd_cm_snippet_carries_the_scripts_verbatim():
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    data = cm["data"]
    assert data["resource.customizations.health.distillery.io_DistillationJob"] == JOB_SCRIPT.read_text(), (
        "deploy/argocd/argocd-cm.yaml is out of date: copy health-distillationjob.lua into it")
    assert data["resource.customizations.health.distillery.io_StudentModel"] == STUDENT_SCRIPT.read_text(), (
        "deploy/argocd/argocd-cm.yaml is out of date: copy health-studentmodel.lua into it")
    assert data["resource.customizations.health.distillery.io_DistillationSearch"] == SEARCH_SCRIPT.read_text(), (
        "deploy/argocd/argocd-cm.yaml is out of date: copy health-distillationsearch.lua into it")
    # No ignoreDifferences: the operator never writes spec (docs/gitops.md).
    assert not any(k.startswith("resource.customizations.ignoreDifferences") for k in data)


def test_scripts_use_only_lua51_and_the_sandbox():
    for script in (JOB_SCRIPT, STUDENT_SCRIPT, SEARCH_SCRIPT):
        text = script.read_text()
        for banned in ("os.", "io.", "require(", "goto ", "//"):
            code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
            assert banned not in code, f"{script.name} uses {banned!r}, which Argo CD's Lua 5.1 sandbox lacks"


# ------------------------------------------------------------------------- DistillationSearch


def search_object(cluster) -> dict:
    return {"apiVersion": "distillery.io/v1alpha1", "kind": "DistillationSearch",
            "metadata": {"name": cluster.name, "namespace": cluster.namespace, "generation": 1},
            "spec": cluster.spec, "status": copy.deepcopy(cluster.status)}


def test_a_search_is_progressing_until_its_budget_is_spent_then_healthy_with_its_best_trial(tmp_path):
    from tests.controller.test_search_decide import Cluster, search_spec

    c = Cluster(search_spec(tmp_path, budget={"maxTrials": 2, "parallelTrials": 2}))
    assert run_health(SEARCH_SCRIPT, search_object(c))["status"] == "Progressing"
    c.step()
    health = run_health(SEARCH_SCRIPT, search_object(c))
    assert health["status"] == "Progressing" and health["message"].startswith("Running: 0 of 2 trials finished")
    c.finish("s-t000", accepted=True)
    c.finish("s-t001", accepted=False)
    c.step()
    health = run_health(SEARCH_SCRIPT, search_object(c))
    assert health["status"] == "Healthy"
    assert health["message"].startswith("best trial s-t000 (StudentModel s-t000-g1)")


def test_a_search_without_a_student_is_healthy_and_bad_input_is_degraded(tmp_path):
    from tests.controller.test_search_decide import Cluster, search_spec

    c = Cluster(search_spec(tmp_path, budget={"maxTrials": 1}))
    c.step()
    c.finish("s-t000", accepted=False)
    c.step()
    health = run_health(SEARCH_SCRIPT, search_object(c))
    assert health["status"] == "Healthy" and health["message"].startswith("no student meets the targets")

    bad = Cluster(search_spec(tmp_path, budget={"maxTrials": 2}))
    bad.step()
    bad.fail("s-t000", "InvalidInput", "student.keepLayers: 9 is larger than the teacher's 6 layers")
    bad.step()
    health = run_health(SEARCH_SCRIPT, search_object(bad))
    assert health["status"] == "Degraded" and health["message"].startswith("TrialInvalid: ")
