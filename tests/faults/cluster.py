"""A control plane of the tests' own whose kube-apiserver a test may stop and start again.

It is separate from tests/cluster's session control plane so that restarting its API server
cannot disturb other tests; the node agent runs pods as local processes, as there.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.conftest import (
    Cluster,
    bring_up,
    namespace_name,
    require_binaries,
    restricted_namespace,
    start_control_plane,
    wait_for,
)
from tests.cluster.controlplane import ControlPlane, http_ok, stop_process


class RestartableControlPlane(ControlPlane):
    """Remembers how each process was started, so one can be stopped and started again as it
    was (same ports, certificates and etcd data)."""

    def _spawn(self, name: str, args: list[str]) -> None:
        self.__dict__.setdefault("_args", {})[name] = list(args)
        super()._spawn(name, args)

    def stop_component(self, name: str) -> None:
        stop_process(self._procs[name])

    def start_component(self, name: str) -> None:
        self._spawn(name, self._args[name])
        if name == "kube-apiserver":
            self._wait_until(name, lambda: http_ok(f"{self.server}/readyz", self.token))

    def running(self, name: str) -> bool:
        return self._procs[name].poll() is None


@dataclass
class FaultCluster:
    cluster: Cluster
    control_plane: RestartableControlPlane


def start_fault_cluster(root: Path) -> Iterator[FaultCluster]:
    binaries = require_binaries()
    cp = start_control_plane(RestartableControlPlane, root, binaries)
    agent = None
    try:
        cluster, agent = bring_up(cp, binaries)
        yield FaultCluster(cluster, cp)
    finally:
        if agent is not None:
            stop_process(agent)
        cp.stop()


def make_namespace(cluster: Cluster, test_name: str) -> str:
    name = namespace_name(test_name)
    cluster.kubectl("create", "-f", "-", input=json.dumps(restricted_namespace(name)))
    wait_for(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
             what=f"the default ServiceAccount in {name}")
    return name


def delete_namespace(cluster: Cluster, name: str) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
