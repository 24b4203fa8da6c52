"""The operator against a real API server, Job controller and garbage collector.

The trainer pods are run by the test node agent as local processes running the real trainer;
the operator is the real `distillery operator` process (killed and restarted in some tests).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.cluster.operator_harness import OperatorProcess, apply, condition, get, wait_for
from tests.digits import digits_job_document

TRAINER_TIMEOUT = 600  # the 2-core CI machine may be busy


@pytest.fixture
def operator(control_plane, namespace, tmp_path):
    op = OperatorProcess(control_plane.kubeconfig, namespace, tmp_path).start()
    yield op
    op.stop()


def job_document(ws: Path, out: Path, name: str, **overrides) -> dict:
    doc = digits_job_document(ws, out, **{"distillation": {"epochs": 2}, **overrides})
    doc["metadata"] = {"name": name}
    return doc


def dj(control_plane, namespace, name):
    return get(control_plane, namespace, "distillationjob", name)


def trainer_jobs(control_plane, namespace, name):
    return get(control_plane, namespace, "jobs", selector=f"distillery.io/job={name}")["items"]


def wait_final(control_plane, namespace, name, op, timeout=TRAINER_TIMEOUT):
    def final():
        obj = dj(control_plane, namespace, name)
        return obj if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    return wait_for(final, timeout, f"{name} to finish", on_timeout=lambda: op.logs() + agent_logs(control_plane))


def wait_for_reason(control_plane, namespace, name, reason, op):
    """The job once its Succeeded condition carries `reason` (a Pending job's wait, say)."""
    def reached():
        obj = dj(control_plane, namespace, name)
        c = condition(obj, "Succeeded")
        return obj if c and c["reason"] == reason else None

    return wait_for(reached, 180, reason, on_timeout=op.logs)


def agent_logs(control_plane) -> str:
    logs = sorted(Path(control_plane.agent_log_dir).glob("*"))
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in logs[-3:] if p.is_file())


def test_job_runs_to_an_accepted_student(control_plane, namespace, operator, digits_workspace, tmp_path):
    out = tmp_path / "out"
    apply(control_plane, namespace, job_document(digits_workspace, out, "digits",
                                                 targets={"maxAccuracyDrop": 0.5}))
    # One trainer Job, quickly, with the restricted pod and owner reference.
    jobs = wait_for(lambda: trainer_jobs(control_plane, namespace, "digits"), 180, "the trainer Job")
    assert len(jobs) == 1
    job = jobs[0]
    assert job["metadata"]["name"] == "distill-digits-g1"
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "DistillationJob" and owner["controller"] is True
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] > 0 and "backoffLimit" in job["spec"]

    control_plane.kubectl("wait", "--for=condition=Succeeded", "dj/digits", "-n", namespace,
                          f"--timeout={TRAINER_TIMEOUT}s")
    obj = dj(control_plane, namespace, "digits")
    status = obj["status"]
    result = json.loads((out / "g1" / "result.json").read_text())  # one prefix per generation
    assert status["phase"] == "Succeeded" and status["accepted"] is True
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["student"]["accuracy"] == result["student"]["accuracy"]
    assert status["teacher"]["latencyP50Ms"] == result["teacher"]["latencyP50Ms"]
    assert status["speedup"] == result["speedup"] and status["paretoScore"] == result["paretoScore"]
    assert status["layersKept"] == result["layersKept"]
    assert status["progress"]["percent"] == 100.0
    for type_ in ("Succeeded", "Accepted", "Ready"):
        c = condition(obj, type_)
        assert c["status"] == "True" and c["observedGeneration"] == obj["metadata"]["generation"], c
    assert condition(obj, "Stalled")["status"] == "False"
    # The registered student and the milestones as Events.
    sm = get(control_plane, namespace, "studentmodel", status["studentModel"])
    assert sm["spec"]["metrics"]["accuracy"] == result["student"]["accuracy"]
    assert sm["spec"]["sourceJob"]["name"] == "digits"
    wait_for(lambda: (get(control_plane, namespace, "studentmodel", status["studentModel"]).get("status") or {})
             .get("onFrontier") is True, 180, "the StudentModel on the frontier")
    events = get(control_plane, namespace, "events")["items"]
    assert "Accepted" in {e["reason"] for e in events}
    accepted = next(e for e in events if e["reason"] == "Accepted")
    assert f"registered StudentModel {status['studentModel']}" in accepted["message"]
    # The operator never wrote the spec: GitOps sees no drift.
    assert "status" not in obj["spec"] and obj["metadata"]["generation"] == 1
    printed = control_plane.kubectl("get", "dj", "-n", namespace).stdout
    assert "Succeeded" in printed and "true" in printed
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10).read().decode()
    assert 'distillery_reconcile_total{handler="reconcile",result="success"}' in metrics
    assert 'distillery_students_total{verdict="accepted"}' in metrics

    # A replace-style apply (kubectl replace, Argo CD Replace=true) drops kopf's annotations and
    # re-runs the create handler: nothing may run again.
    fresh = {k: obj[k] for k in ("apiVersion", "kind", "spec")}
    fresh["metadata"] = {"name": "digits", "namespace": namespace}
    control_plane.kubectl("replace", "-f", "-", input=json.dumps(fresh))
    import time

    time.sleep(5)  # give the operator time to (wrongly) react; the checks below must still hold
    after = dj(control_plane, namespace, "digits")
    assert len(trainer_jobs(control_plane, namespace, "digits")) == 1
    assert after["status"]["completionTime"] == status["completionTime"]
    assert after["metadata"]["generation"] == 1
    print(printed)  # shown with -s; the README's `kubectl get dj` example comes from here

    # Deleting the job deletes its trainer Job (garbage collection), not the StudentModel.
    control_plane.kubectl("delete", "dj", "digits", "-n", namespace, "--wait=true", "--timeout=120s")
    wait_for(lambda: not trainer_jobs(control_plane, namespace, "digits"), 120, "the trainer Job to be collected")
    assert get(control_plane, namespace, "studentmodel", status["studentModel"])


