"""Fault figure: kube-apiserver stopped and started again in the middle of a run.

The real trainer runs (digits, as a local process of the test node agent) while the API server is
down for DOWN_S seconds; etcd keeps the data, the server comes back on the same port with the
same certificates. The run must still end as it would have: one trainer Job, the trainer's
result in the status, one StudentModel on the frontier. Observable behaviour only.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster.operator_harness import OperatorProcess, apply
from tests.digits import digits_job_document
from tests.faults.observe import Observer, poll

pytestmark = pytest.mark.faults

DOWN_S = 20
RUN_TIMEOUT_S = 600


def test_apiserver_restart_during_training(fault_cluster, fault_namespace, digits_workspace, tmp_path) -> None:
    cluster, cp = fault_cluster.cluster, fault_cluster.control_plane
    out, name = tmp_path / "out", "restart"
    doc = digits_job_document(digits_workspace, out, distillation={"epochs": 15}, targets={"maxAccuracyDrop": 0.5})
    doc["metadata"] = {"name": name}
    op = OperatorProcess(str(cluster.kubeconfig), fault_namespace, tmp_path).start()
    try:
        obs = Observer(cluster, fault_namespace)
        apply(cluster, fault_namespace, doc)
        job_uid = poll(lambda: [j.metadata.uid for j in obs.trainer_jobs(name)], RUN_TIMEOUT_S, "the trainer Job",
                       on_timeout=op.logs)[0]
        poll(lambda: ((obs.job(name).get("status") or {}).get("progress") or {}).get("stage") == "training",
             RUN_TIMEOUT_S, "training progress", interval=0.2, on_timeout=op.logs)

        down_at = time.monotonic()
        cp.stop_component("kube-apiserver")
        stopped_in = time.monotonic() - down_at
        time.sleep(DOWN_S)
        restart_at = time.monotonic()
        cp.start_component("kube-apiserver")
        ready_in = time.monotonic() - restart_at
        ready_after = time.monotonic() - down_at
        trainer_done_while_down = (out / "g1" / "result.json").exists()

        final = poll(lambda: obs.job(name) if obs.phase(name) in ("Succeeded", "Failed") else None,
                     RUN_TIMEOUT_S, "the run to finish", interval=0.5, on_timeout=op.logs)
        finished_after = time.monotonic() - down_at
        status = final["status"]
        result = json.loads((out / "g1" / "result.json").read_text())
        assert status["phase"] == "Succeeded" and status["accepted"] is True, status
        assert status["student"]["accuracy"] == result["student"]["accuracy"]
        jobs = obs.trainer_jobs(name)
        assert [(j.metadata.name, j.metadata.uid) for j in jobs] == [(f"distill-{name}-g1", job_uid)]
        students = poll(lambda: [m for m in obs.students(name) if (m.get("status") or {}).get("onFrontier")],
                        120, "the StudentModel on the frontier", interval=0.5, on_timeout=op.logs)
        assert len(obs.students(name)) == len(students) == 1
        operator_alive = op.proc.poll() is None
        print(f"\nFIGURE apiserver-restart: kube-apiserver stopped (SIGTERM, {stopped_in:.1f} s to exit), "
              f"left down {DOWN_S} s during training, ready {ready_in:.1f} s after its start "
              f"({ready_after:.1f} s after the stop); trainer finished while down: {trainer_done_while_down}; "
              f"run Succeeded {finished_after:.1f} s after the stop; trainer Jobs 1 (same uid), StudentModels 1; "
              f"operator process survived: {operator_alive}")
        assert operator_alive, "the operator exited when the API server went away:\n" + op.logs()[-4000:]
    finally:
        op.stop()
