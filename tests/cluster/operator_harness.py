"""Running the real operator (`distillery operator`) as a process against the test control plane."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """One operator watching one namespace; kill() and start() model crashes and restarts."""

    def __init__(self, kubeconfig: str, namespace: str, log_dir: Path, **env):
        self.kubeconfig, self.namespace, self.log_dir = kubeconfig, namespace, log_dir
        self.metrics_port = free_port()
        self.extra_env = {k: str(v) for k, v in env.items()}
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        self.starts += 1
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "DISTILLERY_POLL_INTERVAL_SECONDS": "1",
               "DISTILLERY_FRONTIER_RESYNC_SECONDS": "5",
               "DISTILLERY_METRICS_PORT": str(self.metrics_port),
               "DISTILLERY_TRAINER_IMAGE": "localhost/distillery-trainer:test", **self.extra_env}
        log = open(self.log_dir / f"operator-{self.namespace}-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distillery.cli", "operator", "--namespace", self.namespace, "--liveness", ""],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-6000:] for p in sorted(self.log_dir.glob(f"operator-{self.namespace}-*.log")))


def apply(control_plane, namespace: str, document: dict) -> None:
    # JSON, not YAML: kubectl's YAML 1.1 reads an unquoted `y` (our digits label field) as a boolean.
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document))


def get(control_plane, namespace: str, kind: str, name: str | None = None, selector: str | None = None) -> dict:
    args = ["get", kind, "-n", namespace, "-o", "json"]
    if name:
        args.insert(2, name)
    if selector:
        args += ["-l", selector]
    return json.loads(control_plane.kubectl(*args).stdout)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5, on_timeout=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    extra = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last={last!r}\n{extra}")


def condition(obj: dict, type_: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None
