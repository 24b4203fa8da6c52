"""Operator scale benchmark (issue 5, item 4).

N DistillationJobs are applied at once (one ``kubectl apply -f`` of a List) to the real test
control plane (etcd + kube-apiserver + kube-controller-manager, tests/cluster/controlplane.py),
watched by the real operator (``distillery operator``, its own process), with the trainer
replaced by ``fake_trainer.py``: the test node agent (tests/cluster/node_agent.py) runs it as the
pod's process and it finishes at once with a recorded result.json. Measured per N, each with a
fresh control plane, namespace and operator process:

* time from t0 (just before ``kubectl apply``) until all N trainer Jobs exist, until all N
  trainer Jobs are Complete, and until all N DistillationJobs have a final phase;
* the operator's API requests, from the kube-apiserver audit log: the operator logs in as its
  own static-token user ``distillery-operator`` (group system:masters) and the audit policy logs
  that user only, at level Metadata; split by verb and resource, per job, watches apart;
* the operator's peak RSS (VmHWM of its process) and CPU time; CPU of the other processes.

Run from the repository root (the control plane must be built: scripts/build-control-plane.sh):

    python -m benchmarks.operator_scale.run                 # N = 50 and 200 -> benchmarks/results/operator-scale.{md,json}
    python -m benchmarks.operator_scale.run --quick         # N = 50 only  -> benchmarks/operator_scale/results/operator-scale-quick.{md,json}
    python -m benchmarks.operator_scale.run --jobs 3 --out /tmp/x --metrics jitter

``--metrics jitter`` gives each student slightly different accuracy/latency (see fake_trainer.py)
so that the registry's frontier changes as students arrive; the default replays the recorded
result unchanged (all students equal). After the last job is final, ``--idle S`` (default 65)
more seconds measure what the idle operator keeps requesting (timers, resyncs).
``--hold-pods`` pauses the node agent (SIGSTOP) from t0 until all N trainer Jobs exist, then lets
it go (SIGCONT): the fake trainers are local processes on the same 2 cores as the control plane,
and 200 of them starting while the Jobs are being created take most of the CPU (about 0.5 CPU-s
each); in a cluster they run on the GPU nodes. Held, "all Jobs exist" measures the control plane
and the operator alone; the Job controller still creates every pod meanwhile.
``--kopf-max-workers N`` is a what-if: the same operator with kopf's thread pool resized (see
operator_launcher.py). The operator runs with its own defaults (poll interval 5 s, frontier
resync 60 s), not the faster ones tests/cluster/operator_harness.py sets for tests. Results of
the variants and the findings live in benchmarks/operator_scale/results/ and findings.md;
``--render JSON --notes findings.md`` re-renders a result's Markdown with the findings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
FAKE_TRAINER = HERE / "fake_trainer.py"
LAUNCHER = HERE / "operator_launcher.py"
OPERATOR_USER = "distillery-operator"
GROUP, VERSION = "distillery.io", "v1alpha1"
FINAL = ("Succeeded", "Failed")

AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  users: ["{OPERATOR_USER}"]
- level: None
"""


def log(message: str) -> None:
    print(f"[operator-scale] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    import kopf  # noqa: F401

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "kopf": version("kopf"),
        "kubernetes_client": version("kubernetes"),
    }


# ----------------------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in KiB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def proc_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process itself and of its reaped children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    # after ")" : state(0) ... utime(11) stime(12) cutime(13) cstime(14)
    return {"self_s": round((int(fields[11]) + int(fields[12])) / tick, 2),
            "children_s": round((int(fields[13]) + int(fields[14])) / tick, 2)}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


# ----------------------------------------------------------------------------- audit log


def audit_requests(path: Path, user: str = OPERATOR_USER) -> list[dict[str, Any]]:
    """One record per request (unique auditID) of ``user``: verb, resource, code, times."""
    by_id: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return []
    with path.open() as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written
            if (event.get("user") or {}).get("username") != user:
                continue
            ref = event.get("objectRef") or {}
            if ref.get("resource"):
                resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            else:
                resource = "(non-resource) " + event.get("requestURI", "").split("?")[0]
            rec = by_id.setdefault(event["auditID"], {
                "verb": event.get("verb"), "resource": resource,
                "received": datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")),
                "code": None, "stage": None})
            rec["stage"] = event.get("stage")
            rec["code"] = (event.get("responseStatus") or {}).get("code", rec["code"])
    return list(by_id.values())


