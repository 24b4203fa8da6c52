"""A real Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager.

The binaries are the pinned builds from ``scripts/build-control-plane.sh`` (see tools/README.md
for the flags used here). Everything listens on free loopback ports and lives in one work
directory: etcd data, keys, the API server's self-signed serving certificate, an admin kubeconfig
and one log file per process. There is no kubelet and no scheduler: ``node_agent.py`` plays both.
``node.py`` starts it with ``advertise_address`` set (API server on 0.0.0.0, reachable from pods)
and the default controller set, for a real kubelet node.

    with ControlPlane() as cp:
        subprocess.run([cp.binaries["kubectl"], "--kubeconfig", cp.kubeconfig, "get", "ns"])
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

STARTUP_TIMEOUT_S = 120  # generous: the CI machine has 2 busy cores
STOP_TIMEOUT_S = 20

# name used in the code -> the variable in control-plane.env that holds its path
BINARY_VARS = {
    "etcd": "DISTILLERY_ETCD_BIN",
    "kube-apiserver": "DISTILLERY_KUBE_APISERVER_BIN",
    "kube-controller-manager": "DISTILLERY_KUBE_CONTROLLER_MANAGER_BIN",
    "kubectl": "DISTILLERY_KUBECTL_BIN",
}

CONTROLLERS = [
    "job-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "ttl-after-finished-controller",
    "root-ca-certificate-publisher-controller",
]  # pod-garbage-collector is left out: it would delete pods bound to the agent's node


class ControlPlaneError(RuntimeError):
    pass


def tools_dir() -> Path:
    return Path(os.environ.get("DISTILLERY_TOOLS_DIR") or Path.home() / ".cache/distillery/tools")


def find_binaries(variables: dict[str, str] = BINARY_VARS) -> tuple[dict[str, Path], list[str]]:
    """({name: path} of the binaries found, [what is missing]) for ``variables`` ({name: env var}).

    Each comes from its environment variable if set, else from control-plane.env."""
    from_file: dict[str, str] = {}
    env_file = tools_dir() / "control-plane.env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                from_file[key.strip()] = value.strip().strip("'\"")
    found, missing = {}, []
    for name, var in variables.items():
        value = os.environ.get(var) or from_file.get(var)
        if value and Path(value).is_file() and os.access(value, os.X_OK):
            found[name] = Path(value)
        else:
            missing.append(f"{name} ({var}={value or 'unset'}, looked in {env_file})")
    return found, missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if the test process dies (Linux), so nothing leaks."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """Terminate, then kill if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as err:
        return f"<no log: {err}>"


# Talk to the local servers directly even if the environment sets an HTTP proxy.
_NO_PROXY = urllib.request.build_opener(
    urllib.request.ProxyHandler({}),
    urllib.request.HTTPSHandler(context=ssl._create_unverified_context()),
)


