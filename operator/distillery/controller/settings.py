"""Operator settings, from the environment (the Helm chart sets these)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distillery.api.base import QUANTITY_PATTERN
from distillery.api.job import TaintEffect, TolerationOperator
from distillery.controller.policy import EndpointError, TolerationPattern, endpoint_origin


class SettingsError(ValueError):
    """A setting the operator cannot start with; the message is one line naming the variable."""


def _list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _number(env: Mapping[str, str], name: str, kind: type, default: Any, minimum: float | None = None) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}: not a{'n integer' if kind is int else ' number'}") from None
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}")
    return value


def _json(env: Mapping[str, str], name: str) -> Any:
    raw = env.get(name) or ""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise SettingsError(f"{name}: not valid JSON (line {err.lineno} column {err.colno}: {err.msg})") from None


def allowed_secrets_from(env: Mapping[str, str]) -> tuple[str, ...]:
    """Secret names (`name` in every watched namespace, or `namespace/name`). No wildcard: "*"
    would hand every Secret of a namespace to whoever may create a job there, which is the hole
    the opt-in closes; label the Secrets instead, which an admin can list with a selector."""
    names = tuple(_list(env.get("DISTILLERY_ALLOWED_SECRETS")))
    for i, name in enumerate(names):
        if "*" in name:
            raise SettingsError(f"DISTILLERY_ALLOWED_SECRETS: item {i}: wildcards are not supported; name each "
                                "Secret or label it distillery.io/usable-by-jobs=true")
        if not re.fullmatch(r"([a-z0-9][-a-z0-9]*/)?[a-z0-9]([-.a-z0-9]*[a-z0-9])?", name):
            raise SettingsError(f"DISTILLERY_ALLOWED_SECRETS: item {i}: not a Secret name or namespace/name")
    return names


def allowed_endpoints_from(env: Mapping[str, str]) -> tuple[str, ...]:
    endpoints = tuple(_list(env.get("DISTILLERY_ALLOWED_ENDPOINTS")))
    for i, url in enumerate(endpoints):
        try:
            endpoint_origin(url)
        except EndpointError as err:
            raise SettingsError(f"DISTILLERY_ALLOWED_ENDPOINTS: item {i}: {err}") from None
    return endpoints


_PATTERN_KEYS = {"key", "operator", "value", "effect"}


def allowed_tolerations_from(env: Mapping[str, str]) -> tuple[TolerationPattern, ...]:
    """A JSON list of {key, operator?, value?, effect?}; key "" is the toleration of every taint."""
    name = "DISTILLERY_ALLOWED_TOLERATIONS"
    items = _json(env, name)
    if items is None:
        return ()
    if not isinstance(items, list):
        raise SettingsError(f"{name}: must be a JSON list of {{key, operator, effect}} objects")
    patterns = []
    for i, item in enumerate(items):
        where = f"{name}: item {i}"
        if not isinstance(item, dict):
            raise SettingsError(f"{where}: must be an object with key, operator, value, effect")
        unknown = sorted(set(item) - _PATTERN_KEYS)
        if unknown:
            raise SettingsError(f"{where}: unknown field {unknown[0]} (known: key, operator, value, effect)")
        if not isinstance(item.get("key"), str):
            raise SettingsError(f'{where}: key is required, a string ("" for the toleration of every taint)')
        if any(not isinstance(item.get(k), str | None) for k in _PATTERN_KEYS):
            raise SettingsError(f"{where}: operator, value and effect must be strings")
        if item.get("operator") not in (None, *TolerationOperator):
            raise SettingsError(f"{where}: operator must be Exists or Equal")
        if item.get("effect") not in (None, *TaintEffect):
            raise SettingsError(f"{where}: effect must be NoSchedule, PreferNoSchedule or NoExecute")
        patterns.append(TolerationPattern(key=item["key"], operator=item.get("operator"),
                                          value=item.get("value"), effect=item.get("effect")))
    return tuple(patterns)


def allowed_node_selectors_from(env: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """A JSON object: node label key -> the values a job may select (["*"]: any value)."""
    name = "DISTILLERY_ALLOWED_NODE_SELECTORS"
    mapping = _json(env, name)
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise SettingsError(f"{name}: must be a JSON object of label key -> list of values")
    out = {}
    for key, values in mapping.items():
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise SettingsError(f'{name}: key {key}: must be a non-empty list of strings (["*"] for any value)')
        out[key] = tuple(values)
    return out


def quantity_from(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    if not re.fullmatch(QUANTITY_PATTERN, value):
        raise SettingsError(f"{name}: not a Kubernetes quantity (e.g. 20Gi)")
    return value


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
    # What jobs may ask for (the chart's allow-lists; see controller/policy.py). Empty: no limit,
    # except that a toleration of every taint is always refused unless listed.
    allowed_secrets: tuple[str, ...] = ()  # names or namespace/name; labelled Secrets need no entry
    allowed_endpoints: tuple[str, ...] = ()  # compared by scheme, host and port
    allowed_tolerations: tuple[TolerationPattern, ...] = ()
    allowed_node_selectors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    work_dir_size_limit: str = "20Gi"  # the trainer's emptyDir (models, data, checkpoints in flight)
    # Every store call the operator makes is bounded: a store that accepts and never answers costs
    # at most attempts x (connect + read) seconds.
    store_connect_timeout_s: float = 3.0
    store_read_timeout_s: float = 10.0
    store_max_attempts: int = 2
    result_read_attempts: int = 3  # failed reads of a finished trainer's result.json before ResultUnavailable
    store_workers: int = 4  # the operator's store-reading threads (one call in flight per job)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment gives; SettingsError (one line naming the variable) for a
        value the operator cannot start with."""
        env = dict(os.environ if env is None else env)
        base = cls()
        command = tuple(env["DISTILLERY_TRAINER_COMMAND"].split()) if env.get("DISTILLERY_TRAINER_COMMAND") else base.trainer_command
        settings = cls(
            trainer_image=env.get("DISTILLERY_TRAINER_IMAGE", base.trainer_image),
            trainer_command=command,
            image_pull_policy=env.get("DISTILLERY_IMAGE_PULL_POLICY", base.image_pull_policy),
            namespaces=_list(env.get("DISTILLERY_NAMESPACES")),
            job_ttl_seconds=_number(env, "DISTILLERY_JOB_TTL_SECONDS", int, base.job_ttl_seconds, 0),
            backoff_limit=_number(env, "DISTILLERY_BACKOFF_LIMIT", int, base.backoff_limit, 0),
            default_cpu=env.get("DISTILLERY_DEFAULT_CPU") or None,
            default_memory=env.get("DISTILLERY_DEFAULT_MEMORY") or None,
            default_endpoint=env.get("DISTILLERY_DEFAULT_S3_ENDPOINT") or None,
            default_credentials_secret=env.get("DISTILLERY_DEFAULT_CREDENTIALS_SECRET") or None,
            poll_interval_s=_number(env, "DISTILLERY_POLL_INTERVAL_SECONDS", float, base.poll_interval_s),
            frontier_resync_s=_number(env, "DISTILLERY_FRONTIER_RESYNC_SECONDS", float, base.frontier_resync_s),
            frontier_debounce_s=_number(env, "DISTILLERY_FRONTIER_DEBOUNCE_SECONDS", float, base.frontier_debounce_s),
            trainer_recheck_s=_number(env, "DISTILLERY_TRAINER_RECHECK_SECONDS", float, base.trainer_recheck_s),
            metrics_port=_number(env, "DISTILLERY_METRICS_PORT", int, base.metrics_port, 0),
            allowed_secrets=allowed_secrets_from(env),
            allowed_endpoints=allowed_endpoints_from(env),
            allowed_tolerations=allowed_tolerations_from(env),
            allowed_node_selectors=allowed_node_selectors_from(env),
            work_dir_size_limit=quantity_from(env, "DISTILLERY_WORK_DIR_SIZE_LIMIT", base.work_dir_size_limit),
            store_connect_timeout_s=_number(env, "DISTILLERY_STORE_CONNECT_TIMEOUT_SECONDS", float,
                                            base.store_connect_timeout_s, 0.1),
            store_read_timeout_s=_number(env, "DISTILLERY_STORE_READ_TIMEOUT_SECONDS", float,
                                         base.store_read_timeout_s, 0.1),
            store_max_attempts=_number(env, "DISTILLERY_STORE_MAX_ATTEMPTS", int, base.store_max_attempts, 1),
            result_read_attempts=_number(env, "DISTILLERY_RESULT_READ_ATTEMPTS", int, base.result_read_attempts, 1),
            store_workers=_number(env, "DISTILLERY_STORE_WORKERS", int, base.store_workers, 1),
        )
        if settings.allowed_endpoints and settings.default_endpoint:
            try:  # the default store is always allowed, so it is compared the same way
                endpoint_origin(settings.default_endpoint)
            except EndpointError as err:
                raise SettingsError(f"DISTILLERY_DEFAULT_S3_ENDPOINT: {err}") from None
        return settings
