"""The DistillationSearch decision without a cluster: the search, its trials and the registry in,
trials to create and a status patch out.

A small in-memory "cluster" applies the decisions (creates the trial jobs, merges the status
patches) and finishes trials the way the job controller writes a finished DistillationJob's status,
so whole searches run here, restarts included.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from distillery.api.search import TrialParams
from distillery.controller import naming, registry
from distillery.controller import search_naming as sn
from distillery.controller.decide import Event
from distillery.controller.search_decide import (
    INVALID_TRIAL_REASONS,
    CreateSpaceCheck,
    CreateTrial,
    PatchSearchStatus,
    ReadRegistry,
    ReadSpaceCheck,
    SearchObserved,
    decide_search,
    finished_after,
    name_taken,
    status_patch,
)
from tests.digits import digits_job_document

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def template(tmp_path: Path) -> dict:
    return digits_job_document(tmp_path / "ws", tmp_path / "out")["spec"]


def search_spec(tmp_path: Path, **overrides) -> dict:
    spec = {
        "template": template(tmp_path),
        "space": {"keepLayers": {"min": 1, "max": 3}, "int8": [False, True]},
        "targets": {"maxAccuracyDrop": 0.05},
        "budget": {"maxTrials": 5, "parallelTrials": 2},
        "learnFromRegistry": False,
    }
    spec.update(overrides)
    return spec


def metrics_of(params: dict) -> dict:
    """Made-up but consistent measurements of a point: deeper is more accurate and slower, int8 is
    faster and smaller and a little less accurate."""
    layers, int8 = params.get("keepLayers", 2), params.get("int8", False)
    return {"accuracy": round(0.80 + 0.05 * layers - (0.01 if int8 else 0.0), 4),
            "latencyP50Ms": round(1.0 * layers * (0.5 if int8 else 1.0), 4),
            "sizeBytes": 1000 * layers // (4 if int8 else 1)}


class Cluster:
    """The search and its trials as the API server would hold them. The space's check (a dry-run
    DistillationJob) passes as soon as it is created unless `check_passes` is False."""

    def __init__(self, spec: dict, name: str = "s", namespace: str = "ns", check_passes: bool = True):
        self.name, self.namespace, self.spec = name, namespace, spec
        self.check_passes = check_passes
        self.status: dict = {}
        self.jobs: dict[str, dict] = {}
        self.checks: dict[str, dict] = {}
        self.events: list[Event] = []
        self.max_running = 0
        self.writes = 0

    def observed(self, status: dict | None = None, generation: int = 1) -> SearchObserved:
        return SearchObserved(name=self.name, namespace=self.namespace, uid="uid-s", generation=generation,
                              spec=copy.deepcopy(self.spec), status=copy.deepcopy(self.status if status is None else status))

    def listed(self) -> list[dict]:
        return [copy.deepcopy(j) for j in self.jobs.values()]

    def decide(self, students: list[dict] | None = None, now: datetime = NOW, **kw) -> list:
        actions = decide_search(self.observed(**kw), self.listed(), students, now)
        asked = [a for a in actions if isinstance(a, ReadSpaceCheck)]
        if asked:  # as the handler does: read the check job (absent: {}) and decide again
            check = copy.deepcopy(self.checks.get(asked[0].name, {}))
            actions = decide_search(self.observed(**kw), self.listed(), students, now, None, check)
        return actions

    def apply(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, CreateSpaceCheck):
                self.checks.setdefault(a.name, copy.deepcopy(a.manifest))
                if self.check_passes:
                    self.checks[a.name]["status"] = {
                        "phase": "Succeeded", "message": "the spec fits the teacher (6 layers) and the data",
                        "conditions": [{"type": "Succeeded", "status": "True", "reason": "Checked"}]}
            elif isinstance(a, CreateTrial):
                self.jobs.setdefault(a.name, copy.deepcopy(a.manifest))  # 409: already there
            elif isinstance(a, PatchSearchStatus):
                self.writes += 1
                for k, v in a.patch.items():
                    if v is None:
                        self.status.pop(k, None)
                    else:
                        self.status[k] = copy.deepcopy(v)
            elif isinstance(a, Event):
                self.events.append(a)
        self.max_running = max(self.max_running, len(self.running()))

    def step(self, students: list[dict] | None = None, now: datetime = NOW) -> list:
        """One look; when it created the space's check and that passed at once, the next look too
        (so a test of the trials sees them start)."""
        actions = self._look(students, now)
        if self.check_passes and any(isinstance(a, CreateSpaceCheck) for a in actions):
            actions = self._look(students, now)
        return actions

    def _look(self, students: list[dict] | None, now: datetime) -> list:
        actions = self.decide(students, now)
        if any(isinstance(a, ReadRegistry) for a in actions):
            actions = self.decide(students or [], now)
        self.apply(actions)
        return actions

    def running(self) -> list[str]:
        return [n for n, j in self.jobs.items() if (j.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]

    def params(self, name: str) -> dict:
        return json.loads(self.jobs[name]["metadata"]["annotations"][sn.ANNOTATION_PARAMS])

    def finish(self, name: str, accepted: bool | None = None, variant: str | None = None) -> dict:
        """The trial's status as the job controller writes it when the trainer's result arrives."""
        m = metrics_of(self.params(name))
        ok = m["accuracy"] >= 0.90 if accepted is None else accepted
        status = {"observedGeneration": 1, "phase": "Succeeded", "student": m, "accepted": ok,
                  "paretoScore": round(m["accuracy"] / m["latencyP50Ms"], 4),
                  "message": "Accepted: all targets met" if ok else "Rejected: accuracy too low",
                  "conditions": [{"type": "Succeeded", "status": "True", "reason": "Completed"}]}
        if ok:
            status["studentModel"] = f"{name}-g1"
        if variant:
            status["variant"] = variant
        self.jobs[name]["status"] = status
        return status

    def fail(self, name: str, reason: str, message: str) -> None:
        self.jobs[name]["status"] = {
            "observedGeneration": 1, "phase": "Failed", "accepted": False, "message": message,
            "conditions": [{"type": "Succeeded", "status": "False", "reason": reason, "message": message}]}


def creates(actions: list) -> list[CreateTrial]:
    return [a for a in actions if isinstance(a, CreateTrial) and not isinstance(a, CreateSpaceCheck)]


def patch_of(actions: list) -> dict:
    return next(a.patch for a in actions if isinstance(a, PatchSearchStatus))


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_first_look_starts_parallel_trials_with_the_contract_manifest(tmp_path):
    c = Cluster(search_spec(tmp_path))
    actions = c.step()

    made = creates(actions)
    assert [a.name for a in made] == ["s-t000", "s-t001"]
    job = made[0].manifest
    meta = job["metadata"]
    assert job["kind"] == "DistillationJob" and meta["namespace"] == "ns"
    assert meta["labels"][sn.LABEL_SEARCH] == "s" and meta["labels"][sn.LABEL_TRIAL_INDEX] == "0"
    assert meta["annotations"][sn.ANNOTATION_SEEDED] == "false"
    assert meta["ownerReferences"] == [{"apiVersion": "distillery.io/v1alpha1", "kind": "DistillationSearch",
                                        "name": "s", "uid": "uid-s", "controller": True, "blockOwnerDeletion": True}]
    params = c.params("s-t000")
    assert job["spec"]["student"]["keepLayers"] == params["keepLayers"]
    assert job["spec"]["export"]["int8"] == params["int8"]
    out = template(tmp_path)["output"]["uri"]
    assert job["spec"]["output"]["uri"] == f"{out}/trials/s-t000"
    assert job["spec"]["output"]["cacheUri"] == f"{out}/cache"
    assert job["spec"]["targets"]["maxAccuracyDrop"] == 0.05  # the search's targets, not the template's
    assert c.params("s-t000") != c.params("s-t001")
    status = c.status
    assert status["trialsStarted"] == 2 and status["trialsRunning"] == 2 and status["phase"] == "Running"
    assert status["algorithm"] == "nsga2"  # 6 points, a budget of 5
    assert [t["name"] for t in status["trials"]] == ["s-t000", "s-t001"]
    assert condition(status, "Succeeded")["status"] == "Unknown"
    assert status["startTime"] == "2026-11-30T12:00:00Z"


def test_parallel_limit_holds_while_trials_run(tmp_path):
    c = Cluster(search_spec(tmp_path, budget={"maxTrials": 5, "parallelTrials": 2}))
    c.step()
    for _ in range(3):
        assert not creates(c.step())
    c.finish("s-t000")
    assert [a.name for a in creates(c.step())] == ["s-t002"]
    assert len(c.running()) == 2


def test_restart_decides_the_same_and_never_duplicates_an_index(tmp_path):
    c = Cluster(search_spec(tmp_path, budget={"maxTrials": 6, "parallelTrials": 3}))
    c.step()
    c.finish("s-t000")
    c.finish("s-t001", accepted=False)
    # Two operators (or one before and after a restart) looking at the same state decide the same.
    first, second = c.decide(), c.decide()
    assert [a.manifest for a in creates(first)] == [a.manifest for a in creates(second)]
    assert [a.name for a in creates(first)] == ["s-t003", "s-t004"]
    c.apply(first)
    # The status write was lost (crash before kopf patched it): the trials alone give the next index.
    assert not creates(c.decide(status={}))
    c.finish("s-t003")
    again = creates(c.decide(status={}))
    assert [a.name for a in again] == ["s-t005"]
    tried = [json.dumps(c.params(n), sort_keys=True) for n in c.jobs] + [again[0].manifest["metadata"]["annotations"][
        sn.ANNOTATION_PARAMS]]
    assert len(set(tried)) == len(tried)


def test_a_trial_deleted_by_hand_is_neither_reused_nor_refunded(tmp_path):
    c = Cluster(search_spec(tmp_path, budget={"maxTrials": 3, "parallelTrials": 1}))
    c.step()
    c.finish("s-t000")
    c.step()
    del c.jobs["s-t001"]  # `kubectl delete dj s-t001` while it ran
    assert [a.name for a in creates(c.step())] == ["s-t002"]  # index from status.trialsStarted too
    c.finish("s-t002")
    c.step()
    assert c.status["phase"] == "Succeeded" and c.status["trialsStarted"] == 3 and sorted(c.jobs) == ["s-t000",
                                                                                                        "s-t002"]


def frontier_by_hand(rows: list[dict]) -> set[str]:
    def better(a, b):  # a dominates b on accuracy (up) and latency (down)
        return (a["accuracy"] >= b["accuracy"] and a["latencyMs"] <= b["latencyMs"]
                and (a["accuracy"] > b["accuracy"] or a["latencyMs"] < b["latencyMs"]))

    measured = [r for r in rows if "accuracy" in r]
    return {r["name"] for r in measured if not any(better(o, r) for o in measured)}


@pytest.mark.parametrize("algorithm", ["grid", "nsga2", "tpe"])
def test_a_whole_search_runs_to_its_budget(tmp_path, algorithm):
    c = Cluster(search_spec(tmp_path, algorithm=algorithm, optimizeFor="latency"))
    for _ in range(40):
        c.step()
        if c.status.get("phase") in ("Succeeded", "Failed") and not c.running():
            break
        for name in c.running()[:1]:  # trials finish one at a time, oldest first
            c.finish(name)
    status = c.status
    assert sorted(c.jobs) == [f"s-t{i:03d}" for i in range(5)]  # exactly the budget, no gap
    assert c.max_running <= 2
    assert len({json.dumps(c.params(n), sort_keys=True) for n in c.jobs}) == 5
    assert status["algorithm"] == algorithm and status["trialsSucceeded"] == 5 and status["trialsRunning"] == 0
    # The frontier and the best trial, from the trials' own statuses.
    rows = status["trials"]
    for row in rows:
        job = c.jobs[row["name"]]["status"]
        assert row["accuracy"] == job["student"]["accuracy"] and row["latencyMs"] == job["student"]["latencyP50Ms"]
        assert row["sizeBytes"] == job["student"]["sizeBytes"] and row["variant"] == "fp32"
        assert row["params"] == c.params(row["name"])
    assert set(status["frontier"]) == frontier_by_hand(rows)
    assert all(r["onFrontier"] == (r["name"] in status["frontier"]) for r in rows)
    accepted = [r for r in rows if r["accepted"]]
    fastest = min(accepted, key=lambda r: (r["latencyMs"], -r["accuracy"], r["index"]))
    assert status["bestTrial"] == fastest["name"] and status["studentModel"] == f"{fastest['name']}-g1"
    ok = condition(status, "Succeeded")
    assert ok["status"] == "True" and fastest["name"] in ok["message"] and "maxTrials (5) spent" in ok["message"]
    assert status["phase"] == "Succeeded" and status["progress"]["percent"] == 100.0 and status["completionTime"]
    assert [e.reason for e in c.events] == ["Completed"] and not c.events[0].warning
    # Final: nothing more to do, ever.
    writes = c.writes
    assert c.step() == [] and c.writes == writes


def test_grid_search_of_a_small_space_tries_every_point_then_ends(tmp_path):
    c = Cluster(search_spec(tmp_path, space={"keepLayers": {"min": 1, "max": 3}},
                            budget={"maxTrials": 10, "parallelTrials": 3}))
    c.step()
    assert c.status["algorithm"] == "grid"
    assert [c.params(n)["keepLayers"] for n in sorted(c.jobs)] == [1, 2, 3]
    for n in list(c.jobs):
        c.finish(n)
    assert not creates(c.step())
    assert c.status["phase"] == "Succeeded"
    assert "every point of the space has been tried" in condition(c.status, "Succeeded")["message"]
    assert c.status["progress"]["percent"] == 100.0


def test_deadline_stops_new_trials(tmp_path):
    c = Cluster(search_spec(tmp_path, budget={"maxTrials": 5, "parallelTrials": 1, "activeDeadlineSeconds": 60}))
    c.step()
    c.finish("s-t000")
    late = NOW + timedelta(seconds=61)
    assert not creates(c.step(now=late))
    assert c.status["phase"] == "Succeeded" and c.status["trialsStarted"] == 1
    assert "activeDeadlineSeconds (60 s) passed" in condition(c.status, "Succeeded")["message"]


def test_stop_lets_running_trials_finish_and_starts_none(tmp_path):
    c = Cluster(search_spec(tmp_path))
    c.step()
    c.spec["stop"] = True
    assert not creates(c.step())
    assert c.status["phase"] == "Running"
    c.finish("s-t000")
    c.finish("s-t001", accepted=False)
    c.step()
    assert c.status["phase"] == "Succeeded" and c.status["bestTrial"] == "s-t000"
    assert "stopped (spec.stop)" in condition(c.status, "Succeeded")["message"]


def test_no_trial_meeting_the_targets_fails_with_its_reason(tmp_path):
    c = Cluster(search_spec(tmp_path, space={"int8": [False, True]}))
    c.step()
    for n in list(c.jobs):
        c.finish(n, accepted=False)
    c.step()
    cond = condition(c.status, "Succeeded")
    assert c.status["phase"] == "Failed" and cond["status"] == "False" and cond["reason"] == "NoStudentMeetsTargets"
    assert "bestTrial" not in c.status and len(c.status["frontier"]) >= 1
    assert [e.reason for e in c.events] == ["NoStudentMeetsTargets"]


@pytest.mark.parametrize("space, field", [
    ({}, "space sets no dimension"),
    ({"method": ["importance", "explicit"]}, "space.method"),
])
def test_invalid_space_fails_before_any_trial(tmp_path, space, field):
    c = Cluster(search_spec(tmp_path, space=space))
    actions = c.step()
    assert not creates(actions)
    cond = condition(c.status, "Succeeded")
    assert c.status["phase"] == "Failed" and cond["reason"] == "InvalidSpace" and field in cond["message"]
    assert condition(c.status, "Stalled")["status"] == "True"
    assert [e.reason for e in c.events] == ["InvalidSpace"] and c.events[0].warning


def test_unreadable_spec_fails_naming_the_field(tmp_path):
    c = Cluster(search_spec(tmp_path, budget={"maxTrials": 0}))
    assert not creates(c.step())
    cond = condition(c.status, "Succeeded")
    assert cond["reason"] == "InvalidSpec" and "budget.maxTrials" in cond["message"]


def test_a_trial_refused_as_invalid_input_fails_the_search_at_once(tmp_path):
    c = Cluster(search_spec(tmp_path, space={"keepLayers": {"min": 2, "max": 14}},
                            budget={"maxTrials": 8, "parallelTrials": 2}))
    c.step()
    message = "student.keepLayers: 14 exceeds the teacher's 6 layers"
    c.fail("s-t000", "InvalidInput", message)
    actions = c.step()
    assert not creates(actions)
    cond = condition(c.status, "Succeeded")
    assert c.status["phase"] == "Failed" and cond["reason"] == "TrialInvalid" and message in cond["message"]
    assert "s-t000" in cond["message"]
    # The other trial still runs; it is followed to its end, and nothing new starts.
    assert c.status["trialsRunning"] == 1
    c.finish("s-t001")
    assert not creates(c.step())
    assert c.status["trialsRunning"] == 0 and c.status["trials"][1]["phase"] == "Succeeded"
    assert [e.reason for e in c.events] == ["TrialInvalid"]
    assert c.step() == []


def test_fixing_the_space_after_an_invalid_trial_lets_the_search_go_on(tmp_path):
    c = Cluster(search_spec(tmp_path, space={"keepLayers": {"min": 2, "max": 14}},
                            budget={"maxTrials": 6, "parallelTrials": 1}))
    c.step()
    c.fail("s-t000", "InvalidInput", "student.keepLayers: 14 exceeds the teacher's 6 layers")
    c.step()
    assert c.status["phase"] == "Failed"
    # Editing only the budget changes nothing the trial tried: the search fails again, for generation 2.
    c.spec["budget"]["maxTrials"] = 7
    c.apply(c.decide(generation=2))
    assert len(c.jobs) == 1 and c.status["phase"] == "Failed" and c.status["observedGeneration"] == 2
    # A fixed space (generation 3): the refused trial stays in the table, new trials start.
    c.spec["space"] = {"keepLayers": {"min": 2, "max": 5}}
    c.apply(c.decide(generation=3))  # the changed space is checked first (its dry run passes here)
    assert len(c.checks) == 2 and not c.running()
    c.apply(c.decide(generation=3))
    assert [name for name in c.jobs] == ["s-t000", "s-t001"]
    assert c.status["phase"] == "Running" and c.status["observedGeneration"] == 3
    assert condition(c.status, "Succeeded")["status"] == "Unknown"
    assert c.status["trials"][0]["phase"] == "Failed" and c.status["trialsFailed"] == 1
    new_digest = c.jobs["s-t001"]["metadata"]["annotations"][sn.ANNOTATION_TEMPLATE_DIGEST]
    assert new_digest != c.jobs["s-t000"]["metadata"]["annotations"][sn.ANNOTATION_TEMPLATE_DIGEST]
    # A trial of the fixed space refused as invalid fails the search again.
    c.fail("s-t001", "InvalidInput", "student.keepLayers: something else")
    c.apply(c.decide(generation=3))
    assert c.status["phase"] == "Failed" and "s-t001" in condition(c.status, "Succeeded")["message"]


def test_an_ordinary_trial_failure_is_counted_and_the_search_goes_on(tmp_path):
    assert "OOMKilled" not in INVALID_TRIAL_REASONS
    c = Cluster(search_spec(tmp_path))
    c.step()
    c.fail("s-t000", "OOMKilled", "the trainer ran out of memory (raise spec.resources.memory)")
    assert [a.name for a in creates(c.step())] == ["s-t002"]
    assert c.status["trialsFailed"] == 1 and c.status["phase"] == "Running"
    assert c.status["trials"][0]["message"].startswith("the trainer ran out of memory")


def test_learn_from_registry_reads_the_group_then_seeds_its_first_trials(tmp_path):
    spec = search_spec(tmp_path, learnFromRegistry=True)
    c = Cluster(spec)
    c.apply(c.decide())  # the space's check, which passes
    asked = c.decide()
    teacher = spec["template"]["teacher"]
    assert asked == [ReadRegistry(registry.group_of(teacher["uri"], teacher["task"], "cpu"))]

    def model(name, recipe, on_frontier, score):
        return {"metadata": {"name": name, "labels": {naming.LABEL_GROUP_KEY: asked[0].group}},
                "spec": {"recipe": recipe, "paretoScore": score, "metrics": {"accuracy": 0.9, "latencyP50Ms": 1.0}},
                "status": {"onFrontier": on_frontier}}

    students = [model("old-dominated", {"keepLayers": 3, "int8": False}, False, 9.0),
                model("old-best", {"keepLayers": 2, "int8": True, "temperature": 8.0}, True, 1.0),
                model("deleting", {"keepLayers": 1, "int8": True}, True, 5.0)]
    students[2]["metadata"]["deletionTimestamp"] = "2026-11-30T11:00:00Z"
    actions = c.step(students)
    made = creates(actions)
    assert [c.params(a.name) for a in made] == [{"int8": True, "keepLayers": 2}, {"int8": False, "keepLayers": 3}]
    assert all(a.manifest["metadata"]["annotations"][sn.ANNOTATION_SEEDED] == "true" for a in made)
    assert c.status["seededFrom"] == ["old-best", "old-dominated"]
    assert [t["seeded"] for t in c.status["trials"]] == [True, True]
    # Once the seeds are tried the sampler takes over; seededFrom stays as the trials say.
    c.finish("s-t000")
    made = creates(c.step(students))
    assert len(made) == 1 and made[0].manifest["metadata"]["annotations"][sn.ANNOTATION_SEEDED] == "false"
    assert c.status["seededFrom"] == ["old-best", "old-dominated"]


def test_a_full_parallel_search_does_not_read_the_registry(tmp_path):
    c = Cluster(search_spec(tmp_path, learnFromRegistry=True))
    c.step([])
    assert not [a for a in c.decide() if isinstance(a, ReadRegistry)]


def test_an_unchanged_search_writes_nothing(tmp_path):
    c = Cluster(search_spec(tmp_path))
    c.step()
    assert c.decide() == []
    c.finish("s-t000")
    c.step()
    writes = c.writes
    assert c.decide() == [] and c.writes == writes


def test_the_chosen_variant_is_reported_and_ranks_the_trial(tmp_path):
    c = Cluster(search_spec(tmp_path, space={"int8": [False, True]}, optimizeFor="size"))
    c.step()
    c.finish("s-t000", accepted=True)
    c.finish("s-t001", accepted=True, variant="int8")
    c.step()
    rows = {r["name"]: r for r in c.status["trials"]}
    assert rows["s-t000"]["variant"] == "fp32" and rows["s-t001"]["variant"] == "int8"
    assert c.status["bestTrial"] == "s-t001"  # smaller
    assert "variant int8" in condition(c.status, "Succeeded")["message"]


def test_a_name_held_by_another_job_fails_the_search(tmp_path):
    c = Cluster(search_spec(tmp_path))
    actions = decide_search(c.observed(), [], None, NOW, problem=name_taken(c.observed(), "s-t000"))
    c.apply(actions)
    assert not creates(actions)
    cond = condition(c.status, "Succeeded")
    assert cond["reason"] == "TrialNameTaken" and "'s-t000'" in cond["message"]


def test_a_long_search_name_is_refused(tmp_path):
    c = Cluster(search_spec(tmp_path), name="x" * 64)
    actions = c.step()
    assert not creates(actions)
    cond = condition(c.status, "Succeeded")
    assert cond["reason"] == "InvalidSpec" and cond["message"].startswith("metadata.name: at most 63")


def test_status_patch_clears_what_the_new_status_leaves_out():
    assert status_patch({"phase": "Running", "bestTrial": "a"}, {"phase": "Running"}) == {"bestTrial": None}
    assert status_patch({"phase": "Running"}, {"phase": "Running"}) == {}


def test_trials_of_other_searches_or_without_an_index_are_not_counted(tmp_path):
    c = Cluster(search_spec(tmp_path))
    c.apply(c.decide())  # the space's check, which passes
    stray = {"metadata": {"name": "s-t007", "labels": {sn.LABEL_SEARCH: "s"}}, "status": {}}
    actions = decide_search(c.observed(), [stray], None, NOW, None, next(iter(c.checks.values())))
    assert [a.name for a in creates(actions)] == ["s-t000", "s-t001"]


def test_params_annotation_round_trips():
    params = TrialParams(keep_layers=3, int8=True, temperature=4.0)
    text = sn.params_annotation(params)
    assert json.loads(text) == {"int8": True, "keepLayers": 3, "temperature": 4.0}
    assert sn.params_from_annotation(text) == params
    assert sn.params_from_annotation("{not json") is None and sn.index_from_label("²") is None


def test_finished_after_says_when_a_stale_copy_can_be_skipped(tmp_path):
    c = Cluster(search_spec(tmp_path, space={"int8": [False, True]}))
    first = c.decide()
    assert not finished_after(c.observed(), first)
    c.apply(first)
    for n in list(c.jobs):
        c.finish(n)
    last = c.decide()
    assert finished_after(c.observed(), last)


# ----------------------------------------------------------------------------- the space's check


def test_a_space_needing_the_teachers_depth_is_checked_by_a_dry_run_before_any_trial(tmp_path):
    c = Cluster(search_spec(tmp_path), check_passes=False)
    # The operator cannot read the teacher: it asks for the check job, and creates it when absent.
    (read,) = decide_search(c.observed(), [], None, NOW)
    assert isinstance(read, ReadSpaceCheck) and read.name.startswith("s-check-")
    name = read.name
    actions = c.step()
    (check,) = [a for a in actions if isinstance(a, CreateSpaceCheck)]
    assert not creates(actions) and check.name == name
    meta, spec = check.manifest["metadata"], check.manifest["spec"]
    assert spec["dryRun"] is True and spec["student"]["keepLayers"] == 3  # the space's deepest student
    assert spec["output"]["uri"] == f"file://{tmp_path}/out/space-check"
    assert meta["labels"][sn.LABEL_SPACE_CHECK] == "s"
    assert sn.LABEL_SEARCH not in meta["labels"] and sn.LABEL_TRIAL_INDEX not in meta["labels"]
    assert meta["ownerReferences"][0]["kind"] == "DistillationSearch"
    assert c.status["phase"] == "Pending" and c.status["spaceCheck"] == {
        "job": name, "phase": "Running", "message": "a dry run of the space's deepest student"}
    assert "checking the space" in c.status["progress"]["message"]
    # While it runs nothing starts, and it is not created twice.
    assert not creates(c.step()) and len(c.checks) == 1 and not c.jobs
    # Passed: the trials start, and the status keeps saying so once the trials are running.
    c.checks[name]["status"] = {"phase": "Succeeded", "message": "the spec fits the teacher (6 layers)",
                                "conditions": [{"type": "Succeeded", "status": "True", "reason": "Checked"}]}
    assert [a.name for a in creates(c.step())] == ["s-t000", "s-t001"]
    assert c.status["spaceCheck"]["phase"] == "Passed" and c.status["phase"] == "Running"
    assert not any(isinstance(a, ReadSpaceCheck) for a in decide_search(c.observed(), c.listed(), None, NOW))
    c.finish("s-t000")
    c.step()
    assert c.status["spaceCheck"]["phase"] == "Passed" and c.status["phase"] == "Running"


def test_a_keep_layers_beyond_the_teacher_fails_the_search_before_any_trial(tmp_path):
    c = Cluster(search_spec(tmp_path, space={"keepLayers": {"min": 7, "max": 9}}), check_passes=False)
    c.step()
    (name,) = c.checks
    message = "student.keepLayers: 9 is larger than the teacher's 6 layers"
    c.checks[name]["status"] = {"phase": "Failed", "message": message, "conditions": [
        {"type": "Succeeded", "status": "False", "reason": "InvalidInput", "message": message}]}
    actions = c.step()
    assert not creates(actions) and not c.jobs
    assert c.status["phase"] == "Failed" and c.status["spaceCheck"]["phase"] == "Failed"
    cond = condition(c.status, "Succeeded")
    assert cond["reason"] == "InvalidSpace" and cond["message"].startswith("space.keepLayers.max 9: ")
    assert message in cond["message"] and name in cond["message"]
    assert [(e.reason, e.warning) for e in c.events] == [("InvalidSpace", True)]
    assert c.step() == []
    # A fixed space (generation 2) gets a check of its own.
    c.spec["space"] = {"keepLayers": {"min": 2, "max": 5}}
    c.apply(c.decide(generation=2))
    assert len(c.checks) == 2 and c.status["phase"] == "Pending" and not c.jobs


def test_a_check_failing_for_another_reason_fails_the_search_with_it(tmp_path):
    c = Cluster(search_spec(tmp_path), check_passes=False)
    c.step()
    (name,) = c.checks
    c.checks[name]["status"] = {"phase": "Failed", "message": "Secret 's3' is not marked for use", "conditions": [
        {"type": "Succeeded", "status": "False", "reason": "SecretNotAllowed"}]}
    c.step()
    cond = condition(c.status, "Succeeded")
    assert cond["reason"] == "SpaceCheckFailed" and "(SecretNotAllowed): Secret 's3'" in cond["message"]
    assert not c.jobs


def test_a_space_without_keep_layers_starts_its_trials_at_once(tmp_path):
    c = Cluster(search_spec(tmp_path, space={"temperature": [2.0, 4.0], "int8": [False, True]}), check_passes=False)
    assert [a.name for a in creates(c.step())] == ["s-t000", "s-t001"]
    assert not c.checks and "spaceCheck" not in c.status


def test_a_dry_run_template_is_refused(tmp_path):
    spec = search_spec(tmp_path)
    spec["template"]["dryRun"] = True
    c = Cluster(spec)
    c.step()
    assert c.status["phase"] == "Failed" and "template.dryRun" in condition(c.status, "Succeeded")["message"]
    assert not c.checks and not c.jobs


def test_a_check_name_held_by_another_job_fails_the_search(tmp_path):
    c = Cluster(search_spec(tmp_path), check_passes=False)
    (read,) = decide_search(c.observed(), [], None, NOW)
    stranger = {"metadata": {"name": read.name, "labels": {}}, "status": {"phase": "Succeeded"}}
    actions = decide_search(c.observed(), [], None, NOW, None, stranger)
    assert not creates(actions)
    cond = condition(patch_of(actions), "Succeeded")
    assert cond["reason"] == "TrialNameTaken" and read.name in cond["message"]
