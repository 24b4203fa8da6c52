"""What a job may ask of the cluster: opted-in Secrets, allowed endpoints, tolerations and node
selectors (controller/policy.py), and the settings that carry the chart's allow-lists."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from distillery.api import load_job
from distillery.controller.policy import (
    OPT_IN_LABEL,
    EndpointError,
    TolerationPattern,
    endpoint_origin,
    job_violations,
    secret_opted_in,
)
from distillery.controller.settings import Settings, SettingsError

BASE = {"apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob",
        "metadata": {"name": "news", "namespace": "ml", "generation": 1},
        "spec": {"teacher": {"uri": "s3://m/teacher"}, "dataset": {"trainUri": "s3://d/a", "evalUri": "s3://d/b"},
                 "output": {"uri": "s3://o/news", "credentialsSecret": "creds"}}}  # fmt: skip


def job(output: dict | None = None, **resources):
    doc = copy.deepcopy(BASE)
    doc["spec"]["output"].update(output or {})
    doc["spec"]["resources"] = resources
    return load_job(doc)


def settings(**env: object) -> Settings:
    return Settings.from_env({f"DISTILLERY_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
                              for k, v in env.items()})


# ----------------------------------------------------------------------------- Secrets


def test_a_secret_without_the_label_is_not_handed_to_a_trainer():
    s = Settings()
    assert not secret_opted_in({"name": "creds", "namespace": "ml"}, "creds", s)
    assert not secret_opted_in({"labels": {OPT_IN_LABEL: "yes"}}, "creds", s)  # only "true"
    assert not secret_opted_in({"labels": None, "annotations": {OPT_IN_LABEL: "true"}}, "creds", s)
    assert not secret_opted_in(None, "creds", s)


def test_the_opt_in_label_lets_a_secret_be_used():
    assert secret_opted_in({"labels": {OPT_IN_LABEL: "true"}, "namespace": "ml"}, "creds", Settings())


def test_the_charts_allow_list_names_secrets_everywhere_or_per_namespace():
    s = settings(allowed_secrets="creds, team-b/store")
    assert secret_opted_in({"namespace": "ml"}, "creds", s)
    assert secret_opted_in({"namespace": "team-b"}, "store", s)
    assert not secret_opted_in({"namespace": "team-a"}, "store", s)
    assert not secret_opted_in({"namespace": "ml"}, "creds-2", s)


def test_the_charts_default_secret_counts_as_allowed():
    s = settings(default_credentials_secret="store-creds")
    assert secret_opted_in({"namespace": "ml"}, "store-creds", s)
    assert not secret_opted_in({"namespace": "ml"}, "other", s)


@pytest.mark.parametrize("value", ["*", "team-a/*", "creds-*"])
def test_a_wildcard_in_the_allow_list_stops_the_operator(value):
    with pytest.raises(SettingsError, match="DISTILLERY_ALLOWED_SECRETS: item 0: wildcards are not supported"):
        settings(allowed_secrets=value)


# ----------------------------------------------------------------------------- endpoints


def test_any_endpoint_without_an_allow_list():
    assert job_violations(job({"endpoint": "http://anything.example:1234"}), Settings()) == []


def test_endpoints_are_compared_by_scheme_host_and_port():
    s = settings(allowed_endpoints="http://minio.minio.svc:9000,https://s3.example.com")
    for ok in ("http://minio.minio.svc:9000", "HTTP://MINIO.minio.svc:9000/", "https://s3.example.com:443",
               "https://s3.example.com/prefix"):
        assert job_violations(job({"endpoint": ok}), s) == [], ok
    for bad in ("http://minio.minio.svc:9001", "https://minio.minio.svc:9000", "http://evil.example:9000",
                "http://s3.example.com", "http://minio.minio.svc"):
        assert job_violations(job({"endpoint": bad}), s) == [
            "output.endpoint: not an endpoint this cluster allows (the chart's allowedEndpoints)"], bad


@pytest.mark.parametrize("tricky", [
    "http://minio.minio.svc:9000@evil.example",  # user info: the host is evil.example
    "http://evil.example#@minio.minio.svc:9000",
    "http://evil.example\\@minio.minio.svc:9000",
    "http://minio.minio.svc:9000?x=1",
    "ftp://minio.minio.svc:9000",
    "http://minio.minio.svc:99999",
])
def test_endpoints_that_parsers_read_differently_are_refused(tricky):
    s = settings(allowed_endpoints="http://minio.minio.svc:9000")
    [violation] = job_violations(job({"endpoint": tricky}), s)
    assert violation.startswith("output.endpoint: ")
    assert "evil" not in violation and "minio" not in violation  # the field, never the value


def test_the_default_endpoint_is_always_allowed():
    s = settings(allowed_endpoints="https://s3.example.com", default_s3_endpoint="http://minio.minio.svc:9000")
    assert job_violations(job({"endpoint": "http://minio.minio.svc:9000"}), s) == []
    assert job_violations(job(), s) == []  # no endpoint: the default store


def test_endpoint_origin():
    assert endpoint_origin("https://S3.Example.com/x") == ("https", "s3.example.com", 443)
    assert endpoint_origin("http://[::1]:9000") == ("http", "::1", 9000)
    with pytest.raises(EndpointError):
        endpoint_origin("http://")


# ----------------------------------------------------------------------------- tolerations

GPU = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
EVERYTHING = {"operator": "Exists"}


def test_without_an_allow_list_only_the_toleration_of_every_taint_is_refused():
    assert job_violations(job(tolerations=[GPU, {"key": "pool", "value": "a"}]), Settings()) == []
    for everything in (EVERYTHING, {"operator": "Exists", "effect": "NoSchedule"}, {"key": "", "operator": "Exists"}):
        assert job_violations(job(tolerations=[GPU, everything]), Settings()) == [
            "resources.tolerations[1]: tolerates every taint (no key, operator Exists); "
            "only the chart's allowedTolerations can allow that"], everything


def test_the_allow_list_matches_key_operator_value_and_effect():
    s = settings(allowed_tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                      {"key": "pool", "operator": "Equal", "value": "batch"},
                                      {"key": "spot"}])
    allowed = [GPU, {"key": "pool", "value": "batch", "effect": "NoExecute"},
               {"key": "spot", "operator": "Exists"}, {"key": "spot", "value": "x", "effect": "NoSchedule"}]
    assert job_violations(job(tolerations=allowed), s) == []
    refused = [
        {"key": "nvidia.com/gpu", "operator": "Exists"},  # every effect, the pattern allows one
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"},
        {"key": "pool", "value": "other"},
        {"key": "pool", "operator": "Exists"},  # every value of pool
        {"key": "dedicated", "operator": "Exists"},
        EVERYTHING,
    ]
    violations = job_violations(job(tolerations=[GPU, *refused]), s)
    assert violations == [f"resources.tolerations[{i}]: not a toleration this cluster allows "
                          "(the chart's allowedTolerations)" for i in range(1, len(refused) + 1)]


def test_the_toleration_of_every_taint_only_when_written_out():
    s = settings(allowed_tolerations=[{"key": "", "operator": "Exists"}])
    assert job_violations(job(tolerations=[EVERYTHING]), s) == []
    assert TolerationPattern(key="").allows(job(tolerations=[EVERYTHING]).spec.resources.tolerations[0])
    assert not TolerationPattern(key="gpu").allows(job(tolerations=[EVERYTHING]).spec.resources.tolerations[0])


@pytest.mark.parametrize(("value", "message"), [
    ("[{", "DISTILLERY_ALLOWED_TOLERATIONS: not valid JSON (line 1 column 3"),
    ('{"key": "a"}', "DISTILLERY_ALLOWED_TOLERATIONS: must be a JSON list"),
    ('[{"operator": "Exists"}]', "DISTILLERY_ALLOWED_TOLERATIONS: item 0: key is required"),
    ('[{"key": "a", "operator": "In"}]', "DISTILLERY_ALLOWED_TOLERATIONS: item 0: operator must be Exists or Equal"),
    ('[{"key": "a", "effect": "NoRun"}]', "DISTILLERY_ALLOWED_TOLERATIONS: item 0: effect must be"),
    ('[{"key": "a", "tolerationSeconds": 5}]', "DISTILLERY_ALLOWED_TOLERATIONS: item 0: unknown field"),
])
def test_a_malformed_toleration_allow_list_stops_the_operator(value, message):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"DISTILLERY_ALLOWED_TOLERATIONS": value})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- node selectors


def test_any_node_selector_without_an_allow_list():
    assert job_violations(job(nodeSelector={"kubernetes.io/hostname": "node-7"}), Settings()) == []


def test_node_selectors_by_key_and_value():
    s = settings(allowed_node_selectors={"pool": ["gpu", "cpu"], "topology.kubernetes.io/zone": ["*"]})
    assert job_violations(job(nodeSelector={"pool": "gpu", "topology.kubernetes.io/zone": "eu-1a"}), s) == []
    assert job_violations(job(nodeSelector={"pool": "control-plane", "kubernetes.io/hostname": "node-7"}), s) == [
        "resources.nodeSelector.kubernetes.io/hostname: not a node label this cluster allows selecting on "
        "(the chart's allowedNodeSelectors)",
        "resources.nodeSelector.pool: value not allowed for this node label (the chart's allowedNodeSelectors)",
    ]
    [odd] = job_violations(job(nodeSelector={"bad key\nwith newline": "x"}), s)
    assert odd.startswith("resources.nodeSelector: ") and "\n" not in odd


@pytest.mark.parametrize(("value", "message"), [
    ('["pool"]', "DISTILLERY_ALLOWED_NODE_SELECTORS: must be a JSON object"),
    ('{"pool": "gpu"}', "DISTILLERY_ALLOWED_NODE_SELECTORS: key pool: must be a non-empty list of strings"),
    ('{"pool": []}', "DISTILLERY_ALLOWED_NODE_SELECTORS: key pool: must be a non-empty list"),
    ("{pool: [gpu]}", "DISTILLERY_ALLOWED_NODE_SELECTORS: not valid JSON"),
])
def test_a_malformed_node_selector_allow_list_stops_the_operator(value, message):
    with pytest.raises(SettingsError, match="^" + message.replace("[", r"\[")):
        Settings.from_env({"DISTILLERY_ALLOWED_NODE_SELECTORS": value})


# ----------------------------------------------------------------------------- together, settings


def test_every_violation_is_reported_at_once():
    s = settings(allowed_endpoints="http://minio:9000", allowed_node_selectors={"pool": ["gpu"]})
    violations = job_violations(job({"endpoint": "http://x:1"}, tolerations=[EVERYTHING], nodeSelector={"a": "b"}), s)
    assert [v.split(":")[0] for v in violations] == [
        "output.endpoint", "resources.tolerations[0]", "resources.nodeSelector.a"]


def test_store_timeouts_and_work_dir_limit_from_the_environment():
    s = Settings()
    assert (s.store_connect_timeout_s, s.store_read_timeout_s, s.store_max_attempts) == (3.0, 10.0, 2)
    assert s.work_dir_size_limit == "20Gi"
    s = settings(store_connect_timeout_seconds="1.5", store_read_timeout_seconds="4", store_max_attempts="3",
                 work_dir_size_limit="50Gi")
    assert (s.store_connect_timeout_s, s.store_read_timeout_s, s.store_max_attempts) == (1.5, 4.0, 3)
    assert s.work_dir_size_limit == "50Gi"


@pytest.mark.parametrize(("env", "message"), [
    ({"DISTILLERY_WORK_DIR_SIZE_LIMIT": "20 GB"}, "DISTILLERY_WORK_DIR_SIZE_LIMIT: not a Kubernetes quantity"),
    ({"DISTILLERY_STORE_MAX_ATTEMPTS": "0"}, "DISTILLERY_STORE_MAX_ATTEMPTS: must be at least 1"),
    ({"DISTILLERY_STORE_READ_TIMEOUT_SECONDS": "soon"}, "DISTILLERY_STORE_READ_TIMEOUT_SECONDS: not a number"),
    ({"DISTILLERY_BACKOFF_LIMIT": "two"}, "DISTILLERY_BACKOFF_LIMIT: not an integer"),
    ({"DISTILLERY_ALLOWED_ENDPOINTS": "minio:9000"}, "DISTILLERY_ALLOWED_ENDPOINTS: item 0: must start with http"),
    ({"DISTILLERY_ALLOWED_ENDPOINTS": "http://minio:9000", "DISTILLERY_DEFAULT_S3_ENDPOINT": "http://u:p@minio:9000"},
     "DISTILLERY_DEFAULT_S3_ENDPOINT: must not carry user info"),
    ({"DISTILLERY_ALLOWED_SECRETS": "Not_A_Name"}, "DISTILLERY_ALLOWED_SECRETS: item 0: not a Secret name"),
])
def test_bad_settings_fail_with_one_line_naming_the_variable(env, message):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert "u:p" not in str(err.value)


def test_the_operator_refuses_to_start_with_a_malformed_allow_list():
    """`distillery operator` (the container's command) exits 2 with one line, before it talks to
    any cluster."""
    env = {**os.environ, "DISTILLERY_ALLOWED_NODE_SELECTORS": '{"pool": "gpu"}', "KUBECONFIG": "/nonexistent"}
    proc = subprocess.run([sys.executable, "-m", "distillery.cli", "operator"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: DISTILLERY_ALLOWED_NODE_SELECTORS: key pool: must be a non-empty list of strings "
        '(["*"] for any value)']