def test_bad_input_fails_with_the_trainers_message_and_others_still_run(
        control_plane, namespace, operator, digits_workspace, tmp_path):
    bad = job_document(digits_workspace, tmp_path / "bad", "bad-teacher",
                       teacher={"uri": "file:///nonexistent/teacher"})
    apply(control_plane, namespace, bad)
    apply(control_plane, namespace, job_document(digits_workspace, tmp_path / "good", "good",
                                                 targets={"minAccuracy": 0.9999}))
    failed = wait_final(control_plane, namespace, "bad-teacher", operator)
    c = condition(failed, "Succeeded")
    assert c["status"] == "False" and c["reason"] == "InvalidInput", c
    assert "teacher.uri" in c["message"] and "not found" in c["message"]
    assert condition(failed, "Stalled")["status"] == "True"
    # The Job failed at once (podFailurePolicy), not after retries.
    assert len(trainer_jobs(control_plane, namespace, "bad-teacher")) == 1
    good = wait_final(control_plane, namespace, "good", operator)
    assert good["status"]["phase"] == "Succeeded"
    assert good["status"]["accepted"] is False  # rejected: a finished run, not a failure
    assert condition(good, "Accepted")["reason"] == "Rejected"
    assert "minAccuracy" in condition(good, "Accepted")["message"]
    assert not get(control_plane, namespace, "studentmodels")["items"]


