"""Fixtures for tests against a real Kubernetes control plane.

``control_plane`` (session) starts etcd + kube-apiserver + kube-controller-manager built by
``scripts/build-control-plane.sh`` (see controlplane.py), installs ``crds/*.yaml`` and starts the
test-only node agent (node_agent.py) that binds and runs pods as local processes. It skips when
the binaries are missing, unless DISTILLERY_REQUIRE_CONTROL_PLANE=1 (then it fails).

``namespace`` (per test) is a fresh namespace with Pod Security ``restricted`` enforced; when the
test fails, the output of its pods (as run by the agent) is printed in the teardown section.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.controlplane import (
    STARTUP_TIMEOUT_S,
    ControlPlane,
    ControlPlaneError,
    die_with_parent,
    find_binaries,
    stop_process,
    tail,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_NAME = "test-node"
NODE_GPUS = 1
WAIT_S = 120  # generous: the CI machine has 2 busy cores


def wait_for(check: Callable[[], Any], timeout: float = WAIT_S, interval: float = 0.5, what: str = "condition",
             on_timeout: Callable[[], str] = lambda: ""):
    """Calls ``check`` until it returns something truthy and returns that; fails after ``timeout``
    (with what ``on_timeout`` returns, e.g. the logs that explain it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            details = on_timeout()
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{details}" if details else ""))
        time.sleep(interval)


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd[1:]))} exited with {self.returncode}:\n{self.stderr}{self.stdout}"


