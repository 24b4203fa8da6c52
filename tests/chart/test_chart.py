"""The Helm chart (charts/distillery), rendered by a real helm binary.

helm is built from its Go module by scripts/build-control-plane.sh; it is found through
DISTILLERY_HELM_BIN or ~/.cache/distillery/tools/control-plane.env. Without it these tests skip,
unless DISTILLERY_REQUIRE_CONTROL_PLANE=1 (then a missing helm is a failure).

What they prove: the chart lints; the operator Deployment is a single, restricted, probed pod
with the environment the operator reads (operator/distillery/controller/settings.py); RBAC is
least-privilege in both modes (cluster-wide and per namespace); values.schema.json rejects bad
values with helm's message; NOTES.txt renders; the chart's CRDs are byte-identical to crds/.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from distillery.controller.policy import TolerationPattern
from distillery.controller.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "distillery"
CRDS = REPO / "crds"
SYNC = "run scripts/sync-chart-crds.sh"
NAMESPACE = "distillery"
RELEASE = "distillery"


def find_helm() -> tuple[Path | None, str]:
    env = os.environ.get("DISTILLERY_HELM_BIN")
    if env:
        return (Path(env) if Path(env).is_file() else None), f"DISTILLERY_HELM_BIN={env}"
    tools = Path(os.environ.get("DISTILLERY_TOOLS_DIR") or Path.home() / ".cache/distillery/tools")
    env_file = tools / "control-plane.env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, _, value = line.strip().partition("=")
            if key == "DISTILLERY_HELM_BIN" and value and Path(value.strip("'\"")).is_file():
                return Path(value.strip("'\"")), str(env_file)
    on_path = shutil.which("helm")
    if on_path:
        return Path(on_path), "PATH"
    return None, f"DISTILLERY_HELM_BIN, {env_file} and PATH"


@pytest.fixture(scope="session")
def helm() -> Path:
    path, where = find_helm()
    if path is None:
        message = f"helm not found (looked at {where}); build it with scripts/build-control-plane.sh"
        if os.environ.get("DISTILLERY_REQUIRE_CONTROL_PLANE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HELM_CACHE_HOME": "/tmp/distillery-helm-cache",
                               "HELM_CONFIG_HOME": "/tmp/distillery-helm-config",
                               "HELM_DATA_HOME": "/tmp/distillery-helm-data"})
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def render(helm: Path, *set_args: str, chart: Path = CHART) -> list[dict]:
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE]
    for s in set_args:
        args += ["--set", s]
    out = run_helm(helm, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(docs: list[dict]) -> dict:
    deployment = one(docs, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c["env"]}


def rules_of(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(kind/name/namespace, role document, rule) for every RBAC rule rendered."""
    out = []
    for d in docs:
        if d["kind"] in ("Role", "ClusterRole"):
            where = f"{d['kind']}/{d['metadata']['name']}/{d['metadata'].get('namespace', '')}"
            out += [(where, d, r) for r in d.get("rules") or []]
    return out


def allowed(rules, group: str, resource: str, verb: str) -> bool:
    return any(group in r.get("apiGroups", []) and resource in r.get("resources", []) and verb in r.get("verbs", [])
               for _, _, r in rules)


@pytest.fixture(scope="session")
def default_docs(helm) -> list[dict]:
    return render(helm)


CUSTOM = (
    "watchNamespaces={team-a,team-b}",
    "metrics.serviceMonitor.enabled=true",
    "metrics.serviceMonitor.labels.release=prometheus",
    "trainer.image.repository=registry.example.com/ml/distillery-trainer",
    "trainer.image.tag=1.2.3-cuda",
    "trainer.image.pullPolicy=Always",
    "trainer.defaultResources.cpu=4",
    "trainer.defaultResources.memory=16Gi",
    "trainer.jobTTLSeconds=3600",
    "trainer.backoffLimit=5",
    "store.endpoint=http://minio.minio.svc:9000",
    "store.credentialsSecret=store-creds",
    "pollIntervalSeconds=2.5",
    "image.repository=registry.example.com/ml/distillery-operator",
    "image.digest=sha256:" + "a" * 64,
    "resources.requests.cpu=200m",
    "resources.limits.memory=1Gi",
    "operator.verbose=true",
    "trainer.workDirSizeLimit=50Gi",
    "store.connectTimeoutSeconds=1.5",
    "store.readTimeoutSeconds=4",
    "store.maxAttempts=3",
    "store.workers=8",
    "policy.allowedSecrets={store-creds,team-b/archive}",
    "policy.allowedEndpoints={http://minio.minio.svc.cluster.local:9000,https://s3.example.com}",
    "policy.allowedTolerations[0].key=nvidia.com/gpu",
    "policy.allowedTolerations[0].operator=Exists",
    "policy.allowedTolerations[0].effect=NoSchedule",
    "policy.allowedNodeSelectors.pool={gpu,cpu}",
    "policy.allowedNodeSelectors.topology\\.kubernetes\\.io/zone={*}",
)


