"""A DistillationSearch on the real control plane: the operator runs its trials as DistillationJobs
(the real trainer, run by the test node agent), is killed and restarted in the middle, and the
search's table, frontier and best trial are checked against the trials' own statuses.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.cluster.operator_harness import OperatorProcess, apply, condition, get, wait_for
from tests.digits import digits_job_document

TRAINER_TIMEOUT = 900  # five real trainer runs, two at a time, on a busy 2-core machine
SEARCH = "digits-search"
SELECTOR = f"distillery.io/search={SEARCH}"


@pytest.fixture
def operator(control_plane, namespace, tmp_path):
    op = OperatorProcess(control_plane.kubeconfig, namespace, tmp_path).start()
    yield op
    op.stop()


def search_document(ws: Path, out: Path, name: str = SEARCH, **spec) -> dict:
    template = digits_job_document(ws, out, distillation={"epochs": 1})["spec"]
    return {
        "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationSearch", "metadata": {"name": name},
        "spec": {
            "template": template,
            # 6 points and a budget of 5: auto resolves to nsga2 (Optuna, in the operator).
            "space": {"keepLayers": {"min": 1, "max": 3}, "temperature": [2.0, 4.0]},
            "targets": {"maxAccuracyDrop": 0.5},
            "optimizeFor": "latency",
            "seed": 7,
            "budget": {"maxTrials": 5, "parallelTrials": 2},
            **spec,
        },
    }


class TrialWatcher:
    """Polls the search's trials in the background: the most that were ever non-final at once,
    and every name ever seen."""

    def __init__(self, control_plane, namespace: str):
        from kubernetes import client

        self.api = client.CustomObjectsApi(control_plane.api_client())
        self.namespace = namespace
        self.max_running = 0
        self.names: set[str] = set()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TrialWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                items = self.api.list_namespaced_custom_object(
                    "distillery.io", "v1alpha1", self.namespace, "distillationjobs", label_selector=SELECTOR)["items"]
            except Exception as err:  # noqa: BLE001 - record and keep watching
                self.errors.append(repr(err))
            else:
                self.names.update(i["metadata"]["name"] for i in items)
                running = [i for i in items if (i.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
                self.max_running = max(self.max_running, len(running))
            self._stop.wait(0.3)


def trials(control_plane, namespace) -> list[dict]:
    items = get(control_plane, namespace, "distillationjobs", selector=SELECTOR)["items"]
    return sorted(items, key=lambda i: i["metadata"]["name"])


def search(control_plane, namespace) -> dict:
    return get(control_plane, namespace, "distillationsearch", SEARCH)


def dominates(a: dict, b: dict) -> bool:
    return (a["accuracy"] >= b["accuracy"] and a["latencyP50Ms"] <= b["latencyP50Ms"]
            and (a["accuracy"] > b["accuracy"] or a["latencyP50Ms"] < b["latencyP50Ms"]))


def test_search_runs_its_trials_through_a_restart_and_picks_the_best(
        control_plane, namespace, operator, digits_workspace, tmp_path):
    out = tmp_path / "out"
    with TrialWatcher(control_plane, namespace) as watcher:
        apply(control_plane, namespace, search_document(digits_workspace, out))

        def logs() -> str:
            return operator.logs() + json.dumps(search(control_plane, namespace).get("status"), indent=1)[-4000:]

        # In the middle: one trial done and the next ones started, then the operator dies.
        wait_for(lambda: any((t.get("status") or {}).get("phase") == "Succeeded"
                             for t in trials(control_plane, namespace))
                 and len(trials(control_plane, namespace)) >= 3, TRAINER_TIMEOUT, "the first trial to finish",
                 on_timeout=logs)
        operator.kill()
        at_kill = len(trials(control_plane, namespace))
        assert at_kill < 5, "the search was over before the restart: nothing was tested"
        time.sleep(5)  # trainers go on; nothing records them meanwhile
        operator.start()
        final = wait_for(lambda: (s := search(control_plane, namespace)).get("status", {}).get("phase")
                         in ("Succeeded", "Failed") and not s["status"].get("trialsRunning") and s,
                         TRAINER_TIMEOUT, "the search to finish", on_timeout=logs)
    assert not watcher.errors, watcher.errors[:3]
    status = final["status"]
    assert condition(final, "Succeeded")["status"] == "True", (condition(final, "Succeeded"), operator.logs())
    assert status["phase"] == "Succeeded" and operator.starts == 2

    # Exactly the trials of the budget: no duplicate, no gap, never more than parallelTrials at once.
    jobs = trials(control_plane, namespace)
    names = [j["metadata"]["name"] for j in jobs]
    assert names == [f"{SEARCH}-t{i:03d}" for i in range(5)]
    assert watcher.names == set(names)
    assert watcher.max_running <= 2, watcher.max_running
    assert status["trialsStarted"] == 5 and status["trialsSucceeded"] == 5 and status["algorithm"] == "nsga2"
    params = [json.loads(j["metadata"]["annotations"]["distillery.io/trial-params"]) for j in jobs]
    assert len({json.dumps(p, sort_keys=True) for p in params}) == 5
    for job, p in zip(jobs, params, strict=True):
        assert job["spec"]["student"]["keepLayers"] == p["keepLayers"]
        assert job["spec"]["distillation"]["temperature"] == p["temperature"]
        assert job["spec"]["output"]["uri"] == f"file://{out}/trials/{job['metadata']['name']}"
        assert job["spec"]["output"]["cacheUri"] == f"file://{out}/cache"
        owner = job["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "DistillationSearch" and owner["uid"] == final["metadata"]["uid"]
        assert owner["controller"] is True and owner["blockOwnerDeletion"] is True

    # The table, the frontier and the best trial against the trials' own statuses.
    by_name = {j["metadata"]["name"]: j["status"] for j in jobs}
    for row in status["trials"]:
        own = by_name[row["name"]]
        assert row["accuracy"] == own["student"]["accuracy"]
        assert row["latencyMs"] == own["student"]["latencyP50Ms"]
        assert row["variant"] == (own.get("variant") or "fp32")
        assert row["accepted"] == own["accepted"] and row["phase"] == own["phase"]
    students = {n: s["student"] for n, s in by_name.items()}
    frontier = {n for n, m in students.items() if not any(dominates(o, m) for o in students.values())}
    assert set(status["frontier"]) == frontier
    accepted = [n for n in names if by_name[n]["accepted"]]
    best = min(accepted, key=lambda n: (students[n]["latencyP50Ms"], -students[n]["accuracy"], names.index(n)))
    assert status["bestTrial"] == best
    assert status["studentModel"] == by_name[best]["studentModel"]
    assert get(control_plane, namespace, "studentmodel", status["studentModel"])
    events = get(control_plane, namespace, "events")["items"]
    finished = [e for e in events if e["involvedObject"].get("kind") == "DistillationSearch"
                and e["reason"] == "Completed"]
    assert len(finished) == 1 and best in finished[0]["message"]
    # The operator never wrote the spec.
    assert final["metadata"]["generation"] == 1

    # Deleting the search deletes its trials (owner references), not the registered students.
    control_plane.kubectl("delete", "dsearch", SEARCH, "-n", namespace, "--wait=true", "--timeout=120s")
    wait_for(lambda: not trials(control_plane, namespace), 120, "the trials to be collected")
    assert get(control_plane, namespace, "studentmodel", status["studentModel"])


def test_a_space_deeper_than_the_teacher_fails_the_search_before_any_trial(
        control_plane, namespace, operator, digits_workspace, tmp_path):
    # The digits teacher has 6 blocks; the operator cannot read it, so a dry run of the space's
    # deepest student (a real trainer pod that reads the teacher and trains nothing) finds out.
    doc = search_document(digits_workspace, tmp_path / "out", name="too-deep",
                          space={"keepLayers": {"min": 7, "max": 9}}, algorithm="grid",
                          budget={"maxTrials": 3, "parallelTrials": 1})
    apply(control_plane, namespace, doc)

    def failed():
        obj = get(control_plane, namespace, "distillationsearch", "too-deep")
        status = obj.get("status") or {}
        return obj if status.get("phase") == "Failed" else None

    final = wait_for(failed, 300, "the search to fail", on_timeout=operator.logs)
    c = condition(final, "Succeeded")
    assert c["status"] == "False" and c["reason"] == "InvalidSpace", c
    assert c["message"].startswith("space.keepLayers.max 9: "), c
    assert "student.keepLayers: 9 is larger than the teacher's 6 layers" in c["message"], c
    assert condition(final, "Stalled")["status"] == "True"
    check = final["status"]["spaceCheck"]
    assert check["phase"] == "Failed" and check["job"].startswith("too-deep-check-")
    # No trial ever started; the check is a dry-run DistillationJob owned by the search.
    trials_made = get(control_plane, namespace, "distillationjobs", selector="distillery.io/search=too-deep")["items"]
    assert trials_made == [] and final["status"]["trialsStarted"] == 0
    dry = get(control_plane, namespace, "distillationjob", check["job"])
    assert dry["spec"]["dryRun"] is True and dry["spec"]["student"]["keepLayers"] == 9
    assert dry["metadata"]["ownerReferences"][0]["uid"] == final["metadata"]["uid"]
    assert dry["status"]["phase"] == "Failed" and condition(dry, "Succeeded")["reason"] == "InvalidInput"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors"))
    events = [e for e in get(control_plane, namespace, "events")["items"]
              if e["involvedObject"].get("kind") == "DistillationSearch"]
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "InvalidSpace")]


def refusals(log_dir: Path, user: str) -> list[str]:
    """The operator's log lines where the API server or kopf said it lacks a permission."""
    lines = [line for p in sorted(log_dir.glob("operator-*.log")) for line in p.read_text(errors="replace").splitlines()]
    return [line for line in lines if f'User \\"{user}\\" cannot' in line or f'User "{user}" cannot' in line
            or "Not enough permissions" in line]


