"""Prometheus metrics of the operator."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("distillery_reconcile_total", "Handler runs by handler and result", ["handler", "result"])
RECONCILE_SECONDS = Histogram("distillery_reconcile_duration_seconds", "Handler duration", ["handler"])
JOBS_BY_PHASE = Gauge("distillery_jobs", "DistillationJobs by phase (as last seen)", ["phase"])
TRAINER_SECONDS = Histogram("distillery_trainer_duration_seconds", "Trainer Job wall time",
                            buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800))
STUDENTS = Counter("distillery_students_total", "Finished students by verdict", ["verdict"])
TRAINING_PROCESSES = Gauge("distillery_training_processes",
                           "Training processes (workers x processes per worker) of DistillationJobs by phase",
                           ["phase"])

# One series per running distributed job rather than one per rank: a job may have thousands of
# ranks, and the spread is what says that one lags (status.progress.ranks says which).
RANK_SPREAD = Gauge("distillery_rank_progress_spread_percent",
                    "Running DistillationJobs with several training processes: percentage points between the "
                    "furthest-ahead and the furthest-behind process (0 while they move together)",
                    ["namespace", "name"])

_phases: dict[str, str] = {}
_processes: dict[str, int] = {}


@contextmanager
def observed(handler: str):
    start = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILES.labels(handler, "error").inc()
        raise
    else:
        RECONCILES.labels(handler, "success").inc()
    finally:
        RECONCILE_SECONDS.labels(handler).observe(time.perf_counter() - start)


def set_phase(key: str, phase: str | None, processes: int | None = None, progress: Mapping | None = None) -> None:
    """A job's phase as last seen (None: the job is gone); `processes` its world size when known,
    `progress` its status.progress when the patch sets it."""
    if phase is None:
        _phases.pop(key, None)
        _processes.pop(key, None)
    else:
        _phases[key] = phase
        if processes is not None:
            _processes[key] = processes
    for p in ("Pending", "Running", "Succeeded", "Failed"):
        JOBS_BY_PHASE.labels(p).set(sum(1 for v in _phases.values() if v == p))
        TRAINING_PROCESSES.labels(p).set(sum(_processes.get(k, 1) for k, v in _phases.items() if v == p))
    set_rank_spread(key, phase, progress)


def rank_spread(progress: Mapping) -> float:
    """Percentage points between the furthest-ahead and furthest-behind rank of status.progress
    (0 without `ranks`: the trainer lists them only where they differ)."""
    percents = [float(line.get("percent") or 0.0) for line in progress.get("ranks") or []]
    return max(percents) - min(percents) if percents else 0.0


def set_rank_spread(key: str, phase: str | None, progress: Mapping | None) -> None:
    """The job's series while it runs on several processes; removed once it stops running or is gone."""
    labels = key.split("/", 1)
    if phase != "Running" or _processes.get(key, 1) < 2:
        RANK_SPREAD.remove(*labels)
    elif progress is not None:
        RANK_SPREAD.labels(*labels).set(rank_spread(progress))


def serve(port: int) -> None:
    if port:
        start_http_server(port)
