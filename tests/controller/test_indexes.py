"""The operator's watch-fed indexes and what reads them (no cluster: fake indexes and API)."""

import asyncio

import pytest

from distillery.controller import decide, handlers, registry
from distillery.controller.settings import Settings
from distillery.controller.trainer_job import watched_view

GROUP_LABEL = "distillery.io/frontier-group"


def model(name, acc, lat, size, uid=None, status=None, group="g", **meta):
    return {"apiVersion": "distillery.io/v1alpha1", "kind": "StudentModel",
            "metadata": {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}", "generation": 1,
                         "labels": {GROUP_LABEL: group, "team": "x"}, "annotations": {"a": "b"}, **meta},
            "spec": {"artifacts": {"uri": f"s3://m/{name}"}, "layersKept": [0, 3],
                     "metrics": {"accuracy": acc, "latencyP50Ms": lat, "sizeBytes": size}},
            **({"status": status} if status is not None else {})}


def k8s_job(name="distill-a-g1", conditions=(), suspend=False):
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                         "labels": {"distillery.io/job": "a", "app.kubernetes.io/managed-by": "distillery-operator"}},
            "spec": {"suspend": suspend, "template": {"spec": {"containers": [{"env": [{"name": "BIG"}]}]}}},
            "status": {"conditions": list(conditions), "active": 1}}


class FakeKube:
    def __init__(self, jobs=None):
        self.jobs, self.reads, self.patches = jobs or {}, [], []

    def read_job(self, namespace, name):
        self.reads.append(name)
        return self.jobs.get(name)

    def patch_student_model_status(self, namespace, name, status):
        self.patches.append((name, status))


@pytest.fixture
def fake_kube():
    return FakeKube()


@pytest.fixture
def ctx(fake_kube):
    return handlers.context_for(Settings(), ["ns"], kube=fake_kube)


# ----------------------------------------------------------------------------- StudentModels


def test_index_entry_keeps_what_the_frontier_needs_in_the_objects_shape():
    m = model("a", 0.9, 10, 100, status={"onFrontier": True, "dominatedBy": [], "group": "g",
                                         "observedGeneration": 1, "conditions": [{"type": "Ready"}]})
    entry = registry.indexed(m)
    assert entry == {
        "metadata": {"name": "a", "uid": "uid-a", "generation": 1, "labels": {GROUP_LABEL: "g"},
                     "deletionTimestamp": None},
        "spec": {"metrics": {"accuracy": 0.9, "latencyP50Ms": 10, "sizeBytes": 100}},
        "status": {"onFrontier": True, "dominatedBy": [], "group": "g", "observedGeneration": 1},
    }
    # The registry's pure functions take index entries as they take whole objects.
    assert registry.frontier_statuses([entry]) == registry.frontier_statuses([m])


def test_students_are_indexed_by_namespace_and_group():
    m = model("a", 0.9, 10, 100)
    out = asyncio.run(handlers.students_by_group(body=m, namespace="ns", labels=m["metadata"]["labels"]))
    assert out == {("ns", "g"): registry.indexed(m)}
    # Without a group label: an empty mapping, so that kopf drops what it held for the model.
    assert asyncio.run(handlers.students_by_group(body=m, namespace="ns", labels={})) == {}


def test_live_models_exclude_deleting_and_gone_ones():
    ms = [registry.indexed(model("a", 0.9, 10, 100)),
          registry.indexed(model("b", 0.9, 10, 100, deletionTimestamp="2026-01-01T00:00:00Z")),
          registry.indexed(model("c", 0.9, 10, 100))]
    assert [m["metadata"]["name"] for m in registry.live(ms, frozenset({"uid-c"}))] == ["a"]


def test_only_events_that_can_change_the_frontier_recompute_it():
    done = {"onFrontier": True, "dominatedBy": [], "group": "g", "observedGeneration": 1}
    assert registry.changes_frontier(None, model("a", 0.9, 10, 100, status=done))  # listed at startup
    assert registry.changes_frontier("ADDED", model("a", 0.9, 10, 100))
    assert registry.changes_frontier("DELETED", model("a", 0.9, 10, 100, status=done))
    assert not registry.changes_frontier("MODIFIED", model("a", 0.9, 10, 100, status=done))  # our own write
    assert registry.changes_frontier("MODIFIED", model("a", 0.9, 10, 100))  # no frontier facts yet
    edited = model("a", 0.9, 10, 100, status=done)
    edited["metadata"]["generation"] = 2  # a spec edit
    assert registry.changes_frontier("MODIFIED", edited)
    assert registry.changes_frontier("MODIFIED", model("a", 0.9, 10, 100, status=done,
                                                       deletionTimestamp="2026-01-01T00:00:00Z"))


def test_a_group_pass_patches_only_changed_statuses_and_skips_gone_models(ctx, fake_kube):
    fast = {"onFrontier": True, "dominatedBy": [], "group": "g", "observedGeneration": 1}
    index = {("ns", "g"): [registry.indexed(m) for m in (
        model("fast", 0.80, 5.0, 50, status=fast),
        model("worse", 0.79, 25.0, 250),
        model("ghost", 0.99, 1.0, 1))]}  # deleted while the watch was away
    ctx.gone.add("uid-ghost")
    handlers.write_frontier(ctx, ("ns", "g"), handlers.group_snapshot(index, ("ns", "g"), ctx.gone))
    assert fake_kube.patches == [("worse", {"onFrontier": False, "dominatedBy": ["fast"], "group": "g",
                                            "observedGeneration": 1})]
    # The same snapshot again (the watch has not brought the write back yet): no second write;
    # a resync pass (heal) writes what the cluster still lacks.
    handlers.write_frontier(ctx, ("ns", "g"), handlers.group_snapshot(index, ("ns", "g"), ctx.gone))
    assert len(fake_kube.patches) == 1
    handlers.write_frontier(ctx, ("ns", "g"), handlers.group_snapshot(index, ("ns", "g"), ctx.gone, heal=True))
    assert len(fake_kube.patches) == 2