def summarize_requests(records: list[dict[str, Any]], n: int) -> dict[str, Any]:
    by_kind = Counter(f"{r['verb']} {r['resource']}" for r in records)
    codes = Counter(f"{r['verb']} {r['resource']} -> {r['code']}" for r in records
                    if r["code"] is not None and not 200 <= r["code"] < 300)
    watches = sum(c for k, c in by_kind.items() if k.startswith("watch "))
    total = sum(by_kind.values())
    return {
        "total": total,
        "watch": watches,
        "non_watch": total - watches,
        "non_watch_per_job": round((total - watches) / n, 2) if n else None,
        "by_verb_resource": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "per_job_by_verb_resource": {k: round(v / n, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])
                                     if not k.startswith("watch ")} if n else {},
        "non_2xx": dict(codes),
    }


# ----------------------------------------------------------------------------- metrics scrape


def scrape(url: str, token: str | None = None, ca: Path | None = None) -> str:
    import ssl

    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    if context:
        context.check_hostname = False
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    with opener.open(request, timeout=20) as resp:
        return resp.read().decode()


def prom_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        labels = {}
        if "{" in head:
            for part in head[head.index("{") + 1:head.rindex("}")].split('",'):
                k, _, v = part.partition("=")
                if k:
                    labels[k.strip(",")] = v.strip('"')
        out.append((labels, float(value)))
    return out


def operator_handler_times(text: str) -> dict[str, dict[str, float]]:
    sums = {lab.get("handler"): v for lab, v in prom_samples(text, "distillery_reconcile_duration_seconds_sum")}
    counts = {lab.get("handler"): v for lab, v in prom_samples(text, "distillery_reconcile_duration_seconds_count")}
    return {h: {"calls": int(counts.get(h, 0)), "total_s": round(s, 2),
                "mean_ms": round(1000 * s / counts[h], 1) if counts.get(h) else None} for h, s in sums.items()}


def apiserver_list_bytes(text: str) -> dict[str, dict[str, float]]:
    """LIST response bytes by resource (all users; the operator is the only one listing CRs)."""
    sums = defaultdict(float)
    counts = defaultdict(float)
    for lab, v in prom_samples(text, "apiserver_response_sizes_sum"):
        if lab.get("verb") == "LIST":
            sums[lab.get("resource")] += v
    for lab, v in prom_samples(text, "apiserver_response_sizes_count"):
        if lab.get("verb") == "LIST":
            counts[lab.get("resource")] += v
    return {r: {"lists": int(counts[r]), "bytes": int(sums[r]),
                "mean_bytes": int(sums[r] / counts[r]) if counts[r] else 0}
            for r in ("studentmodels", "distillationjobs", "jobs") if counts.get(r)}


# ----------------------------------------------------------------------------- watching


class Watcher(threading.Thread):
    """Watches one kind in the namespace (as admin) and records when each object reached a state."""

    def __init__(self, api_client, namespace: str, group: str, version: str, plural: str, on_object):
        super().__init__(daemon=True, name=f"watch-{plural}")
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.args = (group, version, namespace, plural)
        self.on_object = on_object
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        while not self.stop.is_set():
            try:
                listed = self.custom.list_namespaced_custom_object(*self.args)
                now = time.monotonic()
                for obj in listed.get("items", []):
                    self.on_object(obj, now)
                rv = listed["metadata"]["resourceVersion"]
                self.ready.set()
                while not self.stop.is_set():
                    w = watch.Watch()
                    for event in w.stream(self.custom.list_namespaced_custom_object, *self.args,
                                          resource_version=rv, timeout_seconds=20, allow_watch_bookmarks=True):
                        now = time.monotonic()
                        obj = event["object"]
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self.on_object(obj, now)
                        if self.stop.is_set():
                            w.stop()
                            break
            except ApiException as err:
                if err.status != 410:
                    self.errors.append(f"{err.status} {err.reason}")
                    time.sleep(1)
            except Exception as err:  # noqa: BLE001 - keep watching; report at the end
                self.errors.append(repr(err))
                time.sleep(1)


