"""TEST-ONLY node agent: a fake scheduler + kubelet for the integration-test control plane.

Nothing here is meant for a real cluster. The control plane in ``controlplane.py`` is real
(etcd, kube-apiserver, kube-controller-manager), but there is no container runtime, so this agent
stands in for the two node-side parts:

* scheduler (faked): every pending pod without ``spec.nodeName`` and without scheduling gates is
  bound to the one Node (``pods/binding``) if its ``nodeSelector`` matches the node's labels and
  its ``nvidia.com/gpu`` request fits the GPUs left; otherwise it gets ``PodScheduled=False``
  (``Unschedulable``) and stays Pending. No affinity, taints, cpu/memory fit or preemption.
* kubelet (faked): for each pod bound to the node, each container's ``command`` + ``args`` runs as
  a plain local subprocess -- no image, no isolation, no securityContext, no volumes, no probes,
  no restarts (``restartPolicy`` is treated as ``Never``; init containers are refused). The
  command's first word is looked up on the agent's own PATH. The env is the agent's basics
  (PATH, PYTHONPATH, HOME, locale, thread counts, offline-hub switches) plus the pod's ``env`` /
  ``envFrom`` (``value``, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``; ``$(VAR)``
  expanded) plus ``DISTILLERY_TERMINATION_LOG`` = a file that stands in for
  ``terminationMessagePath``. The cwd is a fresh temp dir; stdout+stderr go to
  ``<log-dir>/<namespace>_<pod>_<container>.log``. The pod status is reported like a kubelet
  would: Running (podIP 127.0.0.1, Ready), then Succeeded/Failed with each container's
  ``terminated`` state (exit code, reason Completed/Error, message from the termination file or,
  with ``FallbackToLogsOnError`` and a failure, the last 80 log lines).
* deletion: when a pod gets a deletionTimestamp, its process group gets SIGTERM, then SIGKILL after
  the grace period (at most 30 s); the pod is marked Failed and deleted with grace period 0, like
  a kubelet finishing a deletion. A pod that vanishes gets its processes killed. Finalizers are
  left alone (the Job controller removes its own).
* the Node ``test-node`` is registered with allocatable cpu 16 / memory 64Gi / pods 110 /
  ``nvidia.com/gpu`` N, and its Ready condition gets a heartbeat every 10 s.

It polls the API server every 0.5 s (a quorum list of all pods: fine for tens of pods).

    python -m tests.cluster.node_agent --kubeconfig K [--node test-node] [--gpus 1] [--log-dir D]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("node-agent")

SMP = "application/strategic-merge-patch+json"
GPU = "nvidia.com/gpu"
POD_IP = "127.0.0.1"
MAX_GRACE_S = 30
MESSAGE_MAX_BYTES = 4096  # what a kubelet reads from terminationMessagePath
FALLBACK_LINES, FALLBACK_MAX_BYTES = 80, 2048  # FallbackToLogsOnError: last 80 lines / 2 KiB
PASS_ENV = (
    "PATH", "PYTHONPATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "VIRTUAL_ENV",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME",
)  # fmt: skip


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EnvError(Exception):
    """A container's env cannot be resolved yet (kubelet: CreateContainerConfigError)."""


# ------------------------------------------------------------------------------------------
# env resolution
# ------------------------------------------------------------------------------------------

_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known vars are replaced, ``$$`` is a literal ``$``."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