def test_missing_secret_waits_and_a_secret_must_opt_in(
        control_plane, namespace, operator, digits_workspace, tmp_path):
    doc = job_document(digits_workspace, tmp_path / "o", "needs-secret")
    doc["spec"]["output"]["credentialsSecret"] = "store-creds"
    apply(control_plane, namespace, doc)

    # A Secret not there yet is a wait (Pending), not a failure: Failed is final.
    pending = wait_for_reason(control_plane, namespace, "needs-secret", "SecretMissing", operator)
    assert pending["status"]["phase"] == "Pending" and "store-creds" in condition(pending, "Succeeded")["message"]
    assert not trainer_jobs(control_plane, namespace, "needs-secret")
    # A Secret that did not opt in is never handed to a trainer.
    other = job_document(digits_workspace, tmp_path / "o2", "other-secret")
    other["spec"]["output"]["credentialsSecret"] = "team-db"
    control_plane.kubectl("create", "secret", "generic", "team-db", "-n", namespace,
                          "--from-literal=password=hunter2-ALICE")
    apply(control_plane, namespace, other)
    refused = wait_final(control_plane, namespace, "other-secret", operator, timeout=180)
    assert condition(refused, "Succeeded")["reason"] == "SecretNotAllowed"
    assert not trainer_jobs(control_plane, namespace, "other-secret")
    # Creating the opted-in Secret lets the job proceed; its values never reach the status.
    apply(control_plane, namespace, {  # created with its label: one write, so no retry sees it without
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "store-creds",
                                                          "labels": {"distillery.io/usable-by-jobs": "true"}},
        "stringData": {"AWS_ACCESS_KEY_ID": "id-123", "AWS_SECRET_ACCESS_KEY": "sekret-456"}})
    wait_for(lambda: trainer_jobs(control_plane, namespace, "needs-secret"), 180, "the Job once the Secret exists")
    done = wait_final(control_plane, namespace, "needs-secret", operator)
    assert done["status"]["phase"] == "Succeeded"
    text = json.dumps(done["status"]) + control_plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    for secret in ("sekret-456", "hunter2-ALICE"):
        assert secret not in text and secret not in operator.logs()


