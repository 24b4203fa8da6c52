"""The control-plane fixture and the test node agent, checked with real parts: the real Job
controller, Pod Security admission and garbage collector act on pods the agent runs."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from kubernetes import client

from tests.cluster.conftest import Cluster, wait_for

POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def python_container(script: str, **extra) -> dict:
    return {
        "name": "main", "image": "python:3.11-slim",
        "command": [sys.executable, "-c", textwrap.dedent(script)],
        "securityContext": CONTAINER_SECURITY, **extra,
    }  # fmt: skip


def job(name: str, container: dict, backoff_limit: int = 0) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": backoff_limit, "template": {"spec": {
            "restartPolicy": "Never", "securityContext": POD_SECURITY, "containers": [container]}}},
    }  # fmt: skip


def create(cluster: Cluster, namespace: str, *docs: dict) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", "-", input="\n".join(json.dumps(d) for d in docs))


def get(cluster: Cluster, namespace: str, *what: str) -> dict:
    return json.loads(cluster.kubectl("get", "-n", namespace, *what, "-o", "json").stdout)


def job_finished(cluster: Cluster, namespace: str, name: str) -> str | None:
    """'Complete' or 'Failed' once the Job controller says so."""
    conditions = get(cluster, namespace, "job", name).get("status", {}).get("conditions", [])
    return next((c["type"] for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None)


def job_pods(cluster: Cluster, namespace: str, name: str) -> list[dict]:
    return get(cluster, namespace, "pods", "-l", f"job-name={name}")["items"]


def test_version_is_the_pinned_release(control_plane: Cluster):
    version = client.VersionApi(control_plane.api_client()).get_code()
    assert version.git_version.startswith("v1.34."), version.git_version
    assert "v1.34." in control_plane.kubectl("version").stdout


def test_node_is_registered(control_plane: Cluster):
    node = json.loads(control_plane.kubectl("get", "node", control_plane.node, "-o", "json").stdout)
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert node["status"]["allocatable"]["cpu"] == "16"
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


def test_job_completes_with_env_from_secret_and_termination_message(control_plane: Cluster, namespace: str):
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "stringData": {"GREETING": "hello from a secret"}}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                  "data": {"color": "green"}}
    container = python_container(
        """
        import os
        message = "|".join([os.environ["GREETING"], os.environ["COLOR"], os.environ["POD_NAMESPACE"],
                            os.environ["SHOUT"], str("TOKEN" in os.environ)])
        print("writing", message)
        with open(os.environ["DISTILLERY_TERMINATION_LOG"], "w") as f:
            f.write(message)
        """,
        env=[
            {"name": "GREETING", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "GREETING"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "NOPE", "optional": True}}},
            {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "color"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "SHOUT", "value": "$(COLOR)!"},
        ],
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    create(control_plane, namespace, secret, config_map, job("ok", container))

    assert wait_for(lambda: job_finished(control_plane, namespace, "ok"), what="Job ok to finish") == "Complete"
    [pod] = job_pods(control_plane, namespace, "ok")
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert terminated["reason"] == "Completed"
    assert terminated["message"] == f"hello from a secret|green|{namespace}|green!|False"
    assert "writing hello from a secret" in control_plane.pod_logs(namespace)


def test_failing_command_fails_the_job(control_plane: Cluster, namespace: str):
    container = python_container('print("boom: the model is on fire"); raise SystemExit(3)',
                                 terminationMessagePolicy="FallbackToLogsOnError")
    create(control_plane, namespace, job("bad", container, backoff_limit=0))

    assert wait_for(lambda: job_finished(control_plane, namespace, "bad"), what="Job bad to finish") == "Failed"
    conditions = get(control_plane, namespace, "job", "bad")["status"]["conditions"]
    assert any(c["type"] == "Failed" and c["reason"] == "BackoffLimitExceeded" for c in conditions)
    [pod] = job_pods(control_plane, namespace, "bad")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert "boom: the model is on fire" in terminated["message"]  # fallback to the log's tail


@pytest.mark.parametrize(
    "pod_security, container_security",
    [
        # (privileged: true is refused before admission: the API server runs without --allow-privileged)
        pytest.param(POD_SECURITY, {**CONTAINER_SECURITY, "allowPrivilegeEscalation": True}, id="privilege-escalation"),
        pytest.param({"seccompProfile": {"type": "RuntimeDefault"}}, CONTAINER_SECURITY, id="may-run-as-root"),
    ],
)
def test_pod_security_admission_rejects_non_compliant_pods(control_plane: Cluster, namespace: str,
                                                           pod_security: dict, container_security: dict):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rogue"},
           "spec": {"securityContext": pod_security,
                    "containers": [python_container("pass", securityContext=container_security)]}}
    result = control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    assert result.returncode != 0
    assert "violates PodSecurity" in result.stderr
    assert "restricted" in result.stderr


def test_pod_needing_more_gpus_than_the_node_has_stays_pending(control_plane: Cluster, namespace: str):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "greedy"},
           "spec": {"restartPolicy": "Never", "securityContext": POD_SECURITY,
                    "containers": [python_container("pass", resources={"limits": {"nvidia.com/gpu": "2"}})]}}
    create(control_plane, namespace, pod)

    def unschedulable():
        status = get(control_plane, namespace, "pod", "greedy")["status"]
        return next((c for c in status.get("conditions", [])
                     if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"), None)

    condition = wait_for(unschedulable, what="PodScheduled=False")
    assert "Insufficient nvidia.com/gpu" in condition["message"]
    assert get(control_plane, namespace, "pod", "greedy")["status"]["phase"] == "Pending"


@pytest.mark.parametrize("cascade", ["foreground", "background"])
def test_deleting_a_running_job_kills_its_process(control_plane: Cluster, namespace: str, tmp_path: Path,
                                                  cascade: str):
    pid_file = tmp_path / "pid"
    container = python_container(f"""
        import os, time
        with open({str(pid_file)!r}, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)
        """)
    create(control_plane, namespace, job("sleeper", container))

    def running():
        pods = job_pods(control_plane, namespace, "sleeper")
        return pods and pods[0]["status"].get("phase") == "Running" and pid_file.exists() and pid_file.read_text()

    pid = int(wait_for(running, what="the sleeper pod to run"))
    [pod] = job_pods(control_plane, namespace, "sleeper")
    assert pod["status"]["podIP"] == "127.0.0.1"
    assert "running" in pod["status"]["containerStatuses"][0]["state"]
    os.kill(pid, 0)  # alive

    control_plane.kubectl("delete", "job", "sleeper", "-n", namespace, f"--cascade={cascade}", "--wait=false")

    def gone():
        jobs = get(control_plane, namespace, "jobs")["items"]
        return not jobs and not job_pods(control_plane, namespace, "sleeper")

    wait_for(gone, what=f"the Job and its pods to go ({cascade})")

    def dead():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(dead, what=f"process {pid} to end")
