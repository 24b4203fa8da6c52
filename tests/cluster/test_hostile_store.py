"""A store that accepts connections and never answers cannot stall the operator.

Three jobs name an S3 endpoint served by a socket in this test that accepts and then says nothing;
four others write to file:// outputs. The trainer is tests/cluster/store_free_trainer.py (the
hostile jobs' trainer never touches the store; the others' is the benchmark's fake trainer), so
only the operator meets the hanging store: for progress while the trainer runs, for the result
after. The other jobs must finish meanwhile, and the hostile ones end Failed/ResultUnavailable
after bounded tries, having shown their progress as unknown.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.operator_harness import OperatorProcess, apply, condition, get, wait_for
from tests.digits import digits_job_document
from tests.silent_endpoint import SilentServer, serving

TRAINER = Path(__file__).with_name("store_free_trainer.py")


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    yield from serving()


@pytest.fixture
def operator(control_plane, namespace, tmp_path):
    if " " in sys.executable or " " in str(TRAINER):
        pytest.skip("DISTILLERY_TRAINER_COMMAND is split on spaces")
    op = OperatorProcess(control_plane.kubeconfig, namespace, tmp_path,
                         DISTILLERY_TRAINER_COMMAND=f"{sys.executable} {TRAINER}",
                         DISTILLERY_STORE_CONNECT_TIMEOUT_SECONDS=1, DISTILLERY_STORE_READ_TIMEOUT_SECONDS=2,
                         DISTILLERY_STORE_MAX_ATTEMPTS=2, DISTILLERY_STORE_WORKERS=4).start()
    yield op
    op.stop()


def test_a_store_that_never_answers_stalls_only_its_own_jobs(control_plane, namespace, operator, silent_server,
                                                           tmp_path):
    apply(control_plane, namespace, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hung-creds",
                                                          "labels": {"distillery.io/usable-by-jobs": "true"}},
        "stringData": {"AWS_ACCESS_KEY_ID": "hung-id-7f3a", "AWS_SECRET_ACCESS_KEY": "hung-secret-91c2"}})
    hung, good = [f"hung-{i}" for i in range(3)], [f"good-{i}" for i in range(4)]
    for name in hung:
        doc = digits_job_document(tmp_path / "ws", tmp_path / name, targets={"maxAccuracyDrop": 0.5})
        doc["metadata"] = {"name": name}
        doc["spec"]["output"] = {"uri": f"s3://bucket/{name}", "endpoint": f"http://127.0.0.1:{silent_server.port}",
                                 "credentialsSecret": "hung-creds"}
        apply(control_plane, namespace, doc)
    for name in good:
        doc = digits_job_document(tmp_path / "ws", tmp_path / name, targets={"maxAccuracyDrop": 0.5})
        doc["metadata"] = {"name": name}
        apply(control_plane, namespace, doc)

    seen_unknown: set[str] = set()

    def phases() -> dict[str, str]:
        out = {}
        for item in get(control_plane, namespace, "distillationjobs")["items"]:
            status = item.get("status") or {}
            out[item["metadata"]["name"]] = status.get("phase")
            if (status.get("progress") or {}).get("stage") == "unknown":
                seen_unknown.add(item["metadata"]["name"])
        return out

    start = time.monotonic()
    wait_for(lambda: all(phases().get(n) == "Succeeded" for n in good), 240, "the other jobs to succeed",
             interval=0.3, on_timeout=operator.logs)
    good_done = time.monotonic() - start
    wait_for(lambda: all(phases().get(n) == "Failed" for n in hung), 240, "the hung jobs to give up",
             interval=0.3, on_timeout=operator.logs)
    assert silent_server.accepted, "the operator never called the endpoint"
    for name in hung:
        obj = get(control_plane, namespace, "distillationjob", name)
        c = condition(obj, "Succeeded")
        assert c["reason"] == "ResultUnavailable", c
        assert "read timeout" in c["message"] or "timed out" in c["message"], c
        assert "hung-secret-91c2" not in json.dumps(obj) and "hung-id-7f3a" not in json.dumps(obj)
    assert seen_unknown & set(hung), "no hung job showed its progress as unknown"
    # Other tenants never waited for the hanging store: far below botocore's default of minutes.
    assert good_done < 120, good_done
    for name in good:
        assert get(control_plane, namespace, "distillationjob", name)["status"]["accepted"] is True