class Tracker:
    """First time (monotonic) each trainer Job appeared / completed and each job became final."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.job_created: dict[str, float] = {}
        self.job_complete: dict[str, float] = {}
        self.dj_seen: dict[str, float] = {}
        self.dj_final: dict[str, float] = {}
        self.dj_phase: dict[str, str] = {}
        self.sm_seen: dict[str, float] = {}
        self.sm_status: dict[str, dict] = {}
        self.last_sm_event = 0.0

    def on_job(self, obj: dict, now: float) -> None:
        owner = (obj["metadata"].get("labels") or {}).get("distillery.io/job") or obj["metadata"]["name"]
        with self.lock:
            self.job_created.setdefault(owner, now)
            for c in (obj.get("status") or {}).get("conditions") or []:
                if c.get("type") == "Complete" and c.get("status") == "True":
                    self.job_complete.setdefault(owner, now)

    def on_dj(self, obj: dict, now: float) -> None:
        phase = (obj.get("status") or {}).get("phase")
        with self.lock:
            self.dj_seen.setdefault(obj["metadata"]["name"], now)
            if phase in FINAL:
                self.dj_final.setdefault(obj["metadata"]["name"], now)
            if phase:
                self.dj_phase[obj["metadata"]["name"]] = phase

    def on_sm(self, obj: dict, now: float) -> None:
        with self.lock:
            self.sm_seen.setdefault(obj["metadata"]["name"], now)
            self.sm_status[obj["metadata"]["name"]] = obj.get("status") or {}
            self.last_sm_event = now


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    values = sorted(values)

    def pct(p: float) -> float:
        return round(values[min(len(values) - 1, int(round(p * (len(values) - 1))))], 2)

    return {"min": round(values[0], 2), "p50": pct(0.5), "p95": pct(0.95), "max": round(values[-1], 2),
            "mean": round(statistics.fmean(values), 2)}


# ----------------------------------------------------------------------------- one run


def job_document(name: str, work: Path) -> dict[str, Any]:
    """The digits job of the cluster tests (tests/digits.py), output under the run's folder.

    The teacher and data paths are never read: the fake trainer replays a recorded result."""
    from tests.digits import digits_job_document

    doc = digits_job_document(work / "digits-ws", work / "out" / name, distillation={"epochs": 2},
                              targets={"maxAccuracyDrop": 0.5})
    doc["metadata"]["name"] = name
    return doc


def write_operator_kubeconfig(admin: Path, token: str, path: Path) -> None:
    import yaml

    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": OPERATOR_USER, "user": {"token": token}}]
    for ctx in config["contexts"]:
        ctx["context"]["user"] = OPERATOR_USER
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def start_control_plane(root: Path, op_token: str):
    from tests.cluster.controlplane import ControlPlane, ControlPlaneError, find_binaries

    binaries, missing = find_binaries()
    if missing:
        raise ControlPlaneError("control plane not built: run scripts/build-control-plane.sh (missing: "
                                + "; ".join(missing) + ")")
    failures = []
    for attempt in range(2):  # a free port can be taken before a server binds it; retry once
        work = root / f"cp{attempt}"
        work.mkdir(parents=True)
        policy = work / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        cp = ControlPlane(work_dir=work, binaries=binaries,
                          extra_apiserver_args=["--audit-policy-file", str(policy),
                                                "--audit-log-path", str(work / "audit.log"),
                                                "--audit-log-maxsize", "0", "--audit-log-mode", "blocking"],
                          extra_tokens=[(op_token, OPERATOR_USER, ["system:masters"])])
        try:
            cp.start()
            return cp, binaries
        except ControlPlaneError as err:
            failures.append(f"attempt {attempt + 1}: {err}")
    raise ControlPlaneError("control plane did not start:\n" + "\n".join(failures))


def operator_process(kubeconfig: Path, namespace: str, log_dir: Path, kopf_max_workers: int | None, **env):
    """tests/cluster/operator_harness.py's OperatorProcess; with ``kopf_max_workers`` the what-if
    launcher (operator_launcher.py) runs the same CLI with a resized kopf thread pool."""
    from tests.cluster.operator_harness import OperatorProcess

    class LaunchedOperator(OperatorProcess):
        def start(self):
            self.starts += 1
            full_env = {**os.environ, "KUBECONFIG": self.kubeconfig, "DISTILLERY_METRICS_PORT": str(self.metrics_port),
                        **self.extra_env, "BENCH_KOPF_MAX_WORKERS": str(kopf_max_workers)}
            log = open(self.log_dir / f"operator-{self.namespace}-{self.starts}.log", "wb")  # noqa: SIM115
            self.proc = subprocess.Popen(
                [sys.executable, str(LAUNCHER), "operator", "--namespace", self.namespace, "--liveness", ""],
                env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_ROOT)
            return self

    cls = LaunchedOperator if kopf_max_workers else OperatorProcess
    return cls(str(kubeconfig), namespace, log_dir, **env)


def operator_defaults() -> dict[str, str]:
    """The operator's own defaults for what tests/cluster/operator_harness.py speeds up for tests
    (it sets DISTILLERY_FRONTIER_RESYNC_SECONDS=5): the benchmark runs the operator as shipped."""
    from distillery.controller.settings import Settings

    defaults = Settings()
    env = {}
    if hasattr(defaults, "frontier_resync_s"):
        env["DISTILLERY_FRONTIER_RESYNC_SECONDS"] = str(defaults.frontier_resync_s)
    return env


def run_one(n: int, *, poll_interval: float = 5.0, metrics: str = "recorded", timeout: float | None = None,
            keep: Path | None = None, kopf_max_workers: int | None = None, idle_s: float = 0,
            hold_pods: bool = False) -> dict[str, Any]:
    """One measurement: fresh control plane, node agent, namespace and operator; N jobs at once."""
    from kubernetes import config as kconfig
    from tests.cluster.conftest import bring_up, wait_for
    from tests.cluster.controlplane import stop_process

    timeout = timeout or 300 + 4 * n
    root = Path(tempfile.mkdtemp(prefix=f"distillery-opscale-{n}-"))
    op_token = secrets.token_hex(16)
    cp = agent = operator = None
    watchers: list[Watcher] = []
    result: dict[str, Any] = {"n": n, "poll_interval_s": poll_interval, "metrics": metrics, "hold_pods": hold_pods,
                              "operator_env": operator_defaults(),
                              "kopf_max_workers": kopf_max_workers or f"kopf default (min(32, cores + 4) = {min(32, (os.cpu_count() or 1) + 4)})"}
    try:
        t_cp = time.monotonic()
        cp, binaries = start_control_plane(root, op_token)
        cluster, agent = bring_up(cp, binaries)
        result["control_plane_start_s"] = round(time.monotonic() - t_cp, 1)
        log(f"N={n}: control plane up in {result['control_plane_start_s']} s ({cp.work_dir})")

        namespace = f"opscale-{n}-{secrets.token_hex(3)}"
        labels = {f"pod-security.kubernetes.io/{m}": "restricted" for m in ("enforce", "warn", "audit")}
        cluster.kubectl("create", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}}))
        wait_for(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", namespace,
                                         check=False).returncode == 0, what="the default ServiceAccount")

        op_kubeconfig = cp.work_dir / "operator.kubeconfig"
        write_operator_kubeconfig(cp.kubeconfig, op_token, op_kubeconfig)
        command = f"{sys.executable} {FAKE_TRAINER}" + (" --jitter" if metrics == "jitter" else "")
        if any(" " in p for p in (sys.executable, str(FAKE_TRAINER))):
            raise RuntimeError("DISTILLERY_TRAINER_COMMAND is split on spaces: move the venv/repo to a path without")
        op_logs = cp.work_dir / "operator-logs"
        op_logs.mkdir()
        operator = operator_process(op_kubeconfig, namespace, op_logs, kopf_max_workers,
                                   **operator_defaults(),
                                   DISTILLERY_POLL_INTERVAL_SECONDS=poll_interval,
                                   DISTILLERY_TRAINER_IMAGE="localhost/distillery-trainer:fake",
                                   DISTILLERY_TRAINER_COMMAND=command, PYTHONUNBUFFERED=1)
        t_op = time.monotonic()
        operator.start()
        audit_log = cp.work_dir / "audit.log"

        def operator_watching() -> bool:
            if operator.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {operator.proc.returncode}:\n{operator.logs()}")
            seen = {r["resource"] for r in audit_requests(audit_log) if r["verb"] == "watch"}
            return {"distillationjobs", "studentmodels"} <= seen

        wait_for(operator_watching, timeout=120, what="the operator's watches")
        result["operator_start_s"] = round(time.monotonic() - t_op, 1)
        time.sleep(2)  # let its startup requests settle

        tracker = Tracker()
        api = kconfig.new_client_from_config(config_file=str(cp.kubeconfig))
        watchers = [Watcher(api, namespace, "batch", "v1", "jobs", tracker.on_job),
                    Watcher(api, namespace, GROUP, VERSION, "distillationjobs", tracker.on_dj),
                    Watcher(api, namespace, GROUP, VERSION, "studentmodels", tracker.on_sm)]
        for w in watchers:
            w.start()
        for w in watchers:
            if not w.ready.wait(60):
                raise RuntimeError(f"{w.name} did not start: {w.errors}")

        names = [f"bench-{i:04d}" for i in range(n)]
        manifest = cp.work_dir / "jobs.json"
        manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                        "items": [job_document(name, root) for name in names]}))
        pids = {"operator": operator.proc.pid, "node-agent (self)": agent.pid,
                **{name: proc.pid for name, proc in cp._procs.items()}}
        cpu_before = {name: proc_cpu(pid) for name, pid in pids.items()}
        machine_before = machine_cpu()
        rss_samples: list[tuple[float, int]] = []
        timeline: list[dict[str, Any]] = []

        # ---- t0
        held = hold_pods
        if held:
            os.kill(agent.pid, signal.SIGSTOP)
        t0_wall = datetime.now(UTC)
        t0 = time.monotonic()
        cluster.kubectl("apply", "-n", namespace, "-f", manifest, timeout=900)
        t_applied = time.monotonic() - t0
        log(f"N={n}: applied in {t_applied:.1f} s")

        deadline = t0 + timeout
        next_sample = 0.0
        while True:
            now = time.monotonic()
            with tracker.lock:
                created, complete, final = len(tracker.job_created), len(tracker.job_complete), len(tracker.dj_final)
            if now >= next_sample:
                rss = proc_status(operator.proc.pid).get("VmRSS", 0)
                rss_samples.append((now - t0, rss))
                timeline.append({"t": round(now - t0, 1), "jobs": created, "complete": complete, "final": final,
                                 "rss_mib": round(rss / 1024, 1)})
                next_sample = now + 1.0
            if held and created >= n:
                os.kill(agent.pid, signal.SIGCONT)
                held = False
                result["pods_released_s"] = round(now - t0, 1)
                log(f"N={n}: all Jobs exist at {now - t0:.1f} s; node agent released")
            if final >= n:
                break
            if operator.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {operator.proc.returncode}:\n{operator.logs()}")
            if now > deadline:
                log(f"N={n}: TIMED OUT after {timeout:.0f} s: {created} Jobs, {complete} complete, {final} final")
                result["timed_out"] = True
                break
            time.sleep(0.1)
        t_final = time.monotonic() - t0

        # the registry settles after the last job: StudentModel statuses written, no more events
        accepted = sum(1 for p in tracker.dj_phase.values() if p == "Succeeded")
        settle_deadline = time.monotonic() + 60
        while time.monotonic() < settle_deadline:
            with tracker.lock:
                done = (len(tracker.sm_status) >= accepted
                        and all("onFrontier" in s for s in tracker.sm_status.values())
                        and time.monotonic() - tracker.last_sm_event > 3)
            if done:
                break
            time.sleep(0.2)
        t_registry = (tracker.last_sm_event - t0) if tracker.sm_seen else None
        time.sleep(2)
        t_end_wall = datetime.now(UTC)

        machine_after = machine_cpu()
        cpu_after = {name: proc_cpu(pid) for name, pid in pids.items()}
        status = proc_status(operator.proc.pid)
        try:
            op_metrics = scrape(f"http://127.0.0.1:{operator.metrics_port}/metrics")
        except OSError as err:
            op_metrics = ""
            log(f"operator metrics not scraped: {err}")
        try:
            api_metrics = scrape(f"{cp.server}/metrics", cp.token, cp.ca_file)
        except OSError as err:
            api_metrics = ""
            log(f"apiserver metrics not scraped: {err}")

        # ---- idle: everything is final; what does the operator keep doing (timers, resyncs)?
        idle: dict[str, Any] = {"seconds": idle_s}
        if idle_s > 0:
            log(f"N={n}: all final; measuring {idle_s:.0f} s of idle")
            idle_cpu_before = {name: proc_cpu(pid).get("self_s", 0) for name, pid in pids.items()}
            time.sleep(idle_s)
            t_idle_end_wall = datetime.now(UTC)
            idle["cpu_s"] = {name: round(proc_cpu(pid).get("self_s", 0) - idle_cpu_before[name], 1)
                             for name, pid in pids.items()}
            idle["operator_peak_rss_mib"] = round(proc_status(operator.proc.pid).get("VmHWM", 0) / 1024, 1)
            with contextlib.suppress(OSError):
                after = apiserver_list_bytes(scrape(f"{cp.server}/metrics", cp.token, cp.ca_file))
                before = apiserver_list_bytes(api_metrics)
                idle["list_bytes"] = {k: {"lists": v["lists"] - before.get(k, {}).get("lists", 0),
                                          "bytes": v["bytes"] - before.get(k, {}).get("bytes", 0)}
                                      for k, v in after.items()}
            with contextlib.suppress(OSError):
                idle["handlers_at_end"] = operator_handler_times(
                    scrape(f"http://127.0.0.1:{operator.metrics_port}/metrics"))
        operator.stop()

        # ---- numbers
        phases = Counter(tracker.dj_phase.get(name, "none") for name in names)
        records = audit_requests(audit_log)
        startup = [r for r in records if r["received"] < t0_wall]
        during = [r for r in records if t0_wall <= r["received"] <= t_end_wall]
        if idle_s > 0:
            idle["requests"] = summarize_requests([r for r in records if t_end_wall < r["received"] <= t_idle_end_wall], 0)
            idle["requests"].pop("per_job_by_verb_resource")
            idle["non_watch_per_minute"] = round(idle["requests"]["non_watch"] * 60 / idle_s, 1)
        per_job_finish = [tracker.dj_final[k] - tracker.job_complete[k] for k in names
                          if k in tracker.dj_final and k in tracker.job_complete]
        busy = machine_after[0] - machine_before[0]
        total = machine_after[1] - machine_before[1]
        cpu_used = {name: round(cpu_after[name].get("self_s", 0) - cpu_before[name].get("self_s", 0), 1)
                    for name in pids}
        cpu_used["fake trainers (node agent's children)"] = round(
            cpu_after["node-agent (self)"].get("children_s", 0) - cpu_before["node-agent (self)"].get("children_s", 0), 1)
        result.update({
            "namespace": namespace,
            "apply_s": round(t_applied, 2),
            "time_to_all_jobs_s": round(max(tracker.job_created.values()) - t0, 2) if tracker.job_created else None,
            "time_to_all_jobs_complete_s": (round(max(tracker.job_complete.values()) - t0, 2)
                                            if len(tracker.job_complete) >= n else None),
            "time_to_all_final_s": round(t_final, 2),
            "time_to_registry_settled_s": round(t_registry, 2) if t_registry is not None else None,
            "jobs_per_s": round(n / t_final, 2) if t_final else None,
            "phases": dict(phases),
            "student_models": len(tracker.sm_seen),
            "on_frontier": sum(1 for s in tracker.sm_status.values() if s.get("onFrontier")),
            "per_job_s": {
                "job_created": stats([tracker.job_created[k] - t0 for k in names if k in tracker.job_created]),
                "dj_added_to_job_created": stats([tracker.job_created[k] - tracker.dj_seen[k] for k in names
                                                  if k in tracker.job_created and k in tracker.dj_seen]),
                "job_complete": stats([tracker.job_complete[k] - t0 for k in names if k in tracker.job_complete]),
                "final": stats([tracker.dj_final[k] - t0 for k in names if k in tracker.dj_final]),
                "complete_to_final": stats(per_job_finish),
            },
            "operator": {
                "peak_rss_mib": round(status.get("VmHWM", 0) / 1024, 1),
                "rss_at_end_mib": round(status.get("VmRSS", 0) / 1024, 1),
                "rss_before_apply_mib": round(rss_samples[0][1] / 1024, 1) if rss_samples else None,
                "cpu_s": cpu_used["operator"],
                "handlers": operator_handler_times(op_metrics),
            },
            "requests": {"startup": summarize_requests(startup, 0) | {"per_job_by_verb_resource": {}},
                         "run": summarize_requests(during, n)},
            "apiserver_list_bytes": apiserver_list_bytes(api_metrics),
            "cpu_s_during_run": cpu_used,
            "machine_cpu_busy_during_run": round(busy / total, 3) if total else None,
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
            "timeline": timeline,
            "watch_errors": [e for w in watchers for e in w.errors],
            "idle": idle,
        })
        return result
    finally:
        if agent is not None and hold_pods:
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.pid, signal.SIGCONT)
        for w in watchers:
            w.stop.set()
        if operator is not None:
            operator.stop()
        if agent is not None:
            stop_process(agent)
        if cp is not None:
            cp.stop()
        if keep:
            keep.mkdir(parents=True, exist_ok=True)
            dest = keep / f"n{n}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(root, dest, ignore=shutil.ignore_patterns("etcd", "pods", "out"), dirs_exist_ok=True)
            log(f"logs kept in {dest}")
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------- report


WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")


def writes_per_job(run: dict[str, Any]) -> float | None:
    """The operator's API writes (create/update/patch/delete, any response) per job."""
    by = run["requests"]["run"]["by_verb_resource"]
    return round(sum(v for k, v in by.items() if k.split()[0] in WRITE_VERBS) / run["n"], 2) if run["n"] else None