@pytest.fixture(scope="session")
def custom_docs(helm) -> list[dict]:
    return render(helm, *CUSTOM)


# ----------------------------------------------------------------------------------- lint


def test_helm_lint(helm):
    out = run_helm(helm, "lint", str(CHART), "--strict").stdout
    assert "0 chart(s) failed" in out


def test_helm_lint_with_non_default_values(helm):
    args = ["lint", str(CHART), "--strict"]
    for s in CUSTOM:
        args += ["--set", s]
    assert "0 chart(s) failed" in run_helm(helm, *args).stdout


# ----------------------------------------------------------------------------------- Deployment


def test_deployment_is_one_restricted_replica_with_recreate(default_docs):
    deployment = one(default_docs, "Deployment")
    assert deployment["metadata"]["namespace"] == NAMESPACE
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(default_docs)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # A writable /tmp, since the root filesystem is read-only.
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])


def test_liveness_probe_is_kopfs_healthz(default_docs):
    c = container(default_docs)
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and probe["port"] == 8081
    assert c["args"][0] == "operator"
    assert "--liveness=http://0.0.0.0:8081/healthz" in c["args"]
    assert {"name": "health", "containerPort": 8081, "protocol": "TCP"} in c["ports"]


def test_resources_are_requested(default_docs, custom_docs):
    assert container(default_docs)["resources"]["requests"] == {"cpu": "50m", "memory": "128Mi"}
    custom = container(custom_docs)["resources"]
    assert custom["requests"]["cpu"] == "200m" and custom["limits"]["memory"] == "1Gi"


def test_default_env_matches_the_operators_settings(default_docs):
    env = env_of(container(default_docs))
    assert env["DISTILLERY_NAMESPACES"] == ""  # the whole cluster
    assert env["DISTILLERY_TRAINER_IMAGE"] == "ghcr.io/distillery/trainer:0.1.0"
    assert env["DISTILLERY_METRICS_PORT"] == "8080"
    assert "DISTILLERY_DEFAULT_S3_ENDPOINT" not in env and "DISTILLERY_DEFAULT_CREDENTIALS_SECRET" not in env
    settings = Settings.from_env({k: v for k, v in env.items() if v is not None})
    assert settings.namespaces == []
    assert settings.metrics_port == 8080
    assert settings.job_ttl_seconds == 86400 and settings.backoff_limit == 2
    assert container(default_docs)["image"] == "ghcr.io/distillery/operator:0.1.0"
    # No allow-lists by default (only the toleration of every taint is refused), bounded store calls.
    assert settings.allowed_secrets == () and settings.allowed_endpoints == ()
    assert settings.allowed_tolerations == () and settings.allowed_node_selectors == {}
    assert settings.work_dir_size_limit == "20Gi"
    assert (settings.store_connect_timeout_s, settings.store_read_timeout_s, settings.store_max_attempts) == (3, 10, 2)
    assert settings.store_workers == 4