def test_an_event_schedules_its_group_once_per_burst_with_a_snapshot(ctx):
    scheduled = []

    class Recorder:
        def schedule(self, key, data=None):
            scheduled.append((key, data))

    ctx.frontier = Recorder()
    m = model("a", 0.9, 10, 100)
    index = {("ns", "g"): [registry.indexed(m)]}
    asyncio.run(handlers.student_event(event={"type": "ADDED"}, body=m, namespace="ns",
                                       labels=m["metadata"]["labels"], memo=ctx, students_by_group=index))
    done = model("a", 0.9, 10, 100, status={"onFrontier": True, "dominatedBy": [], "group": "g",
                                            "observedGeneration": 1})
    asyncio.run(handlers.student_event(event={"type": "MODIFIED"}, body=done, namespace="ns",
                                       labels=done["metadata"]["labels"], memo=ctx, students_by_group=index))
    assert scheduled == [(("ns", "g"), ([registry.indexed(m)], False))]
    # A copy: later changes of kopf's index do not reach what the debouncer thread holds.
    index[("ns", "g")].append(registry.indexed(model("b", 0.9, 10, 100)))
    assert len(scheduled[0][1][0]) == 1


def test_a_resync_finds_models_the_watch_lost_and_schedules_every_group(ctx):
    scheduled = {}

    class Recorder:
        def schedule(self, key, data=None):
            scheduled[key] = data

    class Lister:
        def list_student_models_in(self, namespace):
            return [model("a", 0.9, 10, 100), model("c", 0.5, 10, 100, group="h")]

    ctx.frontier, ctx.kube = Recorder(), Lister()
    index = {("ns", "g"): [registry.indexed(model("a", 0.9, 10, 100)), registry.indexed(model("b", 0.9, 9, 100))]}
    asyncio.run(handlers.resync_frontiers(ctx, index))
    assert ctx.gone == {"uid-b"}
    models, heal = scheduled[("ns", "g")]
    assert [m["metadata"]["name"] for m in models] == ["a"] and heal
    assert ("ns", "h") in scheduled


# ----------------------------------------------------------------------------- trainer Jobs


def test_job_entry_keeps_what_following_needs():
    complete = {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "done",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}
    entry = watched_view(k8s_job(conditions=[complete], suspend=True))
    assert entry == {"metadata": {"name": "distill-a-g1", "namespace": "ns", "uid": "uid-distill-a-g1"},
                     "spec": {"suspend": True},
                     "status": {"conditions": [{"type": "Complete", "status": "True",
                                                "reason": "CompletionsReached", "message": "done"}],
                                "ready": None}}
    assert decide.job_condition(entry, "Complete")
    job = k8s_job()
    out = asyncio.run(handlers.trainer_jobs(body=job, namespace="ns", name=job["metadata"]["name"]))
    assert out == {("ns", "distill-a-g1"): watched_view(job)}


def observe(ctx, name, index):
    return asyncio.run(handlers.observe_trainer(ctx, "ns", name, index))


def test_a_watched_job_is_read_from_the_index_without_a_request(ctx, fake_kube):
    index = {("ns", "distill-a-g1"): [watched_view(k8s_job())]}
    for _ in range(3):
        assert observe(ctx, "distill-a-g1", index) == watched_view(k8s_job())
    assert fake_kube.reads == []


def test_a_job_missing_from_the_index_is_confirmed_with_a_get(ctx, fake_kube):
    # Just created: the watch has not brought it yet; the GET finds it (no recreation).
    fake_kube.jobs["distill-a-g1"] = k8s_job()
    assert observe(ctx, "distill-a-g1", {}) == k8s_job()
    # Really gone: None, which makes the caller run the generation again.
    assert observe(ctx, "distill-b-g1", {}) is None
    assert fake_kube.reads == ["distill-a-g1", "distill-b-g1"]


def test_a_watched_job_is_rechecked_once_per_interval(ctx, fake_kube, monkeypatch):
    # A DELETED event lost in a watch reconnection leaves a stale entry: a periodic GET finds out.
    clock = [1000.0]
    monkeypatch.setattr(handlers.time, "monotonic", lambda: clock[0])
    index = {("ns", "distill-a-g1"): [watched_view(k8s_job())]}
    assert observe(ctx, "distill-a-g1", index) is not None
    clock[0] += ctx.settings.trainer_recheck_s - 1
    assert observe(ctx, "distill-a-g1", index) is not None
    assert fake_kube.reads == []
    clock[0] += 1
    assert observe(ctx, "distill-a-g1", index) is None  # the GET: it is gone
    assert fake_kube.reads == ["distill-a-g1"]
    # Two entries for one name (a stale one and its replacement): the GET decides.
    fake_kube.jobs["distill-a-g1"] = k8s_job()
    index[("ns", "distill-a-g1")].append(watched_view(k8s_job()) | {"metadata": {"uid": "other"}})
    assert observe(ctx, "distill-a-g1", index) == k8s_job()
