"""Fault figure: the operator SIGKILLed at 5 points across 3 runs, on a real control plane.

Each run is one DistillationJob with the real trainer (digits, run by the test node agent) and the
real `distillery operator` process; the test watches the API (and the output folder for
result.json) and kills the operator's process group the moment a point is reached, then starts a
new operator. Whatever the point, the end state must be the same as without kills: one trainer
Job (the same one, never recreated), the trainer's result in the status, exactly one
StudentModel for the accepted job, and that model placed on the frontier. Only observable
behaviour is checked (objects in the API), not the operator's internals.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.operator_harness import OperatorProcess, apply
from tests.digits import digits_job_document
from tests.faults.observe import Observer, poll

pytestmark = pytest.mark.faults

RUN_TIMEOUT_S = 600  # the 2-core CI machine may be busy
KILLS: list[str] = []  # what each kill saw, printed at the end of each run


def _start_operator(fault_cluster, namespace: str, log_dir: Path) -> OperatorProcess:
    # A longer frontier debounce widens the window between "StudentModel created" and "placed on
    # the frontier", so the test can kill the operator inside it.
    return OperatorProcess(str(fault_cluster.cluster.kubeconfig), namespace, log_dir,
                           DISTILLERY_FRONTIER_DEBOUNCE_SECONDS=3).start()


def _job(ws: Path, out: Path, name: str) -> dict:
    doc = digits_job_document(ws, out, distillation={"epochs": 3}, targets={"maxAccuracyDrop": 0.5})
    doc["metadata"] = {"name": name}
    return doc


class Run:
    def __init__(self, fault_cluster, namespace: str, ws: Path, tmp_path: Path, name: str):
        self.obs, self.name, self.out = Observer(fault_cluster.cluster, namespace), name, tmp_path / "out"
        self.op = _start_operator(fault_cluster, namespace, tmp_path)
        self.job_uids: set[str] = set()
        apply(fault_cluster.cluster, namespace, _job(ws, self.out, name))

    def logs(self) -> str:
        return self.op.logs()[-8000:]

    def kill_when(self, point: str, reached: Callable[[], object], restart_after: float = 0.0) -> None:
        """Kills the operator as soon as `reached()` is truthy, records what the API held at that
        moment, and starts a new operator `restart_after` seconds later."""
        poll(reached, RUN_TIMEOUT_S, point, on_timeout=self.logs)
        self.op.kill()
        phase, jobs, students = self.obs.phase(self.name), self.obs.trainer_jobs(self.name), self.obs.students(self.name)
        self.job_uids |= {j.metadata.uid for j in jobs}
        on_frontier = [(m.get("status") or {}).get("onFrontier") for m in students]
        KILLS.append(f"{self.name}: killed at '{point}': phase={phase}, trainer Jobs={len(jobs)}, "
                     f"result.json={'yes' if self.result_file().exists() else 'no'}, StudentModels={len(students)}, "
                     f"onFrontier={on_frontier}")
        time.sleep(restart_after)
        self.op.start()

    def result_file(self) -> Path:
        return self.out / "g1" / "result.json"

    def check_end_state(self) -> str:
        final = poll(lambda: self.obs.job(self.name) if self.obs.phase(self.name) in ("Succeeded", "Failed") else None,
                     RUN_TIMEOUT_S, f"{self.name} to finish", interval=0.5, on_timeout=self.logs)
        status = final["status"]
        assert status["phase"] == "Succeeded", status
        result = json.loads(self.result_file().read_text())
        assert status["accepted"] is True
        assert status["student"]["accuracy"] == result["student"]["accuracy"]  # no result lost
        jobs = self.obs.trainer_jobs(self.name)
        assert [j.metadata.name for j in jobs] == [f"distill-{self.name}-g1"]  # no duplicate Job
        self.job_uids |= {j.metadata.uid for j in jobs}
        assert len(self.job_uids) == 1, "the trainer Job was deleted and created again"
        students = poll(lambda: [m for m in self.obs.students(self.name)
                                 if (m.get("status") or {}).get("onFrontier") is True],
                        120, "the StudentModel on the frontier", interval=0.5, on_timeout=self.logs)
        time.sleep(3)  # a late duplicate would show up within the poll interval
        students = self.obs.students(self.name)
        assert len(students) == 1, [m["metadata"]["name"] for m in students]  # exactly one StudentModel
        assert status["studentModel"] == students[0]["metadata"]["name"]
        assert students[0]["spec"]["metrics"]["accuracy"] == result["student"]["accuracy"]
        summary = (f"{self.name}: {self.op.starts} operator starts; trainer Jobs 1; StudentModels 1 "
                   f"(on the frontier); status accuracy == result.json ({result['student']['accuracy']})")
        print("\n" + "\n".join(f"FIGURE operator-kill {k}" for k in KILLS if k.startswith(self.name)))
        print(f"FIGURE operator-kill {summary}")
        return summary

    def close(self) -> None:
        self.op.stop()


@pytest.fixture
def run(fault_cluster, fault_namespace, digits_workspace, tmp_path, request):
    r = Run(fault_cluster, fault_namespace, digits_workspace, tmp_path, request.node.name.split("_")[-1])
    yield r
    r.close()


def test_run_killed_after_job_created_and_while_running(run: Run) -> None:
    run.kill_when("trainer Job created", lambda: run.obs.trainer_jobs(run.name))
    run.kill_when("phase Running", lambda: run.obs.phase(run.name) == "Running")
    run.check_end_state()


def test_run_killed_when_result_json_appears(run: Run) -> None:
    # Down for 2 s: the operator must not have had the chance to read the result before it died.
    run.kill_when("result.json written", lambda: run.result_file().exists(), restart_after=2)
    run.check_end_state()


def test_run_killed_at_registration_and_during_frontier(run: Run) -> None:
    run.kill_when("StudentModel created", lambda: run.obs.students(run.name))
    # The new operator finds the model and schedules its group's frontier (debounced 3 s): kill
    # it inside that window.
    started = time.monotonic()
    run.kill_when("frontier recompute pending (2.5 s after restart)",
                  lambda: time.monotonic() - started > 2.5
                  and any((m.get("status") or {}).get("onFrontier") is None for m in run.obs.students(run.name)))
    run.check_end_state()