class EnvResolver:
    """Reads the Secrets/ConfigMaps a container's env refers to (from the pod's namespace)."""

    def __init__(self, core: client.CoreV1Api, pod: dict[str, Any]):
        self.core, self.pod = core, pod
        self.namespace = pod["metadata"]["namespace"]

    def _data(self, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        try:
            if kind == "Secret":
                obj = json.loads(self.core.read_namespaced_secret(name, self.namespace, _preload_content=False).data)
                return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()}
            obj = json.loads(self.core.read_namespaced_config_map(name, self.namespace, _preload_content=False).data)
            return dict(obj.get("data") or {})
        except ApiException as err:
            if err.status == 404:
                if optional:
                    return None
                raise EnvError(f'{kind.lower()} "{name}" not found') from None
            raise

    def _key(self, kind: str, ref: dict[str, Any]) -> str | None:
        optional = bool(ref.get("optional"))
        data = self._data(kind, ref["name"], optional)
        if data is None:
            return None
        if ref["key"] not in data:
            if optional:
                return None
            raise EnvError(f'couldn\'t find key {ref["key"]} in {kind} {self.namespace}/{ref["name"]}')
        return data[ref["key"]]

    def _field(self, path: str) -> str:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        fields = {
            "metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"], "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.podIP": POD_IP, "status.hostIP": POD_IP,
        }  # fmt: skip
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        if path not in fields:
            raise EnvError(f"test node agent: fieldRef {path} not supported")
        return fields[path]

    def resolve(self, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if key in source:
                    ref = source[key]
                    data = self._data(kind, ref["name"], bool(ref.get("optional"))) or {}
                    env.update({prefix + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            name, source = var["name"], var.get("valueFrom")
            if source is None:
                env[name] = expand(var.get("value", ""), env)
                continue
            if "secretKeyRef" in source:
                value = self._key("Secret", source["secretKeyRef"])
            elif "configMapKeyRef" in source:
                value = self._key("ConfigMap", source["configMapKeyRef"])
            elif "fieldRef" in source:
                value = self._field(source["fieldRef"]["fieldPath"])
            else:
                raise EnvError(f"test node agent: env {name}: {sorted(source)} not supported")
            if value is not None:
                env[name] = value
        return env


# ------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------


@dataclass
class ContainerRun:
    name: str
    image: str
    log_path: Path
    termination_path: Path
    fallback_to_logs: bool
    started_at: str = field(default_factory=now)
    proc: subprocess.Popen | None = None
    start_error: str = ""
    finished_at: str = ""

    @property
    def exit_code(self) -> int | None:
        if self.start_error:
            return 128
        return self.proc.poll() if self.proc else None

    def kill(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def message(self) -> str:
        if self.start_error:
            return self.start_error
        try:
            text = self.termination_path.read_bytes()[:MESSAGE_MAX_BYTES].decode("utf-8", "replace")
        except OSError:
            text = ""
        if not text and self.fallback_to_logs and self.exit_code != 0:
            try:
                lines = self.log_path.read_bytes().decode("utf-8", "replace").splitlines()
            except OSError:
                lines = []
            text = "\n".join(lines[-FALLBACK_LINES:])[-FALLBACK_MAX_BYTES:]
        return text

    def status(self) -> dict[str, Any]:
        base = {"name": self.name, "image": self.image, "imageID": "",
                "containerID": f"local://{self.proc.pid if self.proc else 0}", "restartCount": 0}
        code = self.exit_code
        if code is None:
            return {**base, "ready": True, "started": True, "state": {"running": {"startedAt": self.started_at}}}
        if code < 0:  # killed by a signal: report it the way a shell (and a kubelet) does
            code = 128 - code
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "startedAt": self.started_at, "finishedAt": self.finished_at or now()}
        if self.start_error:
            terminated["reason"] = "StartError"
        message = self.message()
        if message:
            terminated["message"] = message
        return {**base, "ready": False, "started": False, "state": {"terminated": terminated}}


@dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    start_time: str
    containers: list[ContainerRun]
    running_reported: bool = False
    deleting: bool = False
    kill_at: float | None = None  # when SIGKILL follows the SIGTERM

    def finished(self) -> bool:
        return all(c.exit_code is not None for c in self.containers)

    def terminate(self, grace: float) -> None:
        if not self.deleting:
            self.deleting = True
            self.kill_at = time.monotonic() + min(max(grace, 0), MAX_GRACE_S)
            for c in self.containers:
                c.kill(signal.SIGTERM)

    def kill_now(self) -> None:
        for c in self.containers:
            c.kill(signal.SIGKILL)
            if c.proc:
                c.proc.wait()

    def reap(self) -> None:
        """Records finish times; sends SIGKILL once the grace period is over."""
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            for c in self.containers:
                c.kill(signal.SIGKILL)
        for c in self.containers:
            if not c.finished_at and c.exit_code is not None:
                c.finished_at = now()


# ------------------------------------------------------------------------------------------
# the agent
# ------------------------------------------------------------------------------------------


class NodeAgent:
    def __init__(self, api_client: client.ApiClient, node: str = "test-node", gpus: int = 1,
                 log_dir: Path | str | None = None, work_dir: Path | str | None = None,
                 poll_interval: float = 0.5, heartbeat_interval: float = 10.0):
        self.core = client.CoreV1Api(api_client)
        self.node, self.gpus = node, gpus
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="node-agent-logs-"))
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="node-agent-pods-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.poll_interval, self.heartbeat_interval = poll_interval, heartbeat_interval
        self.labels = {"kubernetes.io/hostname": node, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "distillery.io/test-node": "true"}
        self.runs: dict[str, PodRun] = {}  # pod uid -> what runs for it
        self.done: set[str] = set()  # pod uids whose final status is reported
        self._said: dict[str, str] = {}  # pod uid -> last waiting/unschedulable message sent
        self._deleted_at: dict[str, float] = {}  # pod uid -> when we last sent the final delete
        self._last_heartbeat = 0.0
        self._ready_since = now()

    # -- main loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.register_node()
        try:
            while not stop.is_set():
                try:
                    self.step()
                except Exception:  # noqa: BLE001 - keep going; the API server may blip
                    log.exception("step failed")
                stop.wait(self.poll_interval)
        finally:
            self.shutdown()

    def step(self) -> None:
        if time.monotonic() - self._last_heartbeat >= self.heartbeat_interval:
            try:
                self.heartbeat()
            except ApiException as err:
                log.warning("node heartbeat failed: %s %s", err.status, err.reason)
        pods = json.loads(self.core.list_pod_for_all_namespaces(_preload_content=False).data)["items"]
        seen = {p["metadata"]["uid"] for p in pods}
        for uid in [u for u in self.runs if u not in seen]:  # gone from the API: kill, forget
            run = self.runs.pop(uid)
            log.info("pod %s/%s vanished: killing its processes", run.namespace, run.name)
            run.kill_now()
        gpus_used = sum(self._gpus(p) for p in pods if p["spec"].get("nodeName") == self.node
                        and p.get("status", {}).get("phase") not in ("Succeeded", "Failed"))
        for pod in pods:
            try:
                if pod["spec"].get("nodeName") == self.node:
                    self.sync(pod)
                elif not pod["spec"].get("nodeName"):
                    gpus_used += self.schedule(pod, self.gpus - gpus_used)
            except ApiException as err:
                if err.status not in (404, 409):
                    log.warning("pod %s/%s: %s %s", pod["metadata"]["namespace"], pod["metadata"]["name"],
                                err.status, err.reason)
        for run in list(self.runs.values()):
            run.reap()
            if run.finished():
                self.report_finished(run)

    def shutdown(self) -> None:
        for run in self.runs.values():
            run.terminate(0)
            run.kill_now()
        self.runs.clear()

    # -- node ---------------------------------------------------------------------------------

    def register_node(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node, "labels": self.labels}}
        try:
            self.core.create_node(body, _preload_content=False)
        except ApiException as err:
            if err.status != 409:
                raise
        resources = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi", GPU: str(self.gpus)}
        status = {
            "capacity": resources, "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": POD_IP}, {"type": "Hostname", "address": self.node}],
            "nodeInfo": {"kubeletVersion": "test-node-agent", "operatingSystem": "linux", "architecture": "amd64",
                         "containerRuntimeVersion": "local-process://0", "osImage": "test", "kernelVersion": "",
                         "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""},
        }  # fmt: skip
        self.core.patch_node_status(self.node, {"status": status}, _content_type=SMP, _preload_content=False)
        self.heartbeat()
        log.info("node %s registered (%d GPUs)", self.node, self.gpus)

    def heartbeat(self) -> None:
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "test node agent is posting ready status",
                 "lastHeartbeatTime": now(), "lastTransitionTime": self._ready_since}
        self.core.patch_node_status(self.node, {"status": {"conditions": [ready]}},
                                    _content_type=SMP, _preload_content=False)
        self._last_heartbeat = time.monotonic()

    # -- scheduling ---------------------------------------------------------------------------

    @staticmethod
    def _gpus(pod: dict[str, Any]) -> int:
        total = 0
        for c in pod["spec"].get("containers", []):
            res = c.get("resources") or {}
            total += max(int((res.get(k) or {}).get(GPU, 0)) for k in ("requests", "limits"))
        return total

    def schedule(self, pod: dict[str, Any], gpus_free: int) -> int:
        """Binds a pending pod if it fits; returns the GPUs it took."""
        meta, spec = pod["metadata"], pod["spec"]
        if meta.get("deletionTimestamp") or spec.get("schedulingGates") or pod["status"].get("phase") != "Pending":
            return 0
        why = ""
        if any(self.labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
            why = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        elif self._gpus(pod) > gpus_free:
            why = f"0/1 nodes are available: 1 Insufficient {GPU}."
        if why:
            if self._said.get(meta["uid"]) != why:
                condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                             "message": why, "lastTransitionTime": now()}
                self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"],
                                                      {"status": {"conditions": [condition]}},
                                                      _content_type=SMP, _preload_content=False)
                self._said[meta["uid"]] = why
            return 0
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"], "uid": meta["uid"]},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}}
        # _preload_content=False: the client cannot deserialize the Status this returns.
        self.core.create_namespaced_pod_binding(meta["name"], meta["namespace"], binding, _preload_content=False)
        log.info("bound pod %s/%s", meta["namespace"], meta["name"])
        return self._gpus(pod)

    # -- kubelet ------------------------------------------------------------------------------

    def sync(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid, phase = meta["uid"], pod["status"].get("phase")
        run = self.runs.get(uid)
        if meta.get("deletionTimestamp"):
            if run is not None:
                run.terminate(meta.get("deletionGracePeriodSeconds") or 0)
            else:
                self.finish_deletion(pod)
            return
        if run is not None or uid in self.done or phase in ("Succeeded", "Failed"):
            if run is not None and not run.running_reported:
                self.report_running(run)
            return
        if phase == "Running":  # running before this agent started: the process is lost
            self.patch_status(pod, {"phase": "Failed", "reason": "NodeAgentRestarted",
                                    "message": "the test node agent lost this pod's process"})
            self.done.add(uid)
            return
        self.start(pod)

    def start(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        if spec.get("initContainers"):
            self.patch_status(pod, {"phase": "Failed", "reason": "Unsupported",
                                    "message": "test node agent: initContainers are not supported"})
            self.done.add(meta["uid"])
            return
        try:
            resolver = EnvResolver(self.core, pod)
            envs = [resolver.resolve(c) for c in spec["containers"]]
        except EnvError as err:  # like a kubelet: stay Pending, say why, retry later
            self._report_waiting(pod, str(err))
            return
        run = PodRun(uid=meta["uid"], namespace=meta["namespace"], name=meta["name"], start_time=now(),
                     containers=[self._spawn(pod, c, env) for c, env in zip(spec["containers"], envs, strict=True)])
        self.runs[run.uid] = run
        log.info("started pod %s/%s", run.namespace, run.name)
        if not run.finished():
            self.report_running(run)

    def _spawn(self, pod: dict[str, Any], container: dict[str, Any], pod_env: dict[str, str]) -> ContainerRun:
        meta = pod["metadata"]
        work = Path(tempfile.mkdtemp(prefix=f"{meta['name'][:40]}-{container['name']}-", dir=self.work_dir))
        run = ContainerRun(
            name=container["name"], image=container.get("image", ""),
            log_path=self.log_dir / f"{meta['namespace']}_{meta['name']}_{container['name']}.log",
            termination_path=work / "termination-log",
            fallback_to_logs=container.get("terminationMessagePolicy") == "FallbackToLogsOnError",
        )  # fmt: skip
        run.termination_path.touch()
        base = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        base.setdefault("HOME", str(work))
        env = {**base, **pod_env, "DISTILLERY_TERMINATION_LOG": str(run.termination_path)}
        argv = [expand(a, pod_env) for a in (container.get("command") or []) + (container.get("args") or [])]
        if not container.get("command"):
            run.start_error = "test node agent: the container needs an explicit command (images are not run)"
            return run
        argv[0] = shutil.which(argv[0], path=os.environ.get("PATH")) or argv[0]
        with run.log_path.open("ab") as out:
            try:
                run.proc = subprocess.Popen(argv, env=env, cwd=work, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as err:
                run.start_error = f"failed to start {argv[0]!r}: {err}"
                out.write(f"{run.start_error}\n".encode())
        return run

    # -- status reports -----------------------------------------------------------------------

    def patch_status(self, pod: dict[str, Any] | PodRun, status: dict[str, Any]) -> None:
        name, ns = (pod.name, pod.namespace) if isinstance(pod, PodRun) else (
            pod["metadata"]["name"], pod["metadata"]["namespace"])
        self.core.patch_namespaced_pod_status(name, ns, {"status": status}, _content_type=SMP, _preload_content=False)

    def _conditions(self, ready: bool, reason: str = "") -> list[dict[str, Any]]:
        t = now()
        out = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
               {"type": "Initialized", "status": "True", "lastTransitionTime": t}]
        for kind in ("ContainersReady", "Ready"):
            c = {"type": kind, "status": "True" if ready else "False", "lastTransitionTime": t}
            if reason:
                c["reason"] = reason
            out.append(c)
        return out

    def _report_waiting(self, pod: dict[str, Any], message: str) -> None:
        uid = pod["metadata"]["uid"]
        if self._said.get(uid) == message:
            return
        statuses = [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                     "restartCount": 0, "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}}}
                    for c in pod["spec"]["containers"]]
        self.patch_status(pod, {"containerStatuses": statuses, "hostIP": POD_IP})
        self._said[uid] = message
        log.info("pod %s/%s waits: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], message)

    def report_running(self, run: PodRun) -> None:
        try:
            self.patch_status(run, {
                "phase": "Running", "startTime": run.start_time, "conditions": self._conditions(True),
                "hostIP": POD_IP, "hostIPs": [{"ip": POD_IP}], "podIP": POD_IP, "podIPs": [{"ip": POD_IP}],
                "containerStatuses": [c.status() for c in run.containers],
            })  # fmt: skip
            run.running_reported = True
        except ApiException as err:
            log.warning("pod %s/%s: reporting Running failed: %s", run.namespace, run.name, err.status)

    def report_finished(self, run: PodRun) -> None:
        statuses = [c.status() for c in run.containers]
        ok = all(s["state"]["terminated"]["exitCode"] == 0 for s in statuses)
        try:
            self.patch_status(run, {
                "phase": "Succeeded" if ok else "Failed", "startTime": run.start_time,
                "conditions": self._conditions(False, "PodCompleted"),
                "hostIP": POD_IP, "hostIPs": [{"ip": POD_IP}], "podIP": POD_IP, "podIPs": [{"ip": POD_IP}],
                "containerStatuses": statuses,
            })  # fmt: skip
        except ApiException as err:
            if err.status != 404:
                log.warning("pod %s/%s: reporting the end failed (will retry): %s", run.namespace, run.name, err.status)
                return
        log.info("pod %s/%s finished: %s", run.namespace, run.name,
                 [s["state"]["terminated"]["exitCode"] for s in statuses])
        del self.runs[run.uid]
        self.done.add(run.uid)
        if run.deleting:
            self._delete(run.namespace, run.name, run.uid)

    def finish_deletion(self, pod: dict[str, Any]) -> None:
        """A pod with a deletionTimestamp and nothing running: mark it terminal, delete it for good."""
        meta = pod["metadata"]
        if pod["status"].get("phase") not in ("Succeeded", "Failed"):
            self.patch_status(pod, {"phase": "Failed", "reason": "Terminated",
                                    "message": "deleted before the test node agent ran it"})
        self._delete(meta["namespace"], meta["name"], meta["uid"])

    def _delete(self, namespace: str, name: str, uid: str) -> None:
        if time.monotonic() - self._deleted_at.get(uid, -1e9) < 10:  # once, then retry every 10 s
            return
        self._deleted_at[uid] = time.monotonic()
        try:
            # with a body, kube-apiserver ignores the query parameters: grace period goes in the body
            self.core.delete_namespaced_pod(name, namespace, body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
                                            _preload_content=False)
        except ApiException as err:
            if err.status not in (404, 409):
                raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TEST-ONLY fake scheduler + kubelet (runs pods as local processes)")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", default="test-node")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--log-dir", help="where each pod's output goes (default: a temp dir)")
    parser.add_argument("--work-dir", help="parent of the pods' working dirs (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    api = config.new_client_from_config(config_file=args.kubeconfig)
    NodeAgent(api, node=args.node, gpus=args.gpus, log_dir=args.log_dir, work_dir=args.work_dir).run(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
