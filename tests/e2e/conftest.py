"""Fixtures for tests on the real single-node cluster (tests/cluster/node.py).

``real_cluster`` (session) starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
containerd, the kubelet, kube-proxy and CoreDNS on this machine, with the images of
~/.cache/distillery/images.env (scripts/build-images.sh) imported, and removes them all at the
end. It skips, with the reason, only where the node cannot run here (not root, host packages,
binaries or images missing); with DISTILLERY_REQUIRE_REAL_NODE=1 those fail instead.

``real_namespace`` (per test) is a fresh namespace with Pod Security ``restricted`` enforced; when
the test fails, its pods' logs, descriptions and events are printed in the teardown section.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import conftest as cluster_conftest
from tests.cluster.conftest import KubectlError, namespace_name, restricted_namespace, wait_for
from tests.cluster.node import (
    NODE_NAME,
    NodeError,
    RealCluster,
    images_env_path,
    missing_prerequisites,
    read_images_env,
)

WAIT_S = 180  # generous: 2 busy cores, and a pod's first start unpacks its image
IMAGE_KEYS = ("PAUSE",)  # the node needs the sandbox image; a test whose image is missing fails


@dataclass
class RealClusterHandle:
    """What the tests get: where the API server is, how to log in, the images, and helpers."""

    kubeconfig: Path  # admin kubeconfig (token in system:masters, the API server's CA embedded)
    server: str  # https://<this machine's address>:PORT
    token: str
    kubectl_bin: Path
    helm_bin: Path | None
    work_dir: Path
    node_ip: str
    images: dict[str, str]  # images.env: DISTILLERY_IMAGE_TRAINER=docker.io/... etc.
    logs: dict[str, Path] = field(default_factory=dict)  # component -> log file
    timings: dict[str, float] = field(default_factory=dict)  # start phase -> seconds
    node: str = NODE_NAME

    def image(self, name: str) -> str:
        """The reference of an imported image: ``image("trainer")`` -> docker.io/distillery/trainer:dev."""
        key = f"DISTILLERY_IMAGE_{name.upper()}"
        if key not in self.images:
            raise AssertionError(f"{key} is not in {images_env_path()}; run scripts/build-images.sh")
        return self.images[key]

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ without proxies (every address is local) + KUBECONFIG, for clients."""
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        return {**env, "KUBECONFIG": str(self.kubeconfig), **extra}

    def kubectl(self, *args: Any, input: str | None = None, check: bool = True,
                timeout: float = WAIT_S) -> subprocess.CompletedProcess:
        cmd = [str(self.kubectl_bin), "--kubeconfig", str(self.kubeconfig),
               "--cache-dir", str(self.work_dir / "kube-cache"), *map(str, args)]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=self.env())
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def apply(self, *manifests: dict | str, namespace: str | None = None) -> None:
        """kubectl apply of manifests given as dicts or YAML text."""
        text = "\n---\n".join(m if isinstance(m, str) else json.dumps(m) for m in manifests)
        self.kubectl("apply", *(["-n", namespace] if namespace else []), "-f", "-", input=text)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        """The object as a dict, or None when it does not exist."""
        result = self.kubectl("get", kind, name, *(["-n", namespace] if namespace else []), "-o", "json",
                              check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def wait_pod_phase(self, name: str, namespace: str, phases=("Succeeded", "Failed"),
                       timeout: float = WAIT_S) -> dict:
        """Waits until the pod reaches one of ``phases``; returns the pod."""
        def done():
            pod = self.get("pod", name, namespace)
            return pod if pod and pod.get("status", {}).get("phase") in phases else None
        try:
            return wait_for(done, timeout=timeout, what=f"pod {namespace}/{name} in {phases}")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.describe(name, namespace)}") from None

    def logs_of(self, pod: str, namespace: str, container: str | None = None, previous: bool = False) -> str:
        """The pod's log as the kubelet serves it (kubectl logs), or why it could not be read."""
        args = ["logs", pod, "-n", namespace, *(["-c", container] if container else []),
                *(["--previous"] if previous else [])]
        result = self.kubectl(*args, check=False)
        return result.stdout if result.returncode == 0 else f"<kubectl logs failed: {result.stderr.strip()}>"

    def describe(self, pod: str, namespace: str) -> str:
        """Diagnostics for a pod: kubectl describe (events included) and its log."""
        described = self.kubectl("describe", "pod", pod, "-n", namespace, check=False)
        return f"{described.stdout}{described.stderr}\n----- log\n{self.logs_of(pod, namespace)}"

    wait_for = staticmethod(wait_for)


