"""The host side of the real test node: kernel settings before it starts, and the clean-up that
leaves the machine as it was after it stops (or after a crashed run).

Everything the node leaves behind lives under fixed paths (``NodePaths``), so a later run can
find and remove a crashed run's leftovers: pod containers (runc root), their shims (by their
containerd socket), mounts (kubelet volumes, container root filesystems, network namespaces),
the CNI bridge and its address allocations, kube-proxy's and the kubelet's iptables chains,
the kubelet's cgroups, and processes recorded in pid files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBE_CHAIN_PREFIX = "KUBE-"


class NodeHostError(RuntimeError):
    pass


@dataclass(frozen=True)
class NodePaths:
    """Where the node keeps its state. ``persistent`` survives runs (containerd's image store);
    ``runtime`` is per run and removed by ``clean``."""

    persistent: Path = Path("/var/lib/distillery")
    runtime: Path = Path("/run/distillery")
    bridge: str = "distillery0"

    @property
    def containerd_root(self) -> Path:  # images, snapshots, metadata: kept between runs
        return self.persistent / "containerd"

    @property
    def kubelet_root(self) -> Path:
        return self.persistent / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.persistent / "pod-logs"

    @property
    def containerd_state(self) -> Path:
        return self.runtime / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_state / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.runtime / "runc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.runtime / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.runtime / "cni" / "networks"

    @property
    def pid_dir(self) -> Path:
        return self.runtime / "pids"

    def mount_roots(self) -> list[Path]:
        """Under these, every mount is the node's (volumes, rootfs, shm, netns)."""
        return [self.kubelet_root, self.runtime, self.containerd_root]


def run(cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise NodeHostError(f"{' '.join(cmd)} exited with {result.returncode}: {result.stderr.strip()}")
    return result


# -- before the start ---------------------------------------------------------------------------

def write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name.replace(".", "/")
    try:
        if path.read_text().strip() != value:
            path.write_text(value)
    except OSError as err:
        raise NodeHostError(f"cannot set sysctl {name}={value}: {err}") from err


def prepare_kernel() -> None:
    """Pods on the bridge need forwarding, and Service DNAT needs bridged traffic in iptables."""
    if not Path("/proc/sys/net/bridge").is_dir():  # a module here; built into some kernels
        if shutil.which("modprobe") is None:
            raise NodeHostError("br_netfilter is not loaded and there is no modprobe to load it")
        run(["modprobe", "br_netfilter"])
    write_sysctl("net.ipv4.ip_forward", "1")
    write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
    write_sysctl("net.bridge.bridge-nf-call-ip6tables", "1")


# The kubelet sets these (vm.overcommit_memory=1, kernel.panic=10, ...) unless
# protectKernelDefaults, which would refuse to start here; we put the host's values back.
KUBELET_SYSCTLS = ["vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
                   "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes"]


def _sysctl_file(paths: NodePaths) -> Path:
    return paths.persistent / "host-sysctls.json"


def save_kubelet_sysctls(paths: NodePaths) -> None:
    values = {name: (Path("/proc/sys") / name.replace(".", "/")).read_text().strip() for name in KUBELET_SYSCTLS}
    paths.persistent.mkdir(parents=True, exist_ok=True)
    _sysctl_file(paths).write_text(json.dumps(values))


def restore_kubelet_sysctls(paths: NodePaths) -> None:
    saved = _sysctl_file(paths)
    if saved.is_file():
        for name, value in json.loads(saved.read_text()).items():
            write_sysctl(name, value)
        saved.unlink()


def default_route_address() -> str:
    """This machine's own address on the interface of the default route (the node IP)."""
    out = run(["ip", "-4", "-o", "route", "get", "1.1.1.1"]).stdout.split()
    if "src" not in out:
        raise NodeHostError(f"no default route with a source address here (ip route get: {' '.join(out)})")
    return out[out.index("src") + 1]


# -- processes ----------------------------------------------------------------------------------

def record_pid(paths: NodePaths, name: str, pid: int) -> None:
    paths.pid_dir.mkdir(parents=True, exist_ok=True)
    (paths.pid_dir / f"{name}.pid").write_text(str(pid))


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _kill_and_wait(pids: list[int], timeout: float = 10) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def kill_recorded(paths: NodePaths) -> None:
    """Ends processes a previous run recorded, if the pid still runs the same program."""
    if not paths.pid_dir.is_dir():
        return
    pids = []
    for pid_file in paths.pid_dir.glob("*.pid"):
        name = pid_file.stem
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text())
            argv0 = _cmdline(pid)[0] if _cmdline(pid) else ""
            if os.path.basename(argv0) == name:  # not a recycled pid
                pids.append(pid)
        pid_file.unlink(missing_ok=True)
    _kill_and_wait(pids)


def kill_shims(paths: NodePaths) -> None:
    """containerd's shims outlive it (they re-parent to init); ours name our socket."""
    socket = str(paths.containerd_socket)
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
            and any("containerd-shim" in arg for arg in _cmdline(int(p.name))[:1])
            and socket in _cmdline(int(p.name))]
    _kill_and_wait(pids)