def http_ok(url: str, token: str | None = None) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _NO_PROXY.open(request, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class ControlPlane:
    """Starts etcd, kube-apiserver and kube-controller-manager; ``stop()`` ends them all.

    Attributes once started: ``server`` (https URL), ``token`` (admin bearer token, group
    system:masters), ``kubeconfig`` (admin kubeconfig path), ``ca_file``, ``work_dir``,
    ``binaries`` and ``logs`` ({process name: log path}).

    Optional: ``extra_apiserver_args`` are appended to kube-apiserver's flags (e.g. audit
    logging); ``extra_tokens`` are more static token users, each ``(token, user, [groups])``.
    ``advertise_address`` (an address of this machine) makes the API server bind 0.0.0.0 and
    advertise that address, with the lease endpoint reconciler so the ``kubernetes`` Service
    points at it; ``server`` and every kubeconfig then use it (the self-signed serving
    certificate names it). ``controllers`` and ``authorization_modes`` replace the defaults
    (the node agent's controller subset, RBAC only).
    """

    def __init__(self, work_dir: Path | str | None = None, binaries: dict[str, Path] | None = None,
                 extra_apiserver_args: Sequence[str] = (),
                 extra_tokens: Sequence[tuple[str, str, Sequence[str]]] = (),
                 advertise_address: str | None = None,
                 controllers: Sequence[str] = tuple(CONTROLLERS),
                 authorization_modes: Sequence[str] = ("RBAC",)):
        if binaries is None:
            binaries, missing = find_binaries()
            if missing:
                raise ControlPlaneError("control plane binaries missing: " + "; ".join(missing))
        self.binaries = binaries
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="distillery-cp-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(16)
        self.server = ""
        self.kubeconfig = self.work_dir / "admin.kubeconfig"
        self.ca_file = self.work_dir / "apiserver-certs" / "apiserver.crt"
        self.logs: dict[str, Path] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_tokens = [(token, user, list(groups)) for token, user, groups in extra_tokens]
        self.advertise_address = advertise_address
        self.controllers = list(controllers)
        self.authorization_modes = list(authorization_modes)

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            self._start_controller_manager()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for name in reversed(list(self._procs)):
            stop_process(self._procs.pop(name))
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- the three processes ------------------------------------------------------------------

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            "--name", "default", "--data-dir", str(self.work_dir / "etcd"), "--unsafe-no-fsync",
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer}",
        ])  # fmt: skip
        self._wait_until("etcd", lambda: http_ok(f"{self.etcd_url}/health"))

    def _start_apiserver(self) -> None:
        sa_key, sa_pub = self.work_dir / "sa.key", self.work_dir / "sa.pub"
        for cmd in (["openssl", "genrsa", "-out", str(sa_key), "2048"],
                    ["openssl", "rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub)]):
            subprocess.run(cmd, check=True, capture_output=True)
        tokens = self.work_dir / "tokens.csv"
        # a user without groups gets no 4th column (an empty one would be a group named "")
        tokens.write_text(f'{self.token},admin,admin-uid,"system:masters"\n' + "".join(
            f'{token},{user},{user}-uid' + (f',"{",".join(groups)}"' if groups else "") + "\n"
            for token, user, groups in self.extra_tokens))
        port = free_port()
        address = self.advertise_address or "127.0.0.1"
        self.server = f"https://{address}:{port}"
        self._spawn("kube-apiserver", [
            "--etcd-servers", self.etcd_url, "--cert-dir", str(self.ca_file.parent),
            "--secure-port", str(port), "--bind-address", "0.0.0.0" if self.advertise_address else "127.0.0.1",
            "--advertise-address", address, "--service-cluster-ip-range", "10.0.0.0/24",
            "--authorization-mode", ",".join(self.authorization_modes), "--token-auth-file", str(tokens),
            # a loopback address may not back the `kubernetes` Endpoints; a real one must
            "--endpoint-reconciler-type", "lease" if self.advertise_address else "none",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(sa_pub),
            "--service-account-signing-key-file", str(sa_key),
            *self.extra_apiserver_args,
        ])  # fmt: skip
        self._wait_until("kube-apiserver", lambda: http_ok(f"{self.server}/readyz", self.token))

    def _write_kubeconfig(self) -> None:
        self.write_kubeconfig(self.kubeconfig, self.token, user="admin")

    def write_kubeconfig(self, path: Path, token: str, user: str = "admin") -> Path:
        """A kubeconfig for ``server`` (CA embedded) that logs in with a bearer ``token``."""
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            "clusters:\n- name: test\n  cluster:\n"
            f"    server: {self.server}\n    certificate-authority-data: {ca}\n"
            f"users:\n- name: {user}\n  user:\n"
            f"    token: {token}\n"
            f"contexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\n"
            "    namespace: default\n"
            "current-context: test\n"
        )
        path.chmod(0o600)
        return path

    def _start_controller_manager(self) -> None:
        port = free_port()
        self._spawn("kube-controller-manager", [
            "--kubeconfig", str(self.kubeconfig), "--controllers", ",".join(self.controllers),
            "--service-account-private-key-file", str(self.work_dir / "sa.key"),
            "--root-ca-file", str(self.ca_file), "--use-service-account-credentials",
            "--leader-elect=false", "--secure-port", str(port), "--bind-address", "127.0.0.1",
        ])  # fmt: skip
        self._wait_until("kube-controller-manager", lambda: http_ok(f"https://127.0.0.1:{port}/healthz"))

    # -- helpers ------------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        log_path = self.work_dir / f"{name}.log"
        self.logs[name] = log_path
        with log_path.open("ab") as log:
            self._procs[name] = subprocess.Popen(
                [str(self.binaries[name]), *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.work_dir, preexec_fn=die_with_parent,
            )  # fmt: skip

    def _wait_until(self, name: str, ready, timeout: float = STARTUP_TIMEOUT_S) -> None:
        proc, deadline = self._procs[name], time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {proc.returncode} while starting; log tail:\n{tail(self.logs[name])}"
                )
            if ready():
                return
            time.sleep(0.5)
        raise ControlPlaneError(f"{name} not ready after {timeout:.0f} s; log tail:\n{tail(self.logs[name])}")