def test_the_charts_rbac_is_enough_to_run_a_search(control_plane, namespace, helm, digits_workspace, tmp_path):
    """The operator with only the chart's ServiceAccount token (namespaced Role) runs a search:
    watching it, writing its status, creating its trials (owned by it) and reading the registry.
    A verb the chart forgot shows up as a refusal in its log or a search that never finishes."""
    from tests.cluster.test_chart_install import install, service_account_kubeconfig

    installed = install(control_plane, helm, namespace, f"watchNamespaces={{{namespace}}}")
    chart = next(installed)
    op = OperatorProcess(str(service_account_kubeconfig(control_plane, chart, tmp_path / "sa.kubeconfig")),
                         namespace, tmp_path).start()
    try:
        apply(control_plane, namespace, search_document(
            digits_workspace, tmp_path / "out", name="rbac", space={"temperature": [2.0, 4.0]},
            budget={"maxTrials": 2, "parallelTrials": 2}))

        def finished():
            refused = refusals(tmp_path, chart.user)
            assert not refused, "\n".join(refused[:5])
            obj = get(control_plane, namespace, "distillationsearch", "rbac")
            status = obj.get("status") or {}
            return obj if status.get("phase") in ("Succeeded", "Failed") and not status.get("trialsRunning") else None

        final = wait_for(finished, TRAINER_TIMEOUT, "the search to finish", on_timeout=op.logs)
        assert final["status"]["phase"] == "Succeeded", final["status"]
        assert get(control_plane, namespace, "studentmodel", final["status"]["studentModel"])
        assert not refusals(tmp_path, chart.user)
        control_plane.kubectl("delete", "dsearch", "rbac", "-n", namespace, "--wait=true", "--timeout=120s")
    finally:
        op.stop()
        installed.close()


