"""Names and labels the operator puts on what it creates."""

from __future__ import annotations

import hashlib

from distillery.api.base import GROUP

LABEL_JOB = f"{GROUP}/job"
LABEL_GENERATION = f"{GROUP}/generation"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_GROUP_KEY = f"{GROUP}/frontier-group"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MANAGER = "distillery-operator"


def _short_hash(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def trainer_job_name(job_name: str, generation: int) -> str:
    """Deterministic per (job, generation): creating it twice is a no-op (409 AlreadyExists).

    Kept within 52 characters so the pods' `job-name` labels and generated names stay valid.
    """
    suffix = f"-g{generation}"
    base = f"distill-{job_name}"
    if len(base) + len(suffix) <= 52:
        return base + suffix
    return f"{base[:52 - len(suffix) - 7]}-{_short_hash(job_name)}{suffix}"


def worker_service_name(job_name: str) -> str:
    """The headless Service that gives a multi-worker job's pods stable DNS names (one per
    DistillationJob: pod hostnames carry the generation already). A DNS label: at most 63."""
    base, suffix = f"distill-{job_name}", "-workers"
    if len(base) + len(suffix) <= 63:
        return base + suffix
    return f"{base[:63 - len(suffix) - 7]}-{_short_hash(job_name)}{suffix}"


def student_model_name(job_name: str, generation: int) -> str:
    name = f"{job_name}-g{generation}"
    return name if len(name) <= 63 else f"{job_name[:50]}-{_short_hash(job_name)}-g{generation}"


def frontier_group(teacher_uri: str, task: str, hardware: str) -> str:
    """A label-safe key for the students that compete with each other."""
    return _short_hash(f"{teacher_uri}|{task}|{hardware}", 16)