def test_a_job_continues_a_student_model_named_in_its_spec(
        control_plane, namespace, operator, digits_workspace, tmp_path):
    """student.base.studentModel: the child waits (ParentMissing) until the parent's StudentModel
    exists, then its trainer continues those weights, and its own StudentModel records the parent."""
    data = {"trainUri": str(digits_workspace / "data" / "train.npz"),
            "evalUri": str(digits_workspace / "data" / "eval.npz")}
    child = job_document(digits_workspace, tmp_path / "child", "child", targets={"maxAccuracyDrop": 0.5},
                         student={"base": {"studentModel": "parent-g1", "format": "torch"}, "keepRatio": 1.0},
                         incremental={"previousTrainUri": data["trainUri"], "previousEvalUri": data["evalUri"]})
    child["spec"]["student"].pop("keepLayers")
    child["spec"]["student"].pop("method", None)
    apply(control_plane, namespace, child)

    pending = wait_for_reason(control_plane, namespace, "child", "ParentMissing", operator)
    assert pending["status"]["phase"] == "Pending" and "parent-g1" in condition(pending, "Succeeded")["message"]
    assert not trainer_jobs(control_plane, namespace, "child")

    apply(control_plane, namespace, job_document(digits_workspace, tmp_path / "parent", "parent",
                                                 targets={"maxAccuracyDrop": 0.5}))
    parent = wait_final(control_plane, namespace, "parent", operator)
    assert parent["status"]["accepted"] is True
    weights = get(control_plane, namespace, "studentmodel", "parent-g1")["spec"]["artifacts"]["weights"]

    jobs = wait_for(lambda: trainer_jobs(control_plane, namespace, "child"), 180, "the child's trainer Job",
                    on_timeout=operator.logs)
    env = {e["name"]: e.get("value") for e in jobs[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DISTILLERY_STUDENT_BASE_URI"] == weights
    done = wait_final(control_plane, namespace, "child", operator)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["accepted"] is True
    registered = get(control_plane, namespace, "studentmodel", "child-g1")
    assert registered["spec"]["lineage"] == {"parentStudentModel": "parent-g1"}
    # The spec as stored is the user's: the operator never wrote the resolved URI into it.
    assert dj(control_plane, namespace, "child")["spec"]["student"]["base"] == {"studentModel": "parent-g1",
                                                                              "format": "torch"}


def test_operator_restarts_lose_nothing_and_duplicate_nothing(
        control_plane, namespace, operator, digits_workspace, tmp_path):
    operator.kill()  # down before the job exists
    # Long enough to be caught running on a fast machine (6 epochs once ended in about 3 s).
    apply(control_plane, namespace, job_document(digits_workspace, tmp_path / "o", "restart",
                                                 distillation={"epochs": 40, "batchSize": 16}))
    operator.start()
    wait_for(lambda: trainer_jobs(control_plane, namespace, "restart"), 180, "the trainer Job")
    operator.kill()  # down while it runs
    operator.start()
    # Running, or already Succeeded should the trainer still have beaten the restart.
    wait_for(lambda: (dj(control_plane, namespace, "restart").get("status") or {}).get("phase")
             in ("Running", "Succeeded"), 120, "Running")
    operator.kill()
    # The trainer finishes while the operator is down; a restart still records the result.
    wait_for(lambda: any(c.get("type") == "Complete" and c.get("status") == "True"
                         for c in (trainer_jobs(control_plane, namespace, "restart")[0].get("status") or {})
                         .get("conditions") or []), TRAINER_TIMEOUT, "the trainer Job to complete",
             on_timeout=lambda: agent_logs(control_plane))
    operator.start()
    final = wait_final(control_plane, namespace, "restart", operator, timeout=120)
    assert final["status"]["phase"] == "Succeeded"
    assert final["status"]["student"]["accuracy"] > 0.5
    assert len(trainer_jobs(control_plane, namespace, "restart")) == 1
    operator.kill()  # just after it finished
    operator.start()
    assert len(trainer_jobs(control_plane, namespace, "restart")) == 1
    assert dj(control_plane, namespace, "restart")["status"]["completionTime"] == final["status"]["completionTime"]


def test_spec_change_starts_a_new_generation_but_label_edits_do_not(
        control_plane, namespace, operator, digits_workspace, tmp_path):
    # Far more steps than the test waits for: on a fast machine 30 epochs ended in 6 s, before the
    # operator's first progress read. The spec change below replaces this run long before its end.
    doc = job_document(digits_workspace, tmp_path / "o1", "edited", distillation={"epochs": 1000, "batchSize": 16})
    apply(control_plane, namespace, doc)
    wait_for(lambda: trainer_jobs(control_plane, namespace, "edited"), 180, "the first trainer Job")
    # While the trainer runs, status.progress advances (read from the store's progress.json).
    def training_progress():
        progress = (dj(control_plane, namespace, "edited").get("status") or {}).get("progress") or {}
        return progress if progress.get("stage") == "training" and progress.get("epoch") else None

    progress = wait_for(training_progress, TRAINER_TIMEOUT, "training progress", on_timeout=operator.logs)
    assert 20.0 <= progress["percent"] < 80.0 and progress["totalEpochs"] == 1000
    control_plane.kubectl("label", "dj", "edited", "-n", namespace, "team=vision")
    control_plane.kubectl("annotate", "dj", "edited", "-n", namespace, "argocd.argoproj.io/sync-wave=1")
    doc["spec"]["distillation"]["epochs"] = 1
    doc["spec"]["output"]["uri"] = f"file://{tmp_path / 'o2'}"
    apply(control_plane, namespace, doc)
    final = wait_final(control_plane, namespace, "edited", operator)
    assert final["metadata"]["generation"] == 2
    assert final["status"]["observedGeneration"] == 2 and final["status"]["phase"] == "Succeeded"
    names = wait_for(lambda: [j["metadata"]["name"] for j in trainer_jobs(control_plane, namespace, "edited")
                              if not j["metadata"].get("deletionTimestamp")] == ["distill-edited-g2"] or None,
                     120, "only the generation-2 Job")
    assert names
    assert final["status"]["trainerJob"] == "distill-edited-g2"
    # The old generation's pods went with its Job: nothing of generation 1 keeps running.
    wait_for(lambda: not [p for p in get(control_plane, namespace, "pods")["items"]
                          if p["metadata"]["labels"].get("distillery.io/generation") == "1"],
             120, "generation-1 pods to be deleted")


def test_queue_name_makes_a_suspended_kueue_job(control_plane, namespace, operator, digits_workspace, tmp_path):
    apply(control_plane, namespace, job_document(digits_workspace, tmp_path / "o", "queued", queueName="team-a"))
    job = wait_for(lambda: trainer_jobs(control_plane, namespace, "queued"), 180, "the Job")[0]
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    import time

    time.sleep(3)  # several follow-ups (1 s poll) later, a suspended Job is still only queued
    status = dj(control_plane, namespace, "queued")["status"]
    assert status["phase"] == "Pending"
    assert condition(dj(control_plane, namespace, "queued"), "Succeeded")["reason"] == "Queued"


def test_workers_make_an_indexed_job_behind_a_headless_service(control_plane, namespace, operator,
                                                                 digits_workspace, tmp_path):
    """The API server accepts what the operator builds for resources.workers: 2 (the pods run on
    the real node in tests/e2e; here the Job stays queued, so no pod starts)."""
    doc = job_document(digits_workspace, tmp_path / "o", "pair", queueName="team-a", resources={"workers": 2})
    apply(control_plane, namespace, doc)
    job = wait_for(lambda: trainer_jobs(control_plane, namespace, "pair"), 180, "the Job")[0]
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 2, 2)
    assert job["spec"]["template"]["spec"]["subdomain"] == "distill-pair-workers"
    service = get(control_plane, namespace, "service", "distill-pair-workers")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    owner = dj(control_plane, namespace, "pair")
    assert service["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    assert wait_for(lambda: (dj(control_plane, namespace, "pair").get("status") or {}).get("worldSize"), 60,
                    "status.worldSize") == 2


def student_model(name: str, accuracy: float, latency: float, size: int, group: str = "g1") -> dict:
    return {
        "apiVersion": "distillery.io/v1alpha1", "kind": "StudentModel",
        "metadata": {"name": name, "labels": {"distillery.io/frontier-group": group}},
        "spec": {"teacher": {"uri": "s3://m/teacher", "task": "sequence-classification"},
                 "artifacts": {"uri": f"s3://m/{name}"},
                 "metrics": {"accuracy": accuracy, "latencyP50Ms": latency, "sizeBytes": size}},
    }


def test_frontier_of_three_students_with_one_dominated(control_plane, namespace, operator):
    for sm in (student_model("fast", 0.80, 5.0, 50), student_model("accurate", 0.95, 20.0, 200),
               student_model("worse", 0.79, 25.0, 250)):
        apply(control_plane, namespace, sm)

    def statuses():
        items = get(control_plane, namespace, "studentmodels")["items"]
        out = {i["metadata"]["name"]: i.get("status") or {} for i in items}
        return out if all("onFrontier" in s for s in out.values()) and len(out) == 3 else None

    s = wait_for(statuses, 180, "frontier statuses", on_timeout=operator.logs)
    assert s["fast"]["onFrontier"] and s["accurate"]["onFrontier"]
    assert not s["worse"]["onFrontier"] and s["worse"]["dominatedBy"] == ["accurate", "fast"]
    # No finalizer: deleting a StudentModel never waits for the operator.
    assert all(not i["metadata"].get("finalizers") for i in get(control_plane, namespace, "studentmodels")["items"])
    # Deleting a dominating model updates the frontier.
    control_plane.kubectl("delete", "studentmodel", "fast", "-n", namespace)

    def after_delete():
        w = get(control_plane, namespace, "studentmodel", "worse").get("status") or {}
        return w if w.get("dominatedBy") == ["accurate"] else None

    # The DELETED event updates it at once; the periodic resync (5 s here) heals a missed event.
    wait_for(after_delete, 180, "the frontier after a delete", on_timeout=operator.logs)


def test_must_improve_frontier_rejects_a_dominated_student(
        control_plane, namespace, operator, digits_workspace, tmp_path):
    from distillery.controller.naming import frontier_group

    teacher_uri = f"file://{digits_workspace / 'teacher'}"
    group = frontier_group(teacher_uri, "tabular-classification", "cpu")
    apply(control_plane, namespace, student_model("perfect", 1.0, 0.0001, 1, group=group))
    apply(control_plane, namespace, job_document(digits_workspace, tmp_path / "o", "dominated",
                                                 targets={"mustImproveFrontier": True}))
    final = wait_final(control_plane, namespace, "dominated", operator)
    assert final["status"]["accepted"] is False
    assert "dominated on the frontier by perfect" in condition(final, "Accepted")["message"]


def test_deadline_exceeded_is_a_failed_condition(control_plane, namespace, operator, digits_workspace, tmp_path):
    apply(control_plane, namespace, job_document(digits_workspace, tmp_path / "o", "slow",
                                                 distillation={"epochs": 500}, resources={"deadlineSeconds": 3}))
    final = wait_final(control_plane, namespace, "slow", operator, timeout=180)
    c = condition(final, "Succeeded")
    assert c["status"] == "False" and c["reason"] == "DeadlineExceeded", c
    assert "deadlineSeconds" in c["message"]