@dataclass
class Cluster:
    """What the tests get: where the API server is, how to log in, and helpers."""

    kubeconfig: Path  # admin kubeconfig (token in system:masters, the API server's CA embedded)
    server: str  # https://127.0.0.1:PORT
    token: str  # admin bearer token
    kubectl_bin: Path
    agent_log_dir: Path  # <namespace>_<pod>_<container>.log per pod container; node-agent.log
    work_dir: Path
    logs: dict[str, Path] = field(default_factory=dict)  # process name -> log file
    node: str = NODE_NAME

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = WAIT_S) -> subprocess.CompletedProcess:
        cmd = [str(self.kubectl_bin), "--kubeconfig", str(self.kubeconfig),
               "--cache-dir", str(self.work_dir / "kube-cache"), *map(str, args)]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def api_client(self):
        """A new kubernetes.client.ApiClient logged in as admin.

        Note (client 37): ``patch_*`` picks ``application/json-patch+json`` for a dict body;
        pass ``_content_type="application/merge-patch+json"`` (or strategic-merge) yourself."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ + KUBECONFIG: for starting a client (e.g. the operator) as a subprocess."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), **extra}

    def pod_logs(self, namespace: str | None = None) -> str:
        """Everything the agent's pods printed (optionally only one namespace's), file by file."""
        files = sorted(self.agent_log_dir.glob(f"{namespace}_*.log" if namespace else "*_*_*.log"))
        return "\n".join(f"----- {f.name}\n{tail(f, 20000)}" for f in files)

    wait_for = staticmethod(wait_for)


def _start_agent(cp: ControlPlane, log_dir: Path, work_dir: Path) -> subprocess.Popen:
    venv_bin = str(Path(sys.executable).parent)  # so distillery-trainer & co. resolve to this venv
    env = {
        **os.environ,
        "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "/usr/bin:/bin")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    }
    with (log_dir / "node-agent.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.cluster.node_agent", "--kubeconfig", str(cp.kubeconfig),
             "--node", NODE_NAME, "--gpus", str(NODE_GPUS), "--log-dir", str(log_dir), "--work-dir", str(work_dir)],
            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip


def _node_ready(cluster: Cluster, agent: subprocess.Popen) -> bool:
    if agent.poll() is not None:
        raise AssertionError(f"node agent exited with {agent.returncode}:\n{tail(cluster.logs['node-agent'])}")
    result = cluster.kubectl("get", "node", NODE_NAME, "-o",
                             "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
    return result.stdout.strip() == "True"


def require_binaries() -> dict:
    """The control-plane binaries; skips the test when they are not built (fails under
    DISTILLERY_REQUIRE_CONTROL_PLANE=1, where the build was expected to succeed)."""
    binaries, missing = find_binaries()
    if missing:
        reason = "control plane not built: run scripts/build-control-plane.sh (missing: " + "; ".join(missing) + ")"
        if os.environ.get("DISTILLERY_REQUIRE_CONTROL_PLANE") == "1":
            pytest.fail(f"DISTILLERY_REQUIRE_CONTROL_PLANE=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return binaries


def bring_up(cp: ControlPlane, binaries: dict) -> tuple[Cluster, subprocess.Popen]:
    """On a started control plane: install the CRDs, start the node agent, wait for its node.
    The caller stops the agent (stop_process) and the control plane."""
    log_dir = cp.work_dir / "pod-logs"
    log_dir.mkdir()
    cluster = Cluster(kubeconfig=cp.kubeconfig, server=cp.server, token=cp.token,
                      kubectl_bin=binaries["kubectl"], agent_log_dir=log_dir, work_dir=cp.work_dir,
                      logs={**cp.logs, "node-agent": log_dir / "node-agent.log"})
    crds = REPO_ROOT / "crds"
    cluster.kubectl("apply", "--server-side", "-f", crds)
    cluster.kubectl("wait", "--for", "condition=Established", f"--timeout={WAIT_S}s", "-f", crds,
                    timeout=WAIT_S + 30)
    agent = _start_agent(cp, log_dir, cp.work_dir / "pods")
    try:
        wait_for(lambda: _node_ready(cluster, agent), timeout=STARTUP_TIMEOUT_S, what=f"node {NODE_NAME} Ready")
    except BaseException:
        stop_process(agent)
        raise
    return cluster, agent


def start_control_plane(kind: type[ControlPlane], root: Path, binaries) -> ControlPlane:
    """A started control plane of class `kind` under `root`; the test fails if two tries fail."""
    failures = []
    for attempt in range(2):  # a free port can be taken before a server binds it; retry once
        cp = kind(work_dir=root / f"attempt{attempt}", binaries=binaries)
        try:
            cp.start()
            return cp
        except ControlPlaneError as err:
            failures.append(f"attempt {attempt + 1}: {err}")
    pytest.fail("control plane did not start:\n" + "\n".join(failures), pytrace=False)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real control plane with the CRDs installed and the test node agent running."""
    binaries = require_binaries()
    cp = start_control_plane(ControlPlane, tmp_path_factory.mktemp("control-plane"), binaries)
    agent = None
    try:
        cluster, agent = bring_up(cp, binaries)
        yield cluster
    finally:
        if agent is not None:
            stop_process(agent)
        cp.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def namespace_name(test_name: str) -> str:
    """A unique, valid namespace name that says which test made it."""
    base = re.sub(r"[^a-z0-9]+", "-", test_name.lower().removeprefix("test_")).strip("-")[:40].strip("-")
    return f"{base or 'test'}-{secrets.token_hex(3)}"


def restricted_namespace(name: str) -> dict:
    """A Namespace where Pod Security "restricted" is enforced (and warned and audited)."""
    labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
    labels["pod-security.kubernetes.io/enforce-version"] = "latest"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


@pytest.fixture
def namespace(control_plane: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (Pod Security restricted enforced), deleted after the test."""
    name = namespace_name(request.node.name)
    control_plane.kubectl("create", "-f", "-", input=json.dumps(restricted_namespace(name)))
    # pods are refused until the serviceaccount controller has made `default`
    wait_for(lambda: control_plane.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
             what=f"the default ServiceAccount in {name}")
    try:
        yield name
    finally:
        failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
        if failed:
            print(f"===== pods of namespace {name} (as run by the test node agent)")
            print(control_plane.pod_logs(name) or "(none)")
            print(control_plane.kubectl("get", "all,events", "-n", name, "-o", "wide", check=False).stdout)
            print(f"===== node agent log tail\n{tail(control_plane.logs['node-agent'], 4000)}")
        control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


from tests.chart.test_chart import helm  # noqa: E402, F401 - the helm fixture, shared with tests/chart