def fmt_requests(run: dict[str, Any], limit: int = 12) -> str:
    items = list(run["requests"]["run"]["per_job_by_verb_resource"].items())[:limit]
    return ", ".join(f"{k} {v:g}" for k, v in items)


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Operator scale",
        "",
        "N DistillationJobs applied at once (one `kubectl apply -f` of a List) to the real test API server"
        " (etcd + kube-apiserver + kube-controller-manager from `scripts/build-control-plane.sh`), the real"
        " operator process (`distillery operator`, kopf) watching the namespace, the trainer pod replaced by"
        " `benchmarks/operator_scale/fake_trainer.py`, which the test node agent runs as a local process and"
        " which finishes at once with a recorded result.json. A fresh control plane, namespace and operator per N.",
        "",
        f"- Command: `{report['command']}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['memory_gib']} GiB;"
        f" load average at start {' / '.join(map(str, m['load_average_at_start']))} (1/5/15 min);"
        f" {m['date']}; Python {m['python']}, kopf {m['kopf']}, kubernetes client {m['kubernetes_client']}",
        f"- Operator settings: `DISTILLERY_POLL_INTERVAL_SECONDS={report['runs'][0]['poll_interval_s']:g}`"
        f"{' (the default)' if report['runs'][0]['poll_interval_s'] == 5 else ''};"
        f" fake results: `{report['runs'][0]['metrics']}`"
        f" ({'every student equals the recorded one' if report['runs'][0]['metrics'] == 'recorded' else 'per-job jitter of accuracy and latency'},"
        " one teacher, so all accepted students share one frontier group);"
        f" kopf sync-handler threads: {report['runs'][0].get('kopf_max_workers')}"
        + "".join(f"; `{k}={v}` (operator default)" for k, v in (report['runs'][0].get('operator_env') or {}).items()),
        ("- Trainer pods held: the node agent was paused from t0 until all trainer Jobs existed (`--hold-pods`),"
         " so no fake trainer competed for the cores while the Jobs were created.\n"
         if report["runs"][0].get("hold_pods") else "")
        + "- Times are from t0 = just before `kubectl apply`; requests are the operator's own (its static-token"
        " user `distillery-operator`, counted from the kube-apiserver audit log, level Metadata, that user only)"
        " from t0 until the registry settled; watches are counted apart.",
        "",
        "| N | apply | all Jobs exist | all Jobs Complete | all final | jobs/s | operator requests/job (excl. watches) |"
        " of which writes | non-2xx | watches | operator peak RSS | operator CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        req = r["requests"]["run"]
        lines.append(
            f"| {r['n']} | {r['apply_s']:.1f} s | {r['time_to_all_jobs_s']:.1f} s | "
            f"{(r['time_to_all_jobs_complete_s'] or float('nan')):.1f} s | {r['time_to_all_final_s']:.1f} s"
            f"{' (TIMED OUT)' if r.get('timed_out') else ''} | {r['jobs_per_s']:.2f} | {req['non_watch_per_job']:g} | "
            f"{writes_per_job(r):g} | {sum(req['non_2xx'].values())} | "
            f"{req['watch']} | {r['operator']['peak_rss_mib']:.0f} MiB | {r['operator']['cpu_s']:.1f} s |")
    lines += ["", "Operator requests per job by verb and resource (t0 until settled):", ""]
    for r in report["runs"]:
        lines.append(f"- N={r['n']}: {fmt_requests(r)}")
        if r["requests"]["run"]["non_2xx"]:
            lines.append(f"  - non-2xx: {r['requests']['run']['non_2xx']}")
        startup = r["requests"]["startup"]
        lines.append(f"  - before t0 (startup, not per job): {startup['total']} requests"
                     f" ({startup['watch']} watches)")
    lines += ["", "Per-job latencies (seconds from t0 unless stated; p50 / p95 / max; as seen by the benchmark's"
              " watches):", "",
              "| N | Job created | DJ added -> Job created | Job Complete | DJ final | Job Complete -> DJ final |"
              " StudentModels (on frontier) |",
              "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        p = r["per_job_s"]

        def f(s):
            return f"{s['p50']} / {s['p95']} / {s['max']}" if s else "-"

        lines.append(f"| {r['n']} | {f(p['job_created'])} | {f(p.get('dj_added_to_job_created'))} | "
                     f"{f(p['job_complete'])} | {f(p['final'])} | "
                     f"{f(p['complete_to_final'])} | {r['student_models']} ({r['on_frontier']}) |")
    lines += ["", "CPU seconds during the run (t0 until settled) and operator handler time:", ""]
    for r in report["runs"]:
        cpu = ", ".join(f"{k} {v:g}" for k, v in r["cpu_s_during_run"].items())
        busy = r["machine_cpu_busy_during_run"]
        lines.append(f"- N={r['n']}: machine busy {busy:.0%} of {m['cores']} cores; {cpu}")
        handlers = r["operator"].get("handlers")
        when = "t0 until settled"
        if handlers is None:  # older results: scraped after the idle window
            handlers, when = r["operator"].get("handlers_incl_idle") or {}, "t0 until the end of the idle window"
        h = ", ".join(f"{k}: {v['calls']} calls, {v['total_s']} s total, mean {v['mean_ms']} ms"
                      for k, v in handlers.items())
        lines.append(f"  - operator handlers ({when}; from its /metrics): {h}")
        if r["apiserver_list_bytes"]:
            lb = ", ".join(f"{k}: {v['lists']} lists, {v['bytes'] / 1e6:.1f} MB (mean {v['mean_bytes'] / 1e3:.1f} kB)"
                           for k, v in r["apiserver_list_bytes"].items())
            lines.append(f"  - LIST response bytes (apiserver metrics, all users): {lb}")
    idle_runs = [r for r in report["runs"] if (r.get("idle") or {}).get("requests")]
    if idle_runs:
        lines += ["", "Idle (after every job is final; the operator's timers and resyncs only):", ""]
        for r in idle_runs:
            i = r["idle"]
            kinds = ", ".join(f"{k} {v}" for k, v in i["requests"]["by_verb_resource"].items())
            lb = "; ".join(f"{k}: {v['lists']} lists, {v['bytes'] / 1e6:.1f} MB" for k, v in (i.get("list_bytes") or {}).items())
            lines.append(f"- N={r['n']}: {i['requests']['non_watch']} requests in {i['seconds']:.0f} s"
                         f" ({i['non_watch_per_minute']}/min): {kinds or 'none'}"
                         + (f"; LIST bytes: {lb}" if lb else "")
                         + f"; CPU s: operator {i['cpu_s'].get('operator')}, kube-apiserver {i['cpu_s'].get('kube-apiserver')}")
    if report.get("notes"):
        lines += ["", "## Findings", "", report["notes"].strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[50, 200], help="the Ns to run (default 50 200)")
    parser.add_argument("--quick", action="store_true", help="N=50 only (under 10 minutes)")
    parser.add_argument("--poll-interval", type=float, default=5.0,
                        help="DISTILLERY_POLL_INTERVAL_SECONDS for the operator (default 5, the operator's default)")
    parser.add_argument("--metrics", choices=("recorded", "jitter"), default="recorded",
                        help="recorded: every student equals the recorded one; jitter: per-job variations")
    parser.add_argument("--timeout", type=float, help="per N, seconds until all jobs must be final (default 300+4N)")
    parser.add_argument("--out", type=Path, help="results path without suffix (default benchmarks/results/operator-scale)")
    parser.add_argument("--notes", type=Path, help="a Markdown file appended as 'Findings'")
    parser.add_argument("--keep-logs", type=Path, help="copy the control plane / operator / agent logs here")
    parser.add_argument("--idle", type=float, default=65.0,
                        help="after all jobs are final, seconds to keep measuring the idle operator (default 65)")
    parser.add_argument("--hold-pods", action="store_true",
                        help="pause the node agent from t0 until all trainer Jobs exist (see the module doc)")
    parser.add_argument("--kopf-max-workers", type=int,
                        help="what-if: run the operator through operator_launcher.py with this many kopf threads")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only re-render JSON's Markdown (e.g. with --notes); runs nothing")
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text())
        if args.notes:
            report["notes"] = args.notes.read_text()
            args.render.write_text(json.dumps(report, indent=1, default=str) + "\n")
        args.render.with_suffix(".md").write_text(markdown(report))
        log(f"wrote {args.render.with_suffix('.md')}")
        return 0
    ns = [50] if args.quick else args.jobs
    out = args.out or (HERE / "results" / "operator-scale-quick" if args.quick else RESULTS / "operator-scale")
    info = machine()
    log(f"machine: {info['cpu']}, {info['cores']} cores, load average {info['load_average_at_start']}")
    report: dict[str, Any] = {
        "benchmark": "operator-scale",
        "command": "python -m benchmarks.operator_scale.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": info,
        "runs": [],
    }
    for n in ns:
        r = run_one(n, poll_interval=args.poll_interval, metrics=args.metrics, timeout=args.timeout,
                    keep=args.keep_logs, kopf_max_workers=args.kopf_max_workers, idle_s=args.idle,
                    hold_pods=args.hold_pods)
        log(f"N={n}: all Jobs {r['time_to_all_jobs_s']} s, all final {r['time_to_all_final_s']} s, "
            f"{r['requests']['run']['non_watch_per_job']} requests/job, peak RSS {r['operator']['peak_rss_mib']} MiB")
        report["runs"].append(r)
    if args.notes:
        report["notes"] = args.notes.read_text()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    log(f"wrote {out.with_suffix('.md')} and .json")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
