"""Smoke tests of the real single-node cluster (tests/cluster/node.py): what the end-to-end
scenario relies on, each checked in real containers run by the kubelet through containerd. The
pods run python from the MinIO image (our Debian base), which is small and quick to start.

- the node is Ready and runs the pinned kubelet;
- a pod under Pod Security ``restricted`` really runs as uid 1000, without capabilities, under a
  seccomp filter, and cannot write to its read-only root filesystem;
- a pod finds a Service by the name users write (``NAME.NAMESPACE``) through CoreDNS and reaches
  it through kube-proxy (MinIO's health endpoint);
- a pod reaches the API server through the ``kubernetes`` Service as in-cluster clients do (the
  service account token, the CA of ``kube-root-ca.crt``, KUBERNETES_SERVICE_HOST);
- the kernel kills a container over its memory limit and the kubelet reports OOMKilled;
- ``kubectl exec`` and ``kubectl port-forward`` reach a pod (API server -> kubelet, client cert).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import urllib.request

import pytest

from tests.cluster.controlplane import free_port
from tests.e2e.conftest import RealClusterHandle

pytestmark = pytest.mark.timeout(900)

RESTRICTED_CONTAINER = {
    "securityContext": {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "imagePullPolicy": "Never",  # imported, there is no registry
}  # fmt: skip


def pod(name: str, image: str, script: str, token: bool = False, **container: object) -> dict:
    """A restricted pod that runs ``script`` with python and exits."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": token,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "main", "image": image, "command": ["python", "-c", textwrap.dedent(script)],
                            **RESTRICTED_CONTAINER, **container}],
        },
    }  # fmt: skip


def run_to_end(cluster: RealClusterHandle, namespace: str, manifest: dict, phase: str = "Succeeded") -> str:
    """Creates the pod, waits until it ends in ``phase`` and returns its log."""
    name = manifest["metadata"]["name"]
    cluster.apply(manifest, namespace=namespace)
    ended = cluster.wait_pod_phase(name, namespace)
    assert ended["status"]["phase"] == phase, cluster.describe(name, namespace)
    return cluster.logs_of(name, namespace)


def test_node_is_ready_with_the_pinned_kubelet(real_cluster: RealClusterHandle):
    node = real_cluster.get("node", real_cluster.node)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.6")
    assert {"type": "InternalIP", "address": real_cluster.node_ip} in node["status"]["addresses"]


def test_restricted_pod_cannot_write_its_root_filesystem(real_cluster: RealClusterHandle, real_namespace: str):
    log = run_to_end(real_cluster, real_namespace, pod("restricted", real_cluster.image("minio"), """
        import os
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        print("uid", os.getuid(), "gid", os.getgid())
        print("CapEff", status["CapEff"].strip(), "Seccomp", status["Seccomp"].strip(),
              "NoNewPrivs", status["NoNewPrivs"].strip())
        try:
            open("/probe", "w")
            print("root write succeeded")
        except OSError as err:
            print("root write failed:", err)
        """))
    assert "uid 1000 gid 1000" in log, log
    assert "CapEff 0000000000000000" in log, log  # drop ALL, really
    assert "Seccomp 2" in log and "NoNewPrivs 1" in log, log  # a seccomp filter is loaded
    assert "root write failed: [Errno 30] Read-only file system: '/probe'" in log, log


def start_minio(cluster: RealClusterHandle, namespace: str) -> None:
    """A MinIO pod (restricted, emptyDir data) behind a Service ``minio``; waits until Ready."""
    minio = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "minio", "labels": {"app": "minio"}},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
            "containers": [{
                "name": "minio", "image": cluster.image("minio"), **RESTRICTED_CONTAINER,
                "args": ["server", "/data", "--address", ":9000"],
                "env": [{"name": "HOME", "value": "/tmp"}, {"name": "MINIO_ROOT_USER", "value": "smoke"},
                        {"name": "MINIO_ROOT_PASSWORD", "value": "smoke-secret-key"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],
                "ports": [{"containerPort": 9000}],
                "readinessProbe": {"httpGet": {"path": "/minio/health/ready", "port": 9000}, "periodSeconds": 2},
            }],
        },
    }  # fmt: skip
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "minio"},
               "spec": {"selector": {"app": "minio"}, "ports": [{"port": 9000, "targetPort": 9000}]}}
    cluster.apply(minio, service, namespace=namespace)
    cluster.kubectl("wait", "--for=condition=Ready", "pod/minio", "-n", namespace, "--timeout=180s")