def _unavailable() -> str | None:
    """Why the real node cannot run on this machine, or None."""
    missing = missing_prerequisites()
    if shutil.which("docker") is None:
        missing.append("docker not installed (images are built with it and imported from it)")
    images = read_images_env()
    absent = [f"DISTILLERY_IMAGE_{k}" for k in IMAGE_KEYS if f"DISTILLERY_IMAGE_{k}" not in images]
    if absent:
        missing.append(f"images not built ({', '.join(absent)} not in {images_env_path()}): run scripts/build-images.sh")
    if not (Path(__file__).resolve().parents[2] / "scripts" / "import-images.sh").is_file():
        missing.append("scripts/import-images.sh is missing")
    return "; ".join(missing) if missing else None


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealClusterHandle]:
    """A real single-node cluster; see the module docstring."""
    reason = _unavailable()
    if reason:
        message = f"the real node cannot run here: {reason}"
        if os.environ.get("DISTILLERY_REQUIRE_REAL_NODE") == "1":
            pytest.fail(f"DISTILLERY_REQUIRE_REAL_NODE=1 but {message}", pytrace=False)
        pytest.skip(message)
    from tests.chart.test_chart import find_helm

    cluster = RealCluster(tmp_path_factory.mktemp("real-cluster"))
    failure = None
    try:
        cluster.start()
    except NodeError as err:
        failure = str(err)
    if failure is not None:  # outside the except: the report shows the log tail, not a chained traceback
        pytest.fail(f"the real node did not start: {failure}", pytrace=False)
    try:
        yield RealClusterHandle(
            kubeconfig=cluster.kubeconfig, server=cluster.server, token=cluster.token,
            kubectl_bin=cluster.binaries["kubectl"], helm_bin=find_helm()[0], work_dir=cluster.work_dir,
            node_ip=cluster.node_ip, images=cluster.images, logs=cluster.logs, timings=cluster.timings,
        )  # fmt: skip
    finally:
        cluster.stop()
        print("\nreal node timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in cluster.timings.items()))


# The report hook that lets teardowns see a failed test (rep_setup/rep_call), shared with tests/cluster.
pytest_runtest_makereport = cluster_conftest.pytest_runtest_makereport


@pytest.fixture
def real_namespace(real_cluster: RealClusterHandle, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (Pod Security restricted enforced), deleted after the test."""
    name = namespace_name(request.node.name)
    real_cluster.apply(restricted_namespace(name))
    # pods are refused until the serviceaccount controller has made `default`
    wait_for(lambda: real_cluster.get("serviceaccount", "default", name), what=f"the default ServiceAccount in {name}")
    try:
        yield name
    finally:
        failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
        if failed:
            pods = real_cluster.kubectl("get", "pods", "-n", name, "-o", "name", check=False).stdout.split()
            for pod in pods:
                print(f"===== {pod}\n{real_cluster.describe(pod.split('/', 1)[1], name)}")
            print(real_cluster.kubectl("get", "all,events", "-n", name, "-o", "wide", check=False).stdout)
            print(f"===== kubelet log tail\n{real_cluster.logs['kubelet'].read_text(errors='replace')[-4000:]}")
        real_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
