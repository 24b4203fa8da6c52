"""The reconcile decision without a cluster: observed state in, actions out.

Results come from the operator-scale benchmark's fake trainer (a real recorded `distillery run`
result made this job's), so they are what the operator meets in the cluster.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from benchmarks.operator_scale.fake_trainer import RECORDED, make_result

from distillery.api.job import DistillationJob
from distillery.api.result import TrainerResult
from distillery.controller import decide, naming, registry
from distillery.controller.decide import (
    CreateJob,
    CreateService,
    DeleteJob,
    Event,
    ForgetStore,
    Observed,
    ParentSeen,
    PatchStatus,
    ReadStore,
    RegisterStudent,
    Retry,
    SecretSeen,
)
from distillery.controller.settings import Settings
from distillery.controller.store_io import StoreRead
from distillery.controller.trainer_job import for_generation
from tests.digits import digits_job_document

SETTINGS = Settings()
OPTED_IN = {"name": "creds", "namespace": "ns", "labels": {"distillery.io/usable-by-jobs": "true"}}


def document(tmp_path: Path, **overrides) -> dict:
    doc = digits_job_document(tmp_path / "ws", tmp_path / "out", **overrides)
    doc["metadata"] = {"name": "a", "namespace": "ns"}
    return doc


def obs_of(doc: dict, generation: int = 1, status: dict | None = None) -> Observed:
    return Observed(name="a", namespace="ns", uid="uid-a", generation=generation,
                    body={"apiVersion": doc["apiVersion"], "kind": doc["kind"], "spec": doc["spec"]},
                    status=status or {})


def started(doc: dict, generation: int = 1) -> Observed:
    obs = obs_of(doc, generation)
    patch = next(a for a in decide.decide_start(obs, SETTINGS, None, []) if isinstance(a, PatchStatus))
    return obs_of(doc, generation, patch.patch.to_wire())


def result_for(doc: dict, generation: int = 1) -> dict:
    """result.json as the (fake) trainer of this generation writes it."""
    job = DistillationJob.model_validate({**doc, "metadata": {"name": "a", "namespace": "ns"}})
    gen_doc = for_generation(job, generation).model_dump(by_alias=True, mode="json", exclude_none=True)
    _, result = make_result(gen_doc, json.loads(RECORDED.read_text()))
    return result


def pod(message: dict | None, reason: str = "Completed", created: str = "2026-01-01T00:00:00Z") -> dict:
    terminated = {"exitCode": 0, "reason": reason}
    if message is not None:
        terminated["message"] = json.dumps(message)
    return {"metadata": {"creationTimestamp": created},
            "status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]}}


def reported(result: dict) -> dict:
    return json.loads(TrainerResult.model_validate(result).termination_message())


COMPLETE = {"metadata": {"name": "distill-a-g1"}, "spec": {},
            "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
RUNNING = {"metadata": {"name": "distill-a-g1"}, "spec": {}, "status": {"conditions": []}}


def finish(doc, result, pods, registered=None):
    return decide.decide_follow(started(doc), SETTINGS, COMPLETE, pods, None, StoreRead(value=result), registered)


def kinds(actions):
    return [type(a).__name__ for a in actions]


def status_of(actions) -> dict:
    return next(a for a in actions if isinstance(a, PatchStatus)).patch.to_wire()


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


# ----------------------------------------------------------------------------- start


def test_start_creates_the_trainer_job_and_records_it(tmp_path):
    actions = decide.decide_start(obs_of(document(tmp_path)), SETTINGS, None, ["distill-a-g0"])
    assert kinds(actions) == ["DeleteJob", "CreateJob", "PatchStatus"]
    assert actions[0] == DeleteJob("distill-a-g0")
    assert actions[1].manifest["metadata"]["name"] == "distill-a-g1"
    status = status_of(actions)
    assert status["phase"] == "Pending" and status["trainerJob"] == "distill-a-g1" and status["observedGeneration"] == 1


def test_start_again_only_makes_sure_the_job_exists(tmp_path):
    doc = document(tmp_path)
    assert kinds(decide.decide_start(started(doc), SETTINGS, None, [])) == ["CreateJob"]  # 409 is success


def test_several_workers_get_their_service_before_their_job(tmp_path):
    doc = document(tmp_path, resources={"workers": 2})
    actions = decide.decide_start(obs_of(doc), SETTINGS, None, [])
    assert kinds(actions) == ["CreateService", "CreateJob", "PatchStatus"]
    assert actions[0].manifest["metadata"]["name"] == "distill-a-workers"
    assert status_of(actions)["worldSize"] == 2
    # Restart-safe: a second look makes sure of both again (a 409 is success).
    assert kinds(decide.decide_start(started(doc), SETTINGS, None, [])) == ["CreateService", "CreateJob"]


def test_a_finished_generation_is_left_alone(tmp_path):
    doc = document(tmp_path)
    done = obs_of(doc, status={"observedGeneration": 1, "phase": "Succeeded"})
    assert decide.decide_start(done, SETTINGS, None, []) == []
    # A new generation of a finished job starts.
    assert "CreateJob" in kinds(decide.decide_start(obs_of(doc, 2, dict(done.status)), SETTINGS, None, []))


def test_invalid_spec_fails_with_the_clis_one_line(tmp_path):
    doc = document(tmp_path, distillation={"epochs": -1, "temperature": 0})
    actions = decide.decide_start(obs_of(doc), SETTINGS, None, [])
    assert kinds(actions) == ["PatchStatus", "Event", "ForgetStore"]
    status = status_of(actions)
    c = condition(status, "Succeeded")
    assert status["phase"] == "Failed" and c["reason"] == "InvalidSpec" and c["status"] == "False"
    assert "\n" not in c["message"] and "spec.distillation.epochs" in c["message"]
    assert "spec.distillation.temperature" in c["message"]


def test_a_policy_violation_fails_before_any_job_exists(tmp_path):
    doc = document(tmp_path, resources={"tolerations": [{"operator": "Exists"}]})
    actions = decide.decide_start(obs_of(doc), SETTINGS, None, [])
    assert "CreateJob" not in kinds(actions)
    c = condition(status_of(actions), "Succeeded")
    assert c["reason"] == "PolicyViolation" and "resources.tolerations[0]" in c["message"]


def test_a_missing_secret_waits_pending_and_retries_with_backoff(tmp_path):
    doc = document(tmp_path, output={"uri": "s3://bucket/out", "credentialsSecret": "creds"})
    actions = decide.decide_start(obs_of(doc), SETTINGS, SecretSeen("creds", None), [], retry=0)
    assert kinds(actions) == ["PatchStatus", "Event", "Retry"]
    status = status_of(actions)
    assert status["phase"] == "Pending"  # not Failed: Failed is final
    assert condition(status, "Succeeded")["reason"] == "SecretMissing"
    assert actions[-1].delay == 5
    # Still missing on a retry: no new status write, no new Event, a longer wait.
    again = decide.decide_start(obs_of(doc, status=status), SETTINGS, SecretSeen("creds", None), [], retry=3)
    assert again == [Retry(40.0, again[0].message)]
    # Once it exists (and opted in), the job starts.
    go = decide.decide_start(obs_of(doc, status=status), SETTINGS, SecretSeen("creds", OPTED_IN), [])
    assert kinds(go) == ["CreateJob", "PatchStatus"]
    env = go[0].manifest["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e]
    assert refs and set(refs) == {"creds"}


def env_of(manifest: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_a_job_continuing_a_student_model_waits_for_it_then_gets_its_weights(tmp_path):
    """student.base.studentModel: missing -> Pending (GitOps may apply the job first), retried;
    found -> the trainer gets its spec.artifacts.weights beside the job, whose spec is unchanged."""
    doc = document(tmp_path, student={"base": {"studentModel": "news-v1-g1", "format": "torch"}})
    missing = decide.decide_start(obs_of(doc), SETTINGS, None, [], parent=ParentSeen("news-v1-g1", None))
    assert kinds(missing) == ["PatchStatus", "Event", "Retry"]
    status = status_of(missing)
    assert status["phase"] == "Pending" and condition(status, "Succeeded")["reason"] == "ParentMissing"
    assert "StudentModel 'news-v1-g1' not found in namespace 'ns'" in missing[1].message
    again = decide.decide_start(obs_of(doc, status=status), SETTINGS, None, [], retry=2,
                                parent=ParentSeen("news-v1-g1", None))
    assert kinds(again) == ["Retry"]  # no second status write or Event

    weights = "s3://bucket/runs/news-v1/g1/model"
    go = decide.decide_start(obs_of(doc, status=status), SETTINGS, None, [],
                             parent=ParentSeen("news-v1-g1", {"artifacts": {"weights": weights}}))
    assert kinds(go) == ["CreateJob", "PatchStatus"]
    env = env_of(go[0].manifest)
    assert env["DISTILLERY_STUDENT_BASE_URI"] == weights
    assert json.loads(env["DISTILLERY_JOB"])["spec"]["student"]["base"] == {"studentModel": "news-v1-g1",
                                                                             "format": "torch"}


def test_a_student_model_without_weights_fails_the_job(tmp_path):
    doc = document(tmp_path, student={"base": {"studentModel": "bare"}})
    actions = decide.decide_start(obs_of(doc), SETTINGS, None, [], parent=ParentSeen("bare", {"artifacts": {}}))
    status = status_of(actions)
    assert status["phase"] == "Failed" and condition(status, "Succeeded")["reason"] == "ParentInvalid"
    assert not any(isinstance(a, CreateJob) for a in actions)


def test_a_job_without_a_parent_gets_no_base_uri(tmp_path):
    go = decide.decide_start(obs_of(document(tmp_path)), SETTINGS, None, [])
    assert "DISTILLERY_STUDENT_BASE_URI" not in env_of(go[0].manifest)


def test_a_secret_that_did_not_opt_in_is_never_handed_to_a_trainer(tmp_path):
    doc = document(tmp_path, output={"uri": "s3://bucket/out", "credentialsSecret": "team-db"})
    other = {"name": "team-db", "namespace": "ns", "labels": {"app": "db"}}
    actions = decide.decide_start(obs_of(doc), SETTINGS, SecretSeen("team-db", other), [])
    assert "CreateJob" not in kinds(actions)
    c = condition(status_of(actions), "Succeeded")
    assert c["reason"] == "SecretNotAllowed" and "distillery.io/usable-by-jobs" in c["message"]
    # The chart's allow-list lets an admin name it instead of labelling it.
    allowed = Settings(allowed_secrets=("ns/team-db",))
    assert "CreateJob" in kinds(decide.decide_start(obs_of(doc), allowed, SecretSeen("team-db", other), []))


# ----------------------------------------------------------------------------- follow


def test_follow_asks_for_progress_and_writes_running_once_per_change(tmp_path):
    doc = document(tmp_path)
    obs = started(doc)
    # No read yet, or no progress.json yet (the pod may not even run): Pending stays, no write.
    assert decide.decide_follow(obs, SETTINGS, RUNNING, None, None, None) == [ReadStore("progress")]
    assert decide.decide_follow(obs, SETTINGS, RUNNING, None, StoreRead(value=None), None) == [ReadStore("progress")]
    read = StoreRead(value={"stage": "training", "percent": 42.0, "epoch": 1, "totalEpochs": 2})
    first = decide.decide_follow(obs, SETTINGS, RUNNING, None, read, None)
    assert kinds(first) == ["PatchStatus", "ReadStore"]
    assert status_of(first)["phase"] == "Running"
    # null clears what an earlier progress set and this one does not (a merge patch keeps it otherwise).
    assert status_of(first)["progress"] == {"stage": "training", "percent": 42.0, "epoch": 1, "totalEpochs": 2,
                                            "message": None, "ranks": None}
    # Written, but the watch has not brought it back: not written again.
    written = status_of(first)["progress"]
    assert decide.decide_follow(obs, SETTINGS, RUNNING, None, read, None, written=written) == [ReadStore("progress")]
    # Back through the watch: the same.
    steady = obs_of(doc, status={**obs.status, **status_of(first)})
    assert decide.decide_follow(steady, SETTINGS, RUNNING, None, read, None) == [ReadStore("progress")]
    later = StoreRead(value={"stage": "training", "percent": 61.0, "epoch": 2, "totalEpochs": 2})
    assert status_of(decide.decide_follow(steady, SETTINGS, RUNNING, None, later, None))["progress"]["percent"] == 61.0


def test_follow_reads_no_progress_before_a_trainer_pod_is_ready(tmp_path):
    obs = started(document(tmp_path))
    queued = {**RUNNING, "status": {"conditions": [], "ready": 0}}
    up = {**RUNNING, "status": {"conditions": [], "ready": 1}}
    assert decide.decide_follow(obs, SETTINGS, queued, None, None, None) == []
    assert decide.decide_follow(obs, SETTINGS, up, None, None, None) == [ReadStore("progress")]
    # Once something was read, a pod restarting (not ready for a while) does not stop the reads.
    assert decide.decide_follow(obs, SETTINGS, queued, None, StoreRead(value=None), None) == [ReadStore("progress")]
    # A cluster that does not report status.ready (before 1.29) reads as before.
    assert decide.decide_follow(obs, SETTINGS, RUNNING, None, None, None) == [ReadStore("progress")]


def test_an_unreadable_store_shows_progress_unknown_not_a_stall(tmp_path):
    obs = started(document(tmp_path))
    read = StoreRead(error="S3 endpoint 10.0.0.9:9000: no answer within the read timeout", failures=2)
    actions = decide.decide_follow(obs, SETTINGS, RUNNING, None, read, None)
    progress = status_of(actions)["progress"]
    assert progress["stage"] == "unknown" and "no answer within the read timeout" in progress["message"]


def test_progress_json_cannot_put_nan_or_junk_in_the_status():
    assert decide.progress_of({"stage": "x", "percent": float("nan")}) is None
    assert decide.progress_of(["not", "a", "mapping"]) is None
    assert decide.progress_of({"stage": "y" * 500, "percent": 1e9}).percent == 100.0


def test_where_ranks_differ_status_shows_each_and_clears_them_once_they_move_together(tmp_path):
    obs = started(document(tmp_path, resources={"processesPerWorker": 2}))
    ranks = [{"rank": 0, "stage": "selecting-layers", "percent": 17.5}, {"rank": 1, "stage": "waiting", "percent": 5.0}]
    apart = StoreRead(value={"stage": "selecting-layers", "percent": 17.5, "ranks": ranks})
    first = decide.decide_follow(obs, SETTINGS, RUNNING, None, apart, None)
    assert status_of(first)["progress"]["ranks"] == ranks
    # Written once: the same ranks again are no change.
    written = status_of(first)["progress"]
    assert decide.decide_follow(obs, SETTINGS, RUNNING, None, apart, None, written=written) == [ReadStore("progress")]
    # In lockstep the trainer leaves `ranks` out: the patch removes the old list.
    together = StoreRead(value={"stage": "training", "percent": 30.0, "epoch": 1, "totalEpochs": 3})
    later = decide.decide_follow(obs, SETTINGS, RUNNING, None, together, None, written=written)
    assert status_of(later)["progress"]["ranks"] is None


def test_progress_json_ranks_are_checked_line_by_line():
    def ranks(lines):
        return decide.progress_of({"stage": "training", "percent": 40, "ranks": lines}).ranks

    assert [r.to_wire() for r in ranks([{"rank": 0, "stage": "training", "percent": 40, "epoch": 2, "totalEpochs": 3},
                                        {"rank": 3, "stage": "x" * 99, "percent": 1e9}])] == [
        {"rank": 0, "stage": "training", "percent": 40.0, "epoch": 2, "totalEpochs": 3},
        {"rank": 3, "stage": "x" * 64, "percent": 100.0}]
    # One bad line drops the list, never the progress: the status holds only what the trainer writes.
    for junk in ([{"rank": -1, "percent": 3}], [{"rank": True, "percent": 3}], [{"rank": 1, "percent": "nan"}],
                 [{"percent": 3}], ["rank 1"], [], {"rank": 1}, [{"rank": 1, "percent": 1}] * 34):
        assert ranks(junk) is None, junk


def test_a_suspended_job_stays_queued(tmp_path):
    suspended = {**RUNNING, "spec": {"suspend": True}}
    assert decide.decide_follow(started(document(tmp_path)), SETTINGS, suspended, None, None, None) == []


# ----------------------------------------------------------------------------- finish


def test_finish_registers_an_accepted_student(tmp_path):
    doc = document(tmp_path, targets={"maxAccuracyDrop": 0.5})
    result = result_for(doc)
    actions = finish(doc, result, [pod(reported(result))])
    assert kinds(actions) == ["RegisterStudent", "PatchStatus", "Event", "ForgetStore"]
    status = status_of(actions)
    assert status["phase"] == "Succeeded" and status["accepted"] is True
    assert status["studentModel"] == "a-g1" and status["speedup"] == result["speedup"]
    assert condition(status, "Ready")["status"] == "True"
    assert actions[0].body["spec"]["teacher"]["uri"] == doc["spec"]["teacher"]["uri"]
    spec = actions[0].body["spec"]
    assert spec["variant"] == status["variant"] == "fp32" and spec["artifact"].endswith("/model.onnx")
    assert spec["recipe"]["keepLayers"] == len(result["layersKept"]) and spec["recipe"]["int8"] is False
    assert [v["name"] for v in status["variants"]] == ["fp32"]
    assert actions[2].reason == "Accepted" and "registered StudentModel a-g1" in actions[2].message


def test_finish_waits_for_the_result_read_and_gives_up_after_bounded_tries(tmp_path):
    doc = document(tmp_path)
    obs = started(doc)
    assert decide.decide_follow(obs, SETTINGS, COMPLETE, [], None, None) == [ReadStore("result")]
    failing = StoreRead(error="cannot reach the S3 endpoint", failures=SETTINGS.result_read_attempts - 1)
    assert decide.decide_follow(obs, SETTINGS, COMPLETE, [], None, failing) == [ReadStore("result")]
    gave_up = StoreRead(error="cannot reach the S3 endpoint", failures=SETTINGS.result_read_attempts)
    actions = decide.decide_follow(obs, SETTINGS, COMPLETE, [], None, gave_up)
    c = condition(status_of(actions), "Succeeded")
    assert c["reason"] == "ResultUnavailable" and "cannot reach the S3 endpoint" in c["message"]
    assert isinstance(actions[-1], ForgetStore)


def test_a_forged_result_is_refused(tmp_path):
    doc = document(tmp_path, targets={"minSpeedup": 50})
    real = result_for(doc)  # what the trainer measured and reported: 1.86x, rejected
    forged = copy.deepcopy(real)  # written to the store after the trainer ran
    forged["student"]["latencyP50Ms"] = forged["teacher"]["latencyP50Ms"] / 1000
    forged.update(speedup=1000.0, paretoScore=997.4, decision={"accepted": True, "reasons": ["all good"]})
    # The chosen variant must carry the student's metrics, else the file is not even a result.
    actions = finish(doc, forged, [pod(reported(real))])
    assert condition(status_of(actions), "Succeeded")["reason"] == "ResultInvalid"
    assert "chosen variant" in status_of(actions)["message"]
    forged["variants"][0].update(metrics=forged["student"], speedup=1000.0, paretoScore=997.4, accepted=True)
    actions = finish(doc, forged, [pod(reported(real))])
    assert not any(isinstance(a, RegisterStudent) for a in actions)
    status = status_of(actions)
    assert status["phase"] == "Failed" and condition(status, "Succeeded")["reason"] == "ResultMismatch"
    assert "termination message" in status["message"]


def test_a_forged_decision_is_recomputed_from_the_measured_numbers(tmp_path):
    doc = document(tmp_path, targets={"minAccuracy": 0.999})
    forged = result_for(doc)
    forged["decision"] = {"accepted": True, "reasons": ["trust me"]}  # the numbers are the trainer's
    actions = finish(doc, forged, [pod(reported(forged))])
    assert not any(isinstance(a, RegisterStudent) for a in actions)
    status = status_of(actions)
    assert status["phase"] == "Succeeded" and status["accepted"] is False
    assert "minAccuracy" in condition(status, "Accepted")["message"]


def test_numbers_that_do_not_follow_from_the_measurements_are_refused(tmp_path):
    doc = document(tmp_path)
    forged = result_for(doc)
    forged["teacher"]["latencyP50Ms"] *= 10  # speedup 18x, but speedup/paretoScore say 1.86x
    actions = finish(doc, forged, [pod(reported(forged))])
    assert condition(status_of(actions), "Succeeded")["reason"] == "ResultMismatch"


def test_rounded_scores_of_a_real_run_are_believed(tmp_path):
    # From a real digits run: speedup 0.1316 / 0.071 = 1.85352..., stored rounded to 1.8535 and
    # reported as 1.853; rounding the recomputed value to 3 digits (1.854) must not refuse it.
    doc = document(tmp_path, targets={"maxAccuracyDrop": 0.5})
    result = result_for(doc)
    result["teacher"].update(accuracy=0.984887, latencyP50Ms=0.1316)
    result["student"].update(accuracy=0.984887, latencyP50Ms=0.071)
    result.update(speedup=1.8535, paretoScore=1.853521, accuracyRetention=1.0)
    result["variants"][0].update(metrics=result["student"], speedup=1.8535, paretoScore=1.853521)
    actions = finish(doc, result, [pod(reported(result))])
    assert reported(result)["speedup"] == 1.853
    assert status_of(actions)["phase"] == "Succeeded" and status_of(actions)["accepted"] is True


def test_a_result_without_the_pods_report_is_refused(tmp_path):
    doc = document(tmp_path)
    actions = finish(doc, result_for(doc), [pod(None)])
    assert condition(status_of(actions), "Succeeded")["reason"] == "ResultMismatch"


def test_a_result_of_another_spec_or_job_is_refused(tmp_path):
    doc = document(tmp_path)
    other = result_for(document(tmp_path, distillation={"epochs": 9}))
    assert condition(status_of(finish(doc, other, [pod(reported(other))])), "Succeeded")["reason"] == "ResultMismatch"
    renamed = {**result_for(doc), "job": "b"}
    assert condition(status_of(finish(doc, renamed, [pod(reported(renamed))])), "Succeeded")["reason"] == "ResultMismatch"


@pytest.mark.parametrize("where", ["student.accuracy", "teacher.latencyP50Ms", "layerScores", "speedup"])
def test_a_non_finite_number_never_reaches_the_status(tmp_path, where):
    doc = document(tmp_path)
    result = result_for(doc)
    report = reported(result)
    head, _, tail = where.partition(".")
    if tail:
        result[head][tail] = float("nan")
    elif where == "layerScores":
        result[head] = [0.5, float("inf")]
    else:
        result[head] = float("-inf")
    actions = finish(doc, result, [pod(report)])
    status = status_of(actions)
    assert status["phase"] == "Failed" and condition(status, "Succeeded")["reason"] == "NonFiniteResult"
    assert where.split(".")[0] in status["message"]
    assert "nan" not in json.dumps(status).lower().replace("nonfinite", "")
    assert not any(isinstance(a, RegisterStudent) for a in actions)


def test_a_result_that_is_not_a_result_is_refused(tmp_path):
    doc = document(tmp_path)
    actions = finish(doc, {"job": "a", "accepted": True}, [])
    c = condition(status_of(actions), "Succeeded")
    assert c["reason"] == "ResultInvalid" and "\n" not in c["message"]


def test_must_improve_frontier_rejects_a_dominated_student(tmp_path):
    doc = document(tmp_path, targets={"mustImproveFrontier": True})
    result = result_for(doc)
    group = registry.group_of(doc["spec"]["teacher"]["uri"], doc["spec"]["teacher"]["task"], "cpu")
    perfect = registry.indexed({"metadata": {"name": "perfect", "uid": "u", "labels": {naming.LABEL_GROUP_KEY: group}},
                                "spec": {"metrics": {"accuracy": 1.0, "latencyP50Ms": 0.0001, "sizeBytes": 1}}})
    actions = finish(doc, result, [pod(reported(result))], registered=[perfect])
    status = status_of(actions)
    assert status["accepted"] is False
    assert "dominated on the frontier by perfect" in condition(status, "Accepted")["message"]
    assert decide.frontier_group_of(DistillationJob.model_validate(doc)) == group


# ----------------------------------------------------------------------------- fail


def failed_job(reason: str | None = None) -> dict:
    return {"metadata": {"name": "distill-a-g1"}, "spec": {},
            "status": {"conditions": [{"type": "Failed", "status": "True", "reason": reason or "BackoffLimitExceeded",
                                       "message": "Job has reached the specified backoff limit"}]}}


def test_fail_takes_the_trainers_own_reason(tmp_path):
    message = {"ok": False, "reason": "InvalidInput", "message": "teacher.uri: not found"}
    actions = decide.decide_follow(started(document(tmp_path)), SETTINGS, failed_job(), [pod(message, "Error")],
                                   None, None)
    c = condition(status_of(actions), "Succeeded")
    assert c["reason"] == "InvalidInput" and c["message"] == "teacher.uri: not found"
    assert isinstance(actions[1], Event) and actions[1].warning


def test_fail_recognises_oom_and_deadlines(tmp_path):
    obs = started(document(tmp_path))
    oom = decide.decide_follow(obs, SETTINGS, failed_job(), [pod(None, "OOMKilled")], None, None)
    assert condition(status_of(oom), "Succeeded")["reason"] == "OOMKilled"
    late = decide.decide_follow(obs, SETTINGS, failed_job("DeadlineExceeded"), [], None, None)
    c = condition(status_of(late), "Succeeded")
    assert c["reason"] == "DeadlineExceeded" and "deadlineSeconds" in c["message"]


def test_actions_are_plain_values():
    # Executors match on these types; a typo in a new branch would be a silent no-op otherwise.
    assert {CreateService, CreateJob, DeleteJob, PatchStatus, RegisterStudent, Event, ReadStore, ForgetStore, Retry} == set(
        decide.Action.__args__)


# ----------------------------------------------------------------------------- dry runs


def test_a_dry_run_runs_on_one_pod_without_gpus_whatever_the_spec_asks(tmp_path):
    doc = document(tmp_path, dryRun=True, resources={"workers": 2, "gpus": 2})
    actions = decide.decide_start(obs_of(doc), SETTINGS, None, [])
    assert kinds(actions) == ["CreateJob", "PatchStatus"]  # no worker Service
    job = actions[0].manifest
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert "completionMode" not in job["spec"] and status_of(actions)["worldSize"] == 1
    sent = json.loads(next(e["value"] for e in container["env"] if e["name"] == "DISTILLERY_JOB"))
    assert sent["spec"]["dryRun"] is True and sent["spec"]["resources"].get("gpus", 0) == 0


def test_a_dry_run_that_passed_succeeds_checked_without_reading_a_result(tmp_path):
    doc = document(tmp_path, dryRun=True)
    message = {"ok": True, "dryRun": True, "reason": "Checked",
               "message": "the spec fits the teacher (6 layers) and the data (1437 train rows, 360 eval rows)"}
    actions = decide.decide_follow(started(doc), SETTINGS, COMPLETE, [pod(message)], None, None)
    assert kinds(actions) == ["PatchStatus", "Event", "ForgetStore"]  # no ReadStore, no RegisterStudent
    status = status_of(actions)
    assert status["phase"] == "Succeeded" and status["message"] == message["message"]
    assert condition(status, "Succeeded")["reason"] == "Checked"
    assert condition(status, "Ready")["status"] == "False" and "studentModel" not in status
    assert actions[1].reason == "Checked"


def test_a_dry_run_refused_fails_with_the_trainers_message(tmp_path):
    doc = document(tmp_path, dryRun=True, student={"keepLayers": 9})
    failed = {"metadata": {"name": "distill-a-g1"}, "spec": {},
              "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}}
    message = {"ok": False, "reason": "InvalidInput",
               "message": "student.keepLayers: 9 is larger than the teacher's 6 layers"}
    actions = decide.decide_follow(started(doc), SETTINGS, failed, [pod(message, reason="Error")], None, None)
    status = status_of(actions)
    assert status["phase"] == "Failed" and condition(status, "Succeeded")["reason"] == "InvalidInput"
    assert status["message"] == message["message"]