def test_pod_reaches_a_service_by_its_name_through_coredns(real_cluster: RealClusterHandle, real_namespace: str):
    start_minio(real_cluster, real_namespace)
    cluster_ip = real_cluster.get("service", "minio", real_namespace)["spec"]["clusterIP"]

    log = run_to_end(real_cluster, real_namespace, pod("client", real_cluster.image("minio"), f"""
        import socket, time, urllib.request
        host = "minio.{real_namespace}"
        print("resolved", host, "to", socket.gethostbyname(host))
        for attempt in range(30):  # the endpoints reach kube-proxy's rules a moment after Ready
            try:
                with urllib.request.urlopen(f"http://{{host}}:9000/minio/health/live", timeout=3) as resp:
                    print("health", resp.status)
                    break
            except OSError as err:
                print("not yet:", err)
                time.sleep(1)
        """))
    assert f"resolved minio.{real_namespace} to {cluster_ip}" in log, log
    assert "health 200" in log, log


def test_pod_reaches_the_api_server_through_the_kubernetes_service(real_cluster: RealClusterHandle,
                                                                 real_namespace: str):
    log = run_to_end(real_cluster, real_namespace, pod("in-cluster", real_cluster.image("minio"), """
        import json, os, ssl, urllib.request
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        context = ssl.create_default_context(cafile=f"{sa}/ca.crt")  # verified, as in-cluster clients do
        headers = {"Authorization": "Bearer " + open(f"{sa}/token").read(), "Content-Type": "application/json"}
        with urllib.request.urlopen(urllib.request.Request(f"https://{host}:{port}/version", headers=headers),
                                    context=context, timeout=10) as resp:
            print("version", resp.status, json.load(resp)["gitVersion"], "via", host, port)
        review = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode()
        request = urllib.request.Request(f"https://{host}:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                         data=review, headers=headers, method="POST")
        with urllib.request.urlopen(request, context=context, timeout=10) as resp:
            print("user", json.load(resp)["status"]["userInfo"]["username"])
        """, token=True))
    assert "version 200 v1.34.4 via 10.0.0.1 443" in log, log
    assert f"user system:serviceaccount:{real_namespace}:default" in log, log


def test_container_over_its_memory_limit_is_oom_killed(real_cluster: RealClusterHandle, real_namespace: str):
    manifest = pod("hog", real_cluster.image("minio"), """
        chunks = []
        for _ in range(64):  # 64 x 16 MiB, written so the pages are really charged
            chunks.append(b"x" * (16 << 20))
        print("allocated", len(chunks) * 16, "MiB: the limit did not hold")
        """, resources={"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"memory": "64Mi", "cpu": "100m"}})
    real_cluster.apply(manifest, namespace=real_namespace)
    ended = real_cluster.wait_pod_phase("hog", real_namespace)
    [status] = ended["status"]["containerStatuses"]
    terminated = status["state"].get("terminated", {})
    assert ended["status"]["phase"] == "Failed", json.dumps(ended["status"], indent=1)
    assert terminated.get("reason") == "OOMKilled" and terminated.get("exitCode") == 137, \
        json.dumps(status, indent=1)


def test_exec_and_port_forward_go_through_the_kubelet(real_cluster: RealClusterHandle, real_namespace: str):
    """The API server reaches the kubelet with its client certificate (what logs, exec and
    port-forward need); port-forward is how the tests reach MinIO from this machine."""
    start_minio(real_cluster, real_namespace)
    exec_ = real_cluster.kubectl("exec", "minio", "-n", real_namespace, "--", "python", "-c", "import os; print(os.getuid())")
    assert exec_.stdout.strip() == "1000"

    port = free_port()
    forward = subprocess.Popen(
        [str(real_cluster.kubectl_bin), "--kubeconfig", str(real_cluster.kubeconfig), "port-forward", "-n",
         real_namespace, "pod/minio", f"{port}:9000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=real_cluster.env())
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/minio/health/live", timeout=3) as resp:
                    return resp.status == 200
            except OSError:
                return False
        real_cluster.wait_for(healthy, timeout=60, what="MinIO through kubectl port-forward")
    finally:
        forward.terminate()
        forward.wait(timeout=10)