def test_a_search_tries_the_registrys_known_good_settings_first(
        control_plane, namespace, operator, digits_workspace, tmp_path):
    from distillery.controller.naming import frontier_group

    teacher_uri = f"file://{digits_workspace / 'teacher'}"
    group = frontier_group(teacher_uri, "tabular-classification", "cpu")
    apply(control_plane, namespace, {
        "apiVersion": "distillery.io/v1alpha1", "kind": "StudentModel",
        "metadata": {"name": "known-good", "labels": {"distillery.io/frontier-group": group}},
        "spec": {"teacher": {"uri": teacher_uri, "task": "tabular-classification"},
                 "artifacts": {"uri": f"file://{tmp_path}/earlier"},
                 "metrics": {"accuracy": 0.9, "latencyP50Ms": 0.05, "sizeBytes": 40000}, "paretoScore": 3.0,
                 "recipe": {"keepLayers": 2, "temperature": 4.0, "epochs": 1, "int8": False}}})
    # Once the operator gave it a frontier status, its index holds it.
    wait_for(lambda: (get(control_plane, namespace, "studentmodel", "known-good").get("status") or {})
             .get("onFrontier") is True, 120, "the StudentModel on the frontier", on_timeout=operator.logs)
    apply(control_plane, namespace, search_document(digits_workspace, tmp_path / "out", name="seeded",
                                                    budget={"maxTrials": 1, "parallelTrials": 1}))

    def finished():
        obj = get(control_plane, namespace, "distillationsearch", "seeded")
        status = obj.get("status") or {}
        return obj if status.get("phase") in ("Succeeded", "Failed") and not status.get("trialsRunning") else None

    final = wait_for(finished, TRAINER_TIMEOUT, "the search to finish", on_timeout=operator.logs)
    status = final["status"]
    assert status["seededFrom"] == ["known-good"]
    trial = get(control_plane, namespace, "distillationjob", "seeded-t000")
    notes = trial["metadata"]["annotations"]
    assert notes["distillery.io/trial-seeded"] == "true" and notes["distillery.io/trial-seeded-from"] == "known-good"
    assert json.loads(notes["distillery.io/trial-params"]) == {"keepLayers": 2, "temperature": 4.0}
    assert trial["spec"]["student"]["keepLayers"] == 2 and trial["spec"]["distillation"]["temperature"] == 4.0
    assert status["trials"][0]["seeded"] is True