def test_non_default_values_reach_the_operator(custom_docs):
    c = container(custom_docs)
    env = env_of(c)
    settings = Settings.from_env({k: v for k, v in env.items() if v is not None})
    assert settings.namespaces == ["team-a", "team-b"]
    assert settings.trainer_image == "registry.example.com/ml/distillery-trainer:1.2.3-cuda"
    assert settings.image_pull_policy == "Always"
    assert settings.default_cpu == "4" and settings.default_memory == "16Gi"
    assert settings.job_ttl_seconds == 3600 and settings.backoff_limit == 5
    assert settings.default_endpoint == "http://minio.minio.svc:9000"
    assert settings.default_credentials_secret == "store-creds"
    assert settings.poll_interval_s == 2.5
    assert c["image"] == "registry.example.com/ml/distillery-operator:0.1.0@sha256:" + "a" * 64
    assert "--verbose" in c["args"]
    assert settings.work_dir_size_limit == "50Gi"
    assert (settings.store_connect_timeout_s, settings.store_read_timeout_s, settings.store_max_attempts) == (1.5, 4, 3)
    assert settings.store_workers == 8
    assert settings.allowed_secrets == ("store-creds", "team-b/archive")
    assert settings.allowed_endpoints == ("http://minio.minio.svc.cluster.local:9000", "https://s3.example.com")
    assert settings.allowed_tolerations == (TolerationPattern(key="nvidia.com/gpu", operator="Exists",
                                                              effect="NoSchedule"),)
    assert settings.allowed_node_selectors == {"pool": ("gpu", "cpu"), "topology.kubernetes.io/zone": ("*",)}
    # Every variable the chart sets is one the operator reads.
    known = {"DISTILLERY_TRAINER_IMAGE", "DISTILLERY_IMAGE_PULL_POLICY", "DISTILLERY_NAMESPACES",
             "DISTILLERY_JOB_TTL_SECONDS", "DISTILLERY_BACKOFF_LIMIT", "DISTILLERY_DEFAULT_CPU",
             "DISTILLERY_DEFAULT_MEMORY", "DISTILLERY_DEFAULT_S3_ENDPOINT",
             "DISTILLERY_DEFAULT_CREDENTIALS_SECRET", "DISTILLERY_POLL_INTERVAL_SECONDS",
             "DISTILLERY_METRICS_PORT", "DISTILLERY_WORK_DIR_SIZE_LIMIT",
             "DISTILLERY_STORE_CONNECT_TIMEOUT_SECONDS", "DISTILLERY_STORE_READ_TIMEOUT_SECONDS",
             "DISTILLERY_STORE_MAX_ATTEMPTS", "DISTILLERY_STORE_WORKERS", "DISTILLERY_ALLOWED_SECRETS", "DISTILLERY_ALLOWED_ENDPOINTS",
             "DISTILLERY_ALLOWED_TOLERATIONS", "DISTILLERY_ALLOWED_NODE_SELECTORS"}
    assert {k for k in env if k.startswith("DISTILLERY_")} == known