def kill_containers(paths: NodePaths) -> None:
    """Kills and deletes every container runc knows under our runc root (one dir per namespace)."""
    if not paths.runc_root.is_dir():
        return
    for root in [p for p in paths.runc_root.iterdir() if p.is_dir()]:
        listing = run(["runc", "--root", str(root), "list", "-q"], check=False)
        for container in listing.stdout.split():
            run(["runc", "--root", str(root), "kill", "--all", container, "KILL"], check=False)
            run(["runc", "--root", str(root), "delete", "--force", container], check=False)


# -- mounts, network, iptables, cgroups ---------------------------------------------------------

def mounts_under(roots: list[Path]) -> list[str]:
    """Mount points below any of ``roots``, deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == str(r) or point.startswith(f"{r}/") for r in roots):
            found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all(roots: list[Path]) -> None:
    for point in mounts_under(roots):
        run(["umount", "--lazy", point], check=False)
    left = mounts_under(roots)
    if left:
        raise NodeHostError(f"mounts left under {', '.join(map(str, roots))} after umount: {left[:5]}")


def remove_tree(path: Path) -> None:
    """rm -rf, only once nothing is mounted below (never delete through a mount)."""
    if mounts_under([path]):
        raise NodeHostError(f"refusing to remove {path}: still has mounts {mounts_under([path])[:3]}")
    shutil.rmtree(path, ignore_errors=True)


def delete_bridge(name: str) -> None:
    if Path(f"/sys/class/net/{name}").exists():
        run(["ip", "link", "delete", name])


def remove_kube_chains(kube_proxy: Path | None) -> None:
    """kube-proxy --cleanup removes its chains; the kubelet's (KUBE-FIREWALL, canaries) go here."""
    if kube_proxy is not None and kube_proxy.is_file():
        run([str(kube_proxy), "--cleanup"], check=False, timeout=60)
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            rules = run([tool, "-t", table, "-S"], check=False).stdout.splitlines()
            for rule in rules:  # jumps from built-in chains into KUBE-* chains
                parts = shlex.split(rule)  # comments are quoted
                if parts[:1] == ["-A"] and not parts[1].startswith(KUBE_CHAIN_PREFIX) and \
                        any(p.startswith(KUBE_CHAIN_PREFIX) for p in parts[2:]):
                    run([tool, "-t", table, "-D", *parts[1:]], check=False)
            chains = [r.split()[1] for r in rules if r.startswith(f"-N {KUBE_CHAIN_PREFIX}")]
            for chain in chains:
                run([tool, "-t", table, "-F", chain], check=False)
            for chain in chains:
                run([tool, "-t", table, "-X", chain], check=False)


def remove_kubepods_cgroups() -> None:
    """The kubelet's cgroup tree (cgroupfs driver: <subsystem>/kubepods/...), deepest first."""
    if not CGROUP_ROOT.is_dir():
        return
    for subsystem in CGROUP_ROOT.iterdir():
        top = subsystem / "kubepods"
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for cgroup in [*dirs, top]:
            with contextlib.suppress(OSError):
                cgroup.rmdir()


def remove_container_log_links(pod_logs: Path) -> None:
    """The kubelet links /var/log/containers/*.log to the pod logs; drop links into ours."""
    links = Path("/var/log/containers")
    if links.is_dir():
        for link in links.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(f"{pod_logs}/"):
                    link.unlink()


def clean(paths: NodePaths, kube_proxy: Path | None) -> None:
    """Removes everything a run of the node (finished or crashed) left on the machine, except
    containerd's image store. Safe to call when there is nothing to clean."""
    kill_recorded(paths)
    kill_containers(paths)
    kill_shims(paths)
    unmount_all(paths.mount_roots())
    for path in (paths.kubelet_root, paths.pod_logs, paths.runtime):
        remove_tree(path)
    delete_bridge(paths.bridge)
    remove_kube_chains(kube_proxy)
    remove_kubepods_cgroups()
    remove_container_log_links(paths.pod_logs)
    restore_kubelet_sysctls(paths)
