"""A real single-node Kubernetes cluster for the end-to-end tests.

``RealCluster`` starts, in one work directory with one log file per component:

- the control plane of ``controlplane.py`` with its API server on 0.0.0.0, advertising this
  machine's own address (pods reach it through the ``kubernetes`` Service), the default
  controller set and Node+RBAC authorization;
- our own containerd 1.6 (CRI, runc with cgroupfs, the CNI bridge plugin), its image store kept
  under /var/lib/distillery/containerd between runs; images go in with
  ``scripts/import-images.sh <socket>`` before the kubelet starts;
- kube-scheduler, the kubelet, kube-proxy (iptables) and CoreDNS (a host process on the node
  address, port 53, serving cluster.local from the API server);

and waits until the node is Ready, the ``kubernetes`` Service answers through kube-proxy's rules
and CoreDNS resolves it. ``stop()`` (and ``start()``, first) removes every trace of a run: see
``node_host.clean``. Needs root, containerd, runc and the CNI plugins.

    with RealCluster(work_dir) as cluster:
        subprocess.run([cluster.binaries["kubectl"], "--kubeconfig", cluster.kubeconfig, "get", "nodes"])
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.cluster import node_host
from tests.cluster.controlplane import (
    BINARY_VARS,
    ControlPlane,
    ControlPlaneError,
    die_with_parent,
    find_binaries,
    free_port,
    http_ok,
    stop_process,
    tail,
)
from tests.cluster.dns_probe import query_a

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_NAME = "distillery-node"
POD_CIDR = "10.88.0.0/16"
KUBERNETES_SERVICE_IP = "10.0.0.1"  # first address of the control plane's 10.0.0.0/24
CLUSTER_DOMAIN = "cluster.local"
NODE_READY_TIMEOUT_S = 180  # generous: 2 busy cores
COMPONENT_TIMEOUT_S = 120

NODE_BINARY_VARS = {
    **BINARY_VARS,
    "kube-scheduler": "DISTILLERY_KUBE_SCHEDULER_BIN",
    "kubelet": "DISTILLERY_KUBELET_BIN",
    "kube-proxy": "DISTILLERY_KUBE_PROXY_BIN",
    "coredns": "DISTILLERY_COREDNS_BIN",
}
HOST_COMMANDS = ["containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip", "umount", "openssl"]
CNI_PLUGINS = Path("/usr/lib/cni")
DEFAULT_PAUSE_IMAGE = "docker.io/distillery/pause:3.10"
PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


class NodeError(RuntimeError):
    """A node component failed; the message carries its log tail."""


def images_env_path() -> Path:
    """Where scripts/build-images.sh records the image refs (the path import-images.sh reads)."""
    return Path(os.environ.get("DISTILLERY_CACHE") or Path.home() / ".cache/distillery") / "images.env"


def read_images_env(path: Path | None = None) -> dict[str, str]:
    """KEY=VALUE lines of images.env (written by scripts/build-images.sh); {} if absent."""
    path = path or images_env_path()
    values = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                values[key.strip()] = value.strip().strip("'\"")
    return values


def missing_prerequisites() -> list[str]:
    """Why the real node cannot run on this machine ([] when it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("not root (the kubelet, containerd and iptables need root)")
    missing += [f"{cmd} not installed" for cmd in HOST_COMMANDS if shutil.which(cmd) is None]
    missing += [f"CNI plugin {p} missing in {CNI_PLUGINS}" for p in ("bridge", "host-local", "loopback")
                if not (CNI_PLUGINS / p).is_file()]
    _, absent = find_binaries(NODE_BINARY_VARS)
    missing += [f"binary {m}; run scripts/build-control-plane.sh" for m in absent]
    return missing


def import_with_script(socket: Path, containerd_root: Path, log_path: Path) -> None:
    """Imports the images of images.env into our containerd (the other half of build-images.sh)."""
    script = REPO_ROOT / "scripts" / "import-images.sh"
    if not script.is_file():
        raise NodeError(f"cannot import images: {script} is missing")
    # The script checks the free space where this containerd keeps its images.
    env = {**os.environ, "CONTAINERD_ROOT": str(containerd_root)}
    with log_path.open("ab") as log:
        result = subprocess.run(["bash", str(script), str(socket), str(images_env_path())], stdout=log,
                                stderr=subprocess.STDOUT, timeout=900, env=env)
    if result.returncode != 0:
        raise NodeError(f"{script} {socket} exited with {result.returncode}; log tail:\n{tail(log_path)}")


class RealCluster:
    """Starts the control plane and a real kubelet node; ``stop()`` removes them without trace.

    Attributes once started: ``node_ip``, ``server``, ``token`` and ``kubeconfig`` (admin),
    ``binaries``, ``logs`` ({component: log path}), ``images`` (images.env), ``pause_image``,
    ``dns_ip`` (CoreDNS, the node address), ``timings`` ({phase: seconds}).
    """

    def __init__(self, work_dir: Path | str, binaries: dict[str, Path] | None = None,
                 paths: node_host.NodePaths | None = None,
                 import_images: Callable[[Path, Path, Path], None] = import_with_script):
        if binaries is None:
            binaries, missing = find_binaries(NODE_BINARY_VARS)
            if missing:
                raise NodeError("node binaries missing: " + "; ".join(missing))
        self.binaries = binaries
        self.work_dir = Path(work_dir)
        self.paths = paths or node_host.NodePaths()
        self.import_images = import_images
        self.images = read_images_env()
        self.pause_image = self.images.get("DISTILLERY_IMAGE_PAUSE", DEFAULT_PAUSE_IMAGE)
        self.node_ip = ""
        self.dns_ip = ""
        self.cp: ControlPlane | None = None
        self.logs: dict[str, Path] = {}
        self.timings: dict[str, float] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._tokens = {user: secrets.token_hex(16) for user in
                        ("kubelet", "kube-proxy", "kube-scheduler", "coredns")}

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> RealCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def server(self) -> str:
        return self.cp.server if self.cp else ""

    @property
    def token(self) -> str:
        return self.cp.token if self.cp else ""

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig, at a path that does not depend on the control plane's attempt."""
        return self.work_dir / "cp" / "admin.kubeconfig"

    def start(self) -> None:
        begin = time.monotonic()
        try:
            self._clean_host()
            self.timings["clean-before"] = time.monotonic() - begin
            self.work_dir.mkdir(parents=True, exist_ok=True)
            node_host.prepare_kernel()
            node_host.save_kubelet_sysctls(self.paths)
            self.node_ip = self.dns_ip = node_host.default_route_address()
            self._phase("control-plane", self._start_control_plane)
            self._phase("containerd", self._start_containerd)
            self.logs["import-images"] = self.work_dir / "import-images.log"
            self._phase("import-images", lambda: self.import_images(
                self.paths.containerd_socket, self.paths.containerd_root, self.logs["import-images"]))
            self._phase("prune-images", self._prune_stale_images)
            self._phase("kube-scheduler", self._start_scheduler)
            self._phase("kubelet", self._start_kubelet)
            self._phase("kube-proxy", self._start_kube_proxy)
            self._phase("coredns", self._start_coredns)
            self.timings["start"] = time.monotonic() - begin
        except node_host.NodeHostError as err:
            self.stop()
            raise NodeError(f"cannot prepare this machine for the node: {err}") from err
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        begin = time.monotonic()
        try:
            for name in ("coredns", "kube-proxy", "kube-scheduler", "kubelet"):
                if name in self._procs:
                    stop_process(self._procs.pop(name))
            if "containerd" in self._procs:
                self._remove_containers()  # shims exit with their tasks
                stop_process(self._procs.pop("containerd"))
            self._clean_host()
        finally:
            if self.cp is not None:
                self.cp.stop()
            self.timings["stop"] = time.monotonic() - begin

    def _phase(self, name: str, step: Callable[[], None]) -> None:
        begin = time.monotonic()
        step()
        self.timings[name] = time.monotonic() - begin

    def _clean_host(self) -> None:
        try:
            node_host.clean(self.paths, self.binaries.get("kube-proxy"))
        except (node_host.NodeHostError, OSError, subprocess.SubprocessError) as err:
            raise NodeError(f"cannot clean the previous node's leftovers: {err}") from err

    # -- control plane ------------------------------------------------------------------------

    def _start_control_plane(self) -> None:
        cp_dir = self.work_dir / "cp"
        client_cert, client_key = self._kubelet_client_cert(cp_dir)
        tokens = [
            (self._tokens["kubelet"], f"system:node:{NODE_NAME}", ["system:nodes"]),
            (self._tokens["kube-proxy"], "system:kube-proxy", []),
            (self._tokens["kube-scheduler"], "system:kube-scheduler", []),
            (self._tokens["coredns"], "system:coredns", []),
        ]
        failures = []
        for attempt in range(2):  # a free port can be taken before a server binds it; retry once
            self.cp = ControlPlane(
                work_dir=cp_dir / f"attempt{attempt}", binaries=self.binaries, extra_tokens=tokens,
                advertise_address=self.node_ip, controllers=["*"], authorization_modes=["Node", "RBAC"],
                extra_apiserver_args=[
                    "--enable-admission-plugins", "NodeRestriction",
                    "--kubelet-client-certificate", str(client_cert), "--kubelet-client-key", str(client_key),
                    "--kubelet-preferred-address-types", "InternalIP,Hostname",
                ],
            )  # fmt: skip
            try:
                self.cp.start()
                break
            except ControlPlaneError as err:
                failures.append(f"attempt {attempt + 1}: {err}")
        else:
            self.cp = None
            raise NodeError("control plane did not start:\n" + "\n".join(failures))
        self.logs.update(self.cp.logs)
        self.cp.write_kubeconfig(self.kubeconfig, self.cp.token)
        self._kubectl_apply(COREDNS_RBAC)

    def _kubelet_client_cert(self, cp_dir: Path) -> tuple[Path, Path]:
        """A CA the kubelet trusts and a client certificate (system:masters) the API server
        presents to it for logs/exec; the kubelet checks it by webhook authorization."""
        pki = cp_dir / "kubelet-pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca_key, ca_crt = pki / "ca.key", pki / "ca.crt"
        key, csr, crt = pki / "apiserver-client.key", pki / "apiserver-client.csr", pki / "apiserver-client.crt"
        for cmd in (
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca_crt,
             "-days", "7", "-subj", "/CN=distillery-kubelet-client-ca"],
            ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client"],
            ["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
             "-out", crt, "-days", "7"],
        ):  # fmt: skip
            result = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
            if result.returncode != 0:
                raise NodeError(f"openssl failed making the kubelet client certificate: {result.stderr}")
        self.kubelet_client_ca = ca_crt
        return crt, key

    def _kubeconfig_for(self, user: str) -> Path:
        return self.cp.write_kubeconfig(self.work_dir / f"{user}.kubeconfig", self._tokens[user], user=user)

    def _kubectl_apply(self, manifest: str) -> None:
        result = subprocess.run(
            [str(self.binaries["kubectl"]), "--kubeconfig", str(self.kubeconfig), "apply", "-f", "-"],
            input=manifest, capture_output=True, text=True, timeout=60, env=self._env())
        if result.returncode != 0:
            raise NodeError(f"kubectl apply failed: {result.stderr}")

    def api_get(self, path: str) -> dict | None:
        """GET on the API server as admin; None when it does not answer 200."""
        import ssl
        import urllib.request

        request = urllib.request.Request(f"{self.server}{path}", headers={"Authorization": f"Bearer {self.token}"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
        try:
            with opener.open(request, timeout=5) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None

    # -- containerd ---------------------------------------------------------------------------

    def _start_containerd(self) -> None:
        paths = self.paths
        for d in (paths.containerd_root, paths.containerd_state, paths.cni_conf_dir, paths.runc_root):
            d.mkdir(parents=True, exist_ok=True)
        (paths.cni_conf_dir / "10-distillery.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        config = self.work_dir / "containerd.toml"
        config.write_text(self._containerd_config())
        self._start_containerd_process(config)
        if self._remove_containers():  # a crashed run's pods: CRI loaded them; start it afresh
            stop_process(self._procs.pop("containerd"))
            self._start_containerd_process(config)

    def _start_containerd_process(self, config: Path) -> None:
        self._spawn("containerd", ["containerd", "--config", str(config)])
        self._wait("containerd", lambda: self._ctr("version", check=False).returncode == 0)

    def _containerd_config(self) -> str:
        p = self.paths
        return f"""version = 2
root = "{p.containerd_root}"
state = "{p.containerd_state}"

[grpc]
  address = "{p.containerd_socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.pause_image}"
  # processes here lack CAP_SYS_RESOURCE: lowering oom_score_adj (-998 for sandboxes) fails
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{p.runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_PLUGINS}"
    conf_dir = "{p.cni_conf_dir}"
    max_conf_num = 1
"""

    def _cni_config(self) -> dict:
        return {
            "cniVersion": "1.0.0",
            "name": "distillery",
            "plugins": [{
                "type": "bridge", "bridge": self.paths.bridge, "isGateway": True, "ipMasq": False,
                "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.paths.cni_ipam_dir)},
            }],
        }  # fmt: skip

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["ctr", "--address", str(self.paths.containerd_socket), "--namespace", "k8s.io",
                                 *args], capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def _remove_containers(self) -> bool:
        """Kills and deletes every container of the k8s.io namespace; True if there were any."""
        containers = self._ctr("containers", "list", "--quiet", check=False).stdout.split()
        for container in containers:
            self._ctr("tasks", "kill", "--all", "--signal", "SIGKILL", container, check=False)
        for container in containers:
            for _ in range(40):  # the kill is asynchronous: delete works once the task has stopped
                if container not in self._ctr("tasks", "list", "--quiet", check=False).stdout.split() or \
                        self._ctr("tasks", "delete", container, check=False).returncode == 0:
                    break
                time.sleep(0.25)
            self._ctr("containers", "delete", container, check=False)
        return bool(containers)

    def _prune_stale_images(self) -> None:
        """Removes images that images.env no longer names (an earlier build's, and the CRI's
        sha256:<id> alias of it): each trainer rebuild would otherwise keep ~13 GB here."""
        keep = {value for key, value in read_images_env().items() if key.startswith("DISTILLERY_IMAGE_")}
        stale = [ref for ref in self._ctr("images", "list", "--quiet").stdout.split() if ref not in keep]
        if stale:
            self._ctr("images", "remove", "--sync", *stale)  # --sync: collect their layers now

    # -- node components ----------------------------------------------------------------------

    def _start_scheduler(self) -> None:
        port = free_port()
        kubeconfig = self._kubeconfig_for("kube-scheduler")
        self._spawn("kube-scheduler", [
            str(self.binaries["kube-scheduler"]), "--kubeconfig", str(kubeconfig),
            "--authentication-kubeconfig", str(kubeconfig), "--authorization-kubeconfig", str(kubeconfig),
            "--leader-elect=false", "--secure-port", str(port), "--bind-address", "127.0.0.1",
        ])  # fmt: skip
        self._wait("kube-scheduler", lambda: http_ok(f"https://127.0.0.1:{port}/healthz"))

    def _start_kubelet(self) -> None:
        self.paths.kubelet_root.mkdir(parents=True, exist_ok=True)
        self.paths.pod_logs.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "kubelet-config.yaml"
        healthz = free_port()
        config.write_text(json.dumps(self._kubelet_config(healthz), indent=2))
        self._spawn("kubelet", [
            str(self.binaries["kubelet"]), "--config", str(config),
            "--kubeconfig", str(self._kubeconfig_for("kubelet")), "--root-dir", str(self.paths.kubelet_root),
            "--node-ip", self.node_ip, "--hostname-override", NODE_NAME,
        ])  # fmt: skip
        self._wait("kubelet", self._node_ready, timeout=NODE_READY_TIMEOUT_S)

    def _kubelet_config(self, healthz_port: int) -> dict:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.paths.containerd_socket}",
            "address": self.node_ip, "port": free_port(), "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
            "clusterDNS": [self.dns_ip], "clusterDomain": CLUSTER_DOMAIN,
            "podLogsDir": str(self.paths.pod_logs),
            # our images come from an import, never a registry: image GC must not remove them
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            # absolute floors: this disk reports far more size than it can hold, so percentages mislead
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "256Mi",
                             "imagefs.available": "256Mi", "nodefs.inodesFree": "1%"},
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.kubelet_client_ca)}},
            "authorization": {"mode": "Webhook"},
            "serializeImagePulls": False,
            "resolvConf": "/etc/resolv.conf",
        }  # fmt: skip

    def _node_ready(self) -> bool:
        node = self.api_get(f"/api/v1/nodes/{NODE_NAME}")
        conditions = (node or {}).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _start_kube_proxy(self) -> None:
        healthz, metrics = free_port(), free_port()
        self._spawn("kube-proxy", [
            str(self.binaries["kube-proxy"]), "--kubeconfig", str(self._kubeconfig_for("kube-proxy")),
            "--proxy-mode", "iptables", "--cluster-cidr", POD_CIDR, "--hostname-override", NODE_NAME,
            "--healthz-bind-address", f"127.0.0.1:{healthz}", "--metrics-bind-address", f"127.0.0.1:{metrics}",
            # leave the host's conntrack table settings alone
            "--conntrack-max-per-core", "0",
        ])  # fmt: skip
        # the host reaches the Service IP through kube-proxy's OUTPUT rules, like a pod would
        self._wait("kube-proxy", lambda: http_ok(f"https://{KUBERNETES_SERVICE_IP}:443/readyz", self.token))

    def _start_coredns(self) -> None:
        ready = free_port()
        corefile = self.work_dir / "Corefile"
        corefile.write_text(f""".:53 {{
    bind {self.dns_ip}
    errors
    log
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self._kubeconfig_for("coredns")} test
        pods insecure
    }}
}}
""")
        self._spawn("coredns", [str(self.binaries["coredns"]), "-conf", str(corefile)])
        self._wait("coredns", lambda: http_ok(f"http://127.0.0.1:{ready}/ready") and self._dns_answers())

    def _dns_answers(self) -> bool:
        with contextlib.suppress(OSError):
            return query_a(self.dns_ip, f"kubernetes.default.svc.{CLUSTER_DOMAIN}") == (0, [KUBERNETES_SERVICE_IP])
        return False

    # -- helpers ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        """Our environment without proxy settings: every address here is on this machine."""
        env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
        return env

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log_path = self.work_dir / f"{name}.log"
        self.logs[name] = log_path
        with log_path.open("ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.work_dir, env=self._env(), preexec_fn=die_with_parent)
        self._procs[name] = proc
        node_host.record_pid(self.paths, os.path.basename(cmd[0]), proc.pid)

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float = COMPONENT_TIMEOUT_S) -> None:
        proc, deadline = self._procs[name], time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise NodeError(f"{name} exited with {proc.returncode} while starting; log tail:\n{tail(self.logs[name])}")
            if ready():
                return
            time.sleep(0.5)
        raise NodeError(f"{name} not ready after {timeout:.0f} s; log tail:\n{tail(self.logs[name])}")


# CoreDNS's kubernetes plugin watches these (kubeadm's system:coredns role, same rules).
COREDNS_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
"""