def test_metrics_can_be_turned_off(helm):
    docs = render(helm, "metrics.enabled=false")
    env = env_of(container(docs))
    assert env["DISTILLERY_METRICS_PORT"] == "0"  # the operator serves no metrics on port 0
    service = one(docs, "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["health"]


# ----------------------------------------------------------------------------------- Service, ServiceMonitor


def test_metrics_service_selects_the_operator(default_docs):
    service = one(default_docs, "Service")
    deployment = one(default_docs, "Deployment")
    selector = service["spec"]["selector"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["metrics"]["port"] == 8080 and ports["metrics"]["targetPort"] == "metrics"
    assert not [d for d in default_docs if d["kind"] == "ServiceMonitor"], "ServiceMonitor is optional (off)"


def test_service_monitor_when_enabled(custom_docs):
    sm = one(custom_docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    service = one(custom_docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


# ----------------------------------------------------------------------------------- RBAC


def assert_least_privilege(rules) -> None:
    for where, _, rule in rules:
        assert "*" not in rule.get("verbs", []), f"{where}: wildcard verb in {rule}"
        assert "*" not in rule.get("resources", []), f"{where}: wildcard resource in {rule}"
        assert "*" not in rule.get("apiGroups", []), f"{where}: wildcard API group in {rule}"
        assert not rule.get("nonResourceURLs"), f"{where}: non-resource URLs in {rule}"
        for forbidden in ("escalate", "bind", "impersonate", "deletecollection", "update"):
            if forbidden == "update" and rule.get("resources") in (["distillationjobs/finalizers"],
                                                                  ["distillationsearches/finalizers"]):
                continue  # blockOwnerDeletion on a trainer Job's (a trial's) ownerReference needs it
            assert forbidden not in rule.get("verbs", []), f"{where}: {forbidden} in {rule}"
        if "secrets" in rule.get("resources", []):
            assert rule["verbs"] == ["get"], f"{where}: Secrets may only be read by name: {rule}"
            assert rule["resources"] == ["secrets"]
    assert allowed(rules, "distillery.io", "distillationjobs/status", "patch")
    assert allowed(rules, "distillery.io", "studentmodels/status", "patch")
    assert allowed(rules, "distillery.io", "studentmodels", "create")
    assert allowed(rules, "batch", "jobs", "create") and allowed(rules, "batch", "jobs", "delete")
    assert allowed(rules, "batch", "jobs", "watch")  # the operator follows its trainer Jobs by a watch
    assert allowed(rules, "", "events", "create")
    assert allowed(rules, "", "pods", "list")
    assert allowed(rules, "apiextensions.k8s.io", "customresourcedefinitions", "watch")
    # Never: the spec is not the operator's (kopf patches only annotations/finalizers).
    assert not allowed(rules, "distillery.io", "distillationjobs", "update")
    # A search creates its trials; it never edits or deletes a job (trials go with their search by GC).
    assert allowed(rules, "distillery.io", "distillationjobs", "create")
    assert not allowed(rules, "distillery.io", "distillationjobs", "delete")
    assert allowed(rules, "distillery.io", "distillationsearches/status", "patch")
    assert allowed(rules, "distillery.io", "distillationsearches", "watch")
    assert not allowed(rules, "distillery.io", "distillationsearches", "update")
    assert not allowed(rules, "distillery.io", "studentmodels", "patch")  # only their status
    assert not allowed(rules, "", "pods", "create")
    assert not allowed(rules, "", "secrets", "list")
    # A multi-worker job's headless Service: created, then left to the garbage collector.
    assert allowed(rules, "", "services", "create")
    assert not allowed(rules, "", "services", "delete") and not allowed(rules, "", "services", "patch")


def test_cluster_wide_rbac_is_least_privilege(default_docs):
    rules = rules_of(default_docs)
    assert_least_privilege(rules)
    assert not [d for d in default_docs if d["kind"] in ("Role", "RoleBinding")]
    cr = one(default_docs, "ClusterRole")
    crb = one(default_docs, "ClusterRoleBinding")
    assert crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                              "name": cr["metadata"]["name"]}
    sa = one(default_docs, "ServiceAccount")
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    assert one(default_docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    # kopf looks at namespaces only when it watches a list of them (observation.py).
    assert not allowed(rules, "", "namespaces", "list")


def test_watch_namespaces_gives_a_role_per_namespace(custom_docs):
    rules = rules_of(custom_docs)
    assert_least_privilege(rules)
    roles = [d for d in custom_docs if d["kind"] == "Role"]
    bindings = [d for d in custom_docs if d["kind"] == "RoleBinding"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        assert b["subjects"][0]["namespace"] == NAMESPACE
    # Cluster-wide only what kopf reads to discover its resources and follow the listed
    # namespaces: no Secrets, no Jobs.
    cluster_rules = [r for where, _, r in rules if where.startswith("ClusterRole/")]
    assert cluster_rules == [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]
    for role in roles:
        role_rules = [(r["metadata"]["name"], r, rule) for r in [role] for rule in r["rules"]]
        assert allowed(role_rules, "", "secrets", "get")
        assert allowed(role_rules, "distillery.io", "distillationjobs/status", "patch")
        assert allowed(role_rules, "batch", "jobs", "watch")  # per namespace, not cluster-wide


def test_rbac_can_be_left_to_the_cluster_admin(helm):
    docs = render(helm, "rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops")
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
                                                  "ServiceAccount")]
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


# ----------------------------------------------------------------------------------- helm test


def test_helm_test_pods_check_crds_and_health(default_docs):
    tests = [d for d in default_docs if d["kind"] == "Pod"]
    assert len(tests) == 2
    for pod in tests:
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert pod["spec"]["restartPolicy"] == "Never"
        sc = pod["spec"]["containers"][0]["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    scripts = "\n".join(pod["spec"]["containers"][0]["args"][0] for pod in tests)
    assert "distillationjobs.distillery.io" in scripts and "Established" in scripts
    assert "/healthz" in scripts and ":8081" in scripts
    # Both scripts are valid Python (they run in the operator image).
    for pod in tests:
        compile(pod["spec"]["containers"][0]["args"][0], pod["metadata"]["name"], "exec")


# ----------------------------------------------------------------------------------- values.schema.json


@pytest.mark.parametrize(("value", "message"), [
    ("replicaCount=2", "at '/replicaCount': maximum: got 2, want 1"),
    ("metrics.port=x", "at '/metrics/port': got string, want integer"),
    ("watchNamespaces=a", "at '/watchNamespaces': got string, want array"),
    ("watchNamespaces={Team_A}", "at '/watchNamespaces/0'"),
    ("watchNamespace={a}", "additional properties 'watchNamespace' not allowed"),
    ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
    ("image.digest=latest", "at '/image/digest'"),
    ("trainer.defaultResources.memory=lots", "at '/trainer/defaultResources/memory'"),
    ("store.endpoint=minio:9000", "at '/store/endpoint'"),
    ("health.port=70000", "at '/health/port': maximum"),
    ("trainer.workDirSizeLimit=20 GB", "at '/trainer/workDirSizeLimit'"),
    ("store.maxAttempts=0", "at '/store/maxAttempts': minimum: got 0, want 1"),
    ("store.readTimeoutSeconds=-1", "at '/store/readTimeoutSeconds'"),
    ("store.endpoint=http://user:pass@minio:9000", "at '/store/endpoint'"),
    # No wildcard Secret: it would undo the opt-in.
    ("policy.allowedSecrets={*}", "at '/policy/allowedSecrets/0'"),
    ("policy.allowedEndpoints={minio:9000}", "at '/policy/allowedEndpoints/0'"),
    ("policy.allowedTolerations[0].operator=Exists", "at '/policy/allowedTolerations/0': missing property 'key'"),
    ("policy.allowedTolerations[0].effect=NoRun", "at '/policy/allowedTolerations/0/effect'"),
    ("policy.allowedNodeSelectors.pool=gpu", "at '/policy/allowedNodeSelectors/pool': got string, want array"),
    ("policy.allowedSecret={a}", "additional properties 'allowedSecret' not allowed"),
])
def test_schema_rejects_bad_values(helm, value, message):
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--set", value, check=False)
    assert proc.returncode != 0, f"--set {value} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(("values", "message"), [
    (("metrics.enabled=false", "metrics.serviceMonitor.enabled=true"),
     "metrics.serviceMonitor.enabled=true needs metrics.enabled=true"),
    (("metrics.port=8081",), "metrics.port and health.port must differ"),
    (("serviceAccount.create=false",), "serviceAccount.name is required when serviceAccount.create is false"),
])
def test_cross_field_checks_fail_with_a_clear_message(helm, values, message):
    args = ["template", RELEASE, str(CHART)]
    for v in values:
        args += ["--set", v]
    proc = run_helm(helm, *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------------- NOTES.txt


def test_notes_render_and_say_how_to_submit_a_job(helm, tmp_path):
    """helm only renders NOTES.txt on install; render it here through a define in a copy."""
    copy = tmp_path / "distillery"
    shutil.copytree(CHART, copy)
    notes = (copy / "templates" / "NOTES.txt").read_text()
    (copy / "templates" / "NOTES.txt").unlink()
    (copy / "templates" / "_notes_under_test.tpl").write_text('{{- define "notes-under-test" -}}\n' + notes + "{{- end -}}\n")
    (copy / "templates" / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '{{ include "notes-under-test" . | indent 4 }}\n')
    for set_args in ((), ("watchNamespaces={ml}", "store.credentialsSecret=s3")):
        docs = render(helm, *set_args, chart=copy)
        text = one(docs, "ConfigMap", "notes")["data"]["notes"]
        assert "kind: DistillationJob" in text
        assert "kubectl" in text and "wait --for=condition=Succeeded" in text
        assert "helm test" in text
        if set_args:
            assert "-n ml apply -f job.yaml" in text and "create secret generic s3" in text
            assert "distillery.io/usable-by-jobs" not in text  # the chart's own Secret is allowed
        else:
            assert "label secret store-creds distillery.io/usable-by-jobs=true" in text


# ----------------------------------------------------------------------------------- CRDs


def test_chart_crds_are_byte_identical():
    """charts/distillery/crds/ carries copies of crds/ (the single source, generated from the
    models by `distillery crds`); helm installs them before the templates."""
    source = sorted(p.name for p in CRDS.glob("*.yaml"))
    copies = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert source, "crds/ is empty"
    assert copies == source, f"the chart's CRDs are not those of crds/ ({copies} vs {source}); {SYNC}"
    differ = [n for n in source if not filecmp.cmp(CRDS / n, CHART / "crds" / n, shallow=False)]
    assert not differ, f"charts/distillery/crds/ differs from crds/ for {differ}; {SYNC}"


def test_sync_script_check_mode_agrees():
    proc = subprocess.run(["bash", str(REPO / "scripts" / "sync-chart-crds.sh"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_crds_are_not_rendered_as_templates(default_docs):
    # helm installs crds/ itself (and never deletes them on uninstall); templates must not
    # carry a second copy.
    assert not [d for d in default_docs if d["kind"] == "CustomResourceDefinition"]
    kinds = {d["kind"] for d in default_docs}
    assert kinds == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment", "Pod"}
