"""Operator settings, from the environment (the Helm chart sets these)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@dataclass(frozen=True)
class Settings:
    trainer_image: str = "ghcr.io/distillery/trainer:0.1.0"
    trainer_command: tuple[str, ...] = ("distillery-trainer",)
    image_pull_policy: str = "IfNotPresent"
    namespaces: list[str] = field(default_factory=list)  # empty: the whole cluster
    job_ttl_seconds: int = 86400
    backoff_limit: int = 2  # retries resume from the last checkpoint
    default_cpu: str | None = None
    default_memory: str | None = None
    default_endpoint: str | None = None  # S3 endpoint when a job names none
    default_credentials_secret: str | None = None
    poll_interval_s: float = 5.0
    frontier_resync_s: float = 60.0  # recompute frontiers even without events (a missed DELETED)
    frontier_debounce_s: float = 1.0  # a burst of StudentModel events recomputes its group once
    trainer_recheck_s: float = 60.0  # GET a watched trainer Job this often (a missed DELETED)
    metrics_port: int = 8080
    annotation_prefix: str = "distillery.io"
    finalizer: str = "distillery.io/finalizer"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        base = cls()
        command = tuple(env["DISTILLERY_TRAINER_COMMAND"].split()) if env.get("DISTILLERY_TRAINER_COMMAND") else base.trainer_command
        return cls(
            trainer_image=env.get("DISTILLERY_TRAINER_IMAGE", base.trainer_image),
            trainer_command=command,
            image_pull_policy=env.get("DISTILLERY_IMAGE_PULL_POLICY", base.image_pull_policy),
            namespaces=_list(env.get("DISTILLERY_NAMESPACES")),
            job_ttl_seconds=int(env.get("DISTILLERY_JOB_TTL_SECONDS", base.job_ttl_seconds)),
            backoff_limit=int(env.get("DISTILLERY_BACKOFF_LIMIT", base.backoff_limit)),
            default_cpu=env.get("DISTILLERY_DEFAULT_CPU") or None,
            default_memory=env.get("DISTILLERY_DEFAULT_MEMORY") or None,
            default_endpoint=env.get("DISTILLERY_DEFAULT_S3_ENDPOINT") or None,
            default_credentials_secret=env.get("DISTILLERY_DEFAULT_CREDENTIALS_SECRET") or None,
            poll_interval_s=float(env.get("DISTILLERY_POLL_INTERVAL_SECONDS", base.poll_interval_s)),
            frontier_resync_s=float(env.get("DISTILLERY_FRONTIER_RESYNC_SECONDS", base.frontier_resync_s)),
            frontier_debounce_s=float(env.get("DISTILLERY_FRONTIER_DEBOUNCE_SECONDS", base.frontier_debounce_s)),
            trainer_recheck_s=float(env.get("DISTILLERY_TRAINER_RECHECK_SECONDS", base.trainer_recheck_s)),
            metrics_port=int(env.get("DISTILLERY_METRICS_PORT", base.metrics_port)),
        )
