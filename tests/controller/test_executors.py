"""The thin executors: cluster writes before the status, API trouble as kopf's retry/stop errors."""

from __future__ import annotations

import asyncio

import kopf
import pytest
from kubernetes.client.exceptions import ApiException

from distillery.controller import handlers
from distillery.controller import status as st
from distillery.controller.decide import (
    CreateJob,
    Event,
    Observed,
    PatchStatus,
    RegisterStudent,
    Retry,
)
from distillery.controller.settings import Settings

OBS = Observed(name="a", namespace="ns", uid="uid-a", generation=1, body={"spec": {}}, status={})
MANIFEST = {"metadata": {"name": "distill-a-g1", "namespace": "ns"}}


class Patch:
    def __init__(self):
        self.status = {}


class FakeKube:
    def __init__(self, fail_with: int | None = None):
        self.calls, self.fail_with = [], fail_with

    def create_job(self, manifest):
        self.calls.append("create_job")
        if self.fail_with:
            raise ApiException(status=self.fail_with, reason="Unprocessable Entity")
        return True

    def create_student_model(self, body):
        self.calls.append("create_student_model")
        return True


@pytest.fixture
def events(monkeypatch):
    posted = []
    monkeypatch.setattr(kopf, "event", lambda body, type, reason, message: posted.append((type, reason)))
    return posted


def run(kube, actions, patch=None):
    ctx = handlers.context_for(Settings(), [], kube=kube)
    patch = patch or Patch()
    asyncio.run(handlers.execute(ctx, OBS, {"metadata": {}}, patch, actions))
    return ctx, patch


def test_writes_then_status_then_events(events):
    kube = FakeKube()
    started = st.started(1, "distill-a-g1", None, queued=False)
    ctx, patch = run(kube, [PatchStatus(started), CreateJob(MANIFEST), Event("X", "y", warning=True)])
    assert kube.calls == ["create_job"]
    assert patch.status["trainerJob"] == "distill-a-g1"
    assert events == [("Warning", "X")]


def test_a_refused_trainer_job_fails_the_job_for_good(events):
    patch = Patch()
    with pytest.raises(kopf.PermanentError):
        run(FakeKube(fail_with=422), [CreateJob(MANIFEST)], patch)
    assert patch.status["phase"] == "Failed"
    assert next(c for c in patch.status["conditions"] if c["type"] == "Succeeded")["reason"] == "TrainerJobRejected"


def test_api_trouble_is_retried_and_no_status_claims_the_failed_write(events):
    patch = Patch()
    kube = FakeKube(fail_with=503)
    kube.create_student_model = lambda body: (_ for _ in ()).throw(ApiException(status=503, reason="Unavailable"))
    finished = PatchStatus(st.failed(1, "Whatever", "m", None))
    with pytest.raises(kopf.TemporaryError):
        run(kube, [RegisterStudent({}), finished], patch)
    assert patch.status == {}  # the verdict waits for the StudentModel it names


def test_retry_is_raised_after_the_status_is_written(events):
    patch = Patch()
    waiting = PatchStatus(st.waiting(1, "SecretMissing", "Secret 'x' not found", None))
    with pytest.raises(kopf.TemporaryError) as err:
        run(FakeKube(), [waiting, Retry(20.0, "Secret 'x' not found")], patch)
    assert err.value.delay == 20.0 and patch.status["phase"] == "Pending"


# ----------------------------------------------------------------------------- the job's one timer


def test_tick_starts_once_while_the_watch_lags_then_follows(events, tmp_path):
    """The timer starts a generation; a later tick that still sees the old status (the watch has
    not brought our write back) does nothing instead of starting again; once the status shows the
    trainer Job, the tick follows it (and reads nothing before its pod is up)."""
    from tests.digits import digits_job_document

    doc = digits_job_document(tmp_path / "ws", tmp_path / "out")
    body = {"apiVersion": doc["apiVersion"], "kind": doc["kind"], "spec": doc["spec"]}
    meta = {"name": "a", "namespace": "ns", "uid": "uid-a", "generation": 1, "finalizers": ["distillery.io/finalizer"]}
    kube = FakeKube()
    ctx = handlers.context_for(Settings(), [], kube=kube)

    def tick(status, jobs_index=None):
        patch = Patch()
        asyncio.run(handlers.tick(body=body, meta=meta, status=status, patch=patch, retry=0, memo=ctx,
                                  trainer_jobs=jobs_index or {}, students_by_group={}))
        return patch.status

    assert handlers.has_work({}, meta)
    written = tick({})
    assert kube.calls == ["create_job"] and written["trainerJob"] == "distill-a-g1"
    assert tick({}) == {} and kube.calls == ["create_job"]  # lagging view: no second start
    queued = {"metadata": {"name": "distill-a-g1", "namespace": "ns", "uid": "j"}, "spec": {},
              "status": {"conditions": [], "ready": 0}}
    assert tick(written, {("ns", "distill-a-g1"): [queued]}) == {}
    assert kube.calls == ["create_job"]
    assert not handlers.has_work({"observedGeneration": 1, "phase": "Succeeded"}, meta)
    assert handlers.has_work({"observedGeneration": 1, "phase": "Succeeded"}, {**meta, "generation": 2})
