"""The tests' real single-node cluster, kept running for a person to use (scripts/local-cluster.sh).

    python -m tests.cluster.local_cluster up      # start it in the background; prints KUBECONFIG
    python -m tests.cluster.local_cluster status  # is it running, and where is its kubeconfig
    python -m tests.cluster.local_cluster down    # stop it and remove every trace (as the tests do)

`up` starts a detached server process that runs ``RealCluster`` (tests/cluster/node.py) with the
images of images.env imported, writes ``<dir>/ready`` when the node is Ready, and stops the cluster
when it gets SIGTERM (`down`). Its components' logs stay in ``<dir>/cluster/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

DEFAULT_DIR = Path(os.environ.get("DISTILLERY_LOCAL_CLUSTER_DIR") or Path.home() / ".cache/distillery/local-cluster")
START_TIMEOUT_S = 1200  # a cold image import of the trainer takes minutes on 2 cores


def _paths(root: Path) -> dict[str, Path]:
    return {"pid": root / "server.pid", "ready": root / "ready", "failed": root / "failed",
            "log": root / "server.log", "kubeconfig": root / "cluster" / "cp" / "admin.kubeconfig"}


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _client_dirs() -> list[str]:
    """Where the built kubectl and helm are (scripts/build-control-plane.sh)."""
    from tests.chart.test_chart import find_helm
    from tests.cluster.controlplane import find_binaries

    found, _ = find_binaries()
    helm, _ = find_helm()
    return list(dict.fromkeys(str(p.parent) for p in (found.get("kubectl"), helm) if p is not None))


def serve(root: Path) -> int:
    """The detached server: start, report ready, wait for SIGTERM, stop."""
    from tests.cluster.node import RealCluster

    paths = _paths(root)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    shutil.rmtree(root / "cluster", ignore_errors=True)  # a fresh etcd: nothing of an earlier run is kept
    cluster = RealCluster(root / "cluster")
    try:
        cluster.start()
    except BaseException as err:  # the parent shows this to the person who ran `up`
        paths["failed"].write_text(f"{type(err).__name__}: {err}\n")
        return 1
    try:
        paths["ready"].write_text(f"{cluster.kubeconfig}\n")
        print(f"ready: KUBECONFIG={cluster.kubeconfig}; node {cluster.node_ip}; "
              f"timings {cluster.timings}", flush=True)
        while not stop.wait(1):
            pass
    finally:
        cluster.stop()
        paths["ready"].unlink(missing_ok=True)
        print("stopped", flush=True)
    return 0


def up(root: Path) -> int:
    paths = _paths(root)
    if _alive(paths["pid"]):
        print(f"already running: export KUBECONFIG={paths['kubeconfig']}")
        return 0
    root.mkdir(parents=True, exist_ok=True)
    for name in ("ready", "failed"):
        paths[name].unlink(missing_ok=True)
    repo = Path(__file__).resolve().parents[2]
    with paths["log"].open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.cluster.local_cluster", "serve", "--dir", str(root)],
                                cwd=repo, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    paths["pid"].write_text(str(proc.pid))
    deadline = time.monotonic() + START_TIMEOUT_S
    print(f"starting the cluster (log: {paths['log']}) ...", flush=True)
    while time.monotonic() < deadline:
        if paths["ready"].exists():
            print(f"ready. Use it with:\n  export KUBECONFIG={paths['kubeconfig']}\n"
                  f"  export PATH={':'.join(_client_dirs())}:$PATH   # kubectl and helm")
            return 0
        if proc.poll() is not None:
            reason = paths["failed"].read_text() if paths["failed"].exists() else paths["log"].read_text()[-4000:]
            print(f"the cluster did not start:\n{reason}", file=sys.stderr)
            return 1
        time.sleep(1)
    print(f"not ready after {START_TIMEOUT_S} s; see {paths['log']}; stopping", file=sys.stderr)
    down(root)
    return 1


def down(root: Path) -> int:
    paths = _paths(root)
    pid = _alive(paths["pid"])
    if pid is None:
        print("not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    for _ in range(180):
        if _alive(paths["pid"]) is None:
            break
        time.sleep(1)
    else:
        print(f"the server {pid} did not stop in 180 s; see {paths['log']}", file=sys.stderr)
        return 1
    paths["pid"].unlink(missing_ok=True)
    print("stopped")
    return 0


def status(root: Path) -> int:
    paths = _paths(root)
    if _alive(paths["pid"]) and paths["ready"].exists():
        print(f"running: export KUBECONFIG={paths['kubeconfig']}")
        return 0
    print("not running" if not _alive(paths["pid"]) else f"starting (log: {paths['log']})")
    return 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local-cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "serve"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state and logs (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    return {"up": up, "down": down, "status": status, "serve": serve}[args.command](args.dir)


if __name__ == "__main__":
    sys.exit(main())
