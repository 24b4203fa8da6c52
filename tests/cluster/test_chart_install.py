"""The Helm chart's objects in a real API server: RBAC as the operator's ServiceAccount, Pod
Security "restricted" admission of the operator's pod, and no GitOps drift.

The chart is rendered by helm (``helm template``) and its objects applied with kubectl, except
the Deployment's pods, which need images (there is no container runtime here): the Deployment
and its pod template go through the API server's admission with ``--dry-run=server``. RBAC is
checked twice: with ``kubectl auth can-i --as=system:serviceaccount:...`` (the authorizer's
answer), and with a real token of the ServiceAccount (``kubectl create token``) making real
requests.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from distillery.controller import status as st
from tests.chart.test_chart import CHART
from tests.cluster.conftest import Cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_JOB = REPO / "examples" / "gitops" / "distillationjob.yaml"


@dataclass
class Installed:
    release: str
    namespace: str  # where the operator runs (its ServiceAccount, Service, Deployment)
    service_account: str
    docs: list[dict]

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def one(self, kind: str) -> dict:
        found = [d for d in self.docs if d["kind"] == kind]
        assert len(found) == 1, [d["metadata"]["name"] for d in found]
        return found[0]


def render(helm: Path, release: str, namespace: str, *set_args: str) -> list[dict]:
    args = [str(helm), "template", release, str(CHART), "--namespace", namespace]
    for s in set_args:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def install(control_plane: Cluster, helm: Path, namespace: str, *set_args: str) -> Iterator[Installed]:
    """Apply every rendered object except the Deployment and the `helm test` pods (no images)."""
    release = f"d{secrets.token_hex(3)}"  # ClusterRoles are cluster-wide: one name per test
    docs = render(helm, release, namespace, *set_args)
    applied = [d for d in docs if d["kind"] not in ("Deployment", "Pod")]
    assert {d["kind"] for d in applied} >= {"ServiceAccount", "Service", "ClusterRole", "ClusterRoleBinding"}
    control_plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": applied}))
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    try:
        yield Installed(release, namespace, sa, docs)
    finally:
        for d in applied:
            if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                control_plane.kubectl("delete", d["kind"], d["metadata"]["name"], "--ignore-not-found", check=False)


@pytest.fixture
def namespaced(control_plane, namespace, helm) -> Iterator[Installed]:
    """Operator in `namespace`, watching only `namespace` (Role + RoleBinding there)."""
    yield from install(control_plane, helm, namespace, f"watchNamespaces={{{namespace}}}")


@pytest.fixture
def clusterwide(control_plane, namespace, helm) -> Iterator[Installed]:
    """Operator in `namespace`, watching the whole cluster (ClusterRole + ClusterRoleBinding)."""
    yield from install(control_plane, helm, namespace)


def can_i(control_plane: Cluster, who: Installed, verb: str, resource: str, namespace: str | None = None,
          subresource: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={who.user}"]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    if subresource:
        args.append(f"--subresource={subresource}")
    result = control_plane.kubectl(*args, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {result.stdout}{result.stderr}"
    return answer == "yes"


def token_of(control_plane: Cluster, who: Installed) -> str:
    """A real token of the ServiceAccount (TokenRequest API): not impersonation."""
    return control_plane.kubectl("create", "token", who.service_account, "-n", who.namespace,
                                 "--duration=10m").stdout.strip()


def as_service_account(control_plane: Cluster, who: Installed, *args: str, input: str | None = None,
                       check: bool = False) -> subprocess.CompletedProcess:
    """kubectl authenticated with the ServiceAccount's own token."""
    return control_plane.kubectl("--token", token_of(control_plane, who), *args, input=input, check=check)


def client_as_service_account(control_plane: Cluster, who: Installed):
    """The official Python client (what the operator uses) with the ServiceAccount's token."""
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(control_plane.kubeconfig), client_configuration=cfg)
    cfg.api_key = {"authorization": "Bearer " + token_of(control_plane, who)}
    cfg.api_key_prefix = {}
    return client.ApiClient(cfg)


# ----------------------------------------------------------------------------------- RBAC


def test_namespaced_rbac_allows_what_the_operator_does_and_nothing_more(control_plane, namespace, namespaced):
    yes = [("create", "jobs.batch", None), ("get", "jobs.batch", None), ("list", "jobs.batch", None),
           ("watch", "jobs.batch", None), ("delete", "jobs.batch", None),
           ("patch", "distillationjobs.distillery.io", "status"),
           ("patch", "studentmodels.distillery.io", "status"),
           ("patch", "distillationjobs.distillery.io", None),  # kopf's annotations
           ("watch", "distillationjobs.distillery.io", None),
           ("create", "studentmodels.distillery.io", None),
           ("update", "distillationjobs.distillery.io", "finalizers"),  # blockOwnerDeletion
           ("get", "secrets", None),
           ("list", "pods", None),
           ("create", "events", None), ("create", "events.events.k8s.io", None),
           ("create", "distillationjobs.distillery.io", None),  # a search's trials
           ("watch", "distillationsearches.distillery.io", None),
           ("patch", "distillationsearches.distillery.io", "status"),
           ("update", "distillationsearches.distillery.io", "finalizers")]  # blockOwnerDeletion
    no = [("list", "secrets", None), ("watch", "secrets", None), ("create", "secrets", None),
          ("delete", "namespaces", None), ("create", "pods", None), ("delete", "pods", None),
          ("update", "distillationjobs.distillery.io", None), ("update", "distillationsearches.distillery.io", None),
          ("delete", "distillationsearches.distillery.io", None),
          ("delete", "distillationjobs.distillery.io", None), ("update", "distillationjobs.distillery.io", "status"),
          ("patch", "studentmodels.distillery.io", None), ("delete", "studentmodels.distillery.io", None),
          ("create", "roles.rbac.authorization.k8s.io", None), ("create", "serviceaccounts", "token"),
          ("*", "*", None)]
    wrong = [(verb, resource, sub) for verb, resource, sub in yes
             if not can_i(control_plane, namespaced, verb, resource, namespace, sub)]
    wrong += [(verb, resource, sub, "allowed") for verb, resource, sub in no
              if can_i(control_plane, namespaced, verb, resource, namespace, sub)]
    assert not wrong, f"RBAC differs from what the operator needs: {wrong}"
    # Nothing outside the watched namespace.
    for verb, resource in (("create", "jobs.batch"), ("get", "secrets"), ("list", "distillationjobs.distillery.io")):
        assert not can_i(control_plane, namespaced, verb, resource, "default"), (verb, resource)
    # Cluster-wide: only reading the CRDs (kopf's resource discovery) and namespaces (kopf follows
    # the listed ones).
    assert can_i(control_plane, namespaced, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert can_i(control_plane, namespaced, "watch", "namespaces")
    assert not can_i(control_plane, namespaced, "get", "secrets")  # all namespaces
    assert not can_i(control_plane, namespaced, "delete", "customresourcedefinitions.apiextensions.k8s.io")


def test_clusterwide_rbac_has_no_secret_listing_and_no_wildcards(control_plane, namespace, clusterwide):
    anywhere = "default"
    assert can_i(control_plane, clusterwide, "create", "jobs.batch", anywhere)
    assert can_i(control_plane, clusterwide, "patch", "distillationjobs.distillery.io", anywhere, "status")
    assert can_i(control_plane, clusterwide, "get", "secrets", anywhere)
    assert can_i(control_plane, clusterwide, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can_i(control_plane, clusterwide, "list", "namespaces")  # kopf does not, cluster-wide
    assert can_i(control_plane, clusterwide, "list", "distillationjobs.distillery.io")  # all namespaces
    assert not can_i(control_plane, clusterwide, "list", "secrets")  # all namespaces
    assert not can_i(control_plane, clusterwide, "list", "secrets", anywhere)
    # Secrets by name only: the operator reads the one a job names (its opt-in label, then the
    # store credentials) and never sees the others.
    assert not can_i(control_plane, clusterwide, "watch", "secrets", anywhere)
    assert not can_i(control_plane, clusterwide, "watch", "secrets")
    assert not can_i(control_plane, clusterwide, "delete", "namespaces")
    assert not can_i(control_plane, clusterwide, "create", "pods", anywhere)
    assert not can_i(control_plane, clusterwide, "*", "*", anywhere)
    assert not can_i(control_plane, clusterwide, "*", "*")


def test_a_real_service_account_token_works_where_it_should(control_plane, namespace, namespaced):
    # Allowed: what the operator does.
    ok = as_service_account(control_plane, namespaced, "get", "distillationjobs,studentmodels,jobs,pods",
                            "-n", namespace)
    assert ok.returncode == 0, ok.stderr
    crds = as_service_account(control_plane, namespaced, "get", "customresourcedefinitions", "-o", "name")
    assert "customresourcedefinition.apiextensions.k8s.io/distillationjobs.distillery.io" in crds.stdout
    trainer_job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "rbac-probe", "namespace": namespace},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                                       "containers": [{"name": "c", "image": "example.invalid/none:1"}]}}},
    }
    created = as_service_account(control_plane, namespaced, "create", "--dry-run=server", "-f", "-",
                                 input=json.dumps(trainer_job))
    assert created.returncode == 0, created.stderr
    # Refused: listing Secrets, reading other namespaces, touching namespaces.
    for args in (("get", "secrets", "-n", namespace), ("get", "jobs", "-n", "default"),
                 ("delete", "namespace", namespace, "--dry-run=server")):
        refused = as_service_account(control_plane, namespaced, *args)
        assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), (args, refused.stderr)
    # The rules, as the API server reports them to the ServiceAccount itself: no wildcard.
    rules = as_service_account(control_plane, namespaced, "auth", "can-i", "--list", "-n", namespace, check=True)
    for line in rules.stdout.splitlines()[1:]:
        resources, _, _, verbs = (line.split(None, 3) + ["", "", "", ""])[:4]
        if resources.startswith("selfsubject") or resources.startswith("/"):
            continue  # every authenticated user's own access reviews and discovery URLs
        assert "*" not in verbs, line


def test_the_operator_can_write_status_with_its_own_token(control_plane, namespace, namespaced):
    job = yaml.safe_load(EXAMPLE_JOB.read_text())
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
    # As the operator does it: a PATCH of the /status subresource, no GET before it (RBAC grants
    # patch only; `kubectl patch` would GET first and be refused).
    from kubernetes import client

    api = client.CustomObjectsApi(client_as_service_account(control_plane, namespaced))
    api.patch_namespaced_custom_object_status(
        "distillery.io", "v1alpha1", namespace, "distillationjobs", job["metadata"]["name"],
        {"status": st.failed(1, "SecretMissing", "Secret 'store-creds' not found", None).to_wire()},
        _content_type="application/merge-patch+json")
    # ...and a Secret by name (no such Secret: 404, not 403).
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as missing:
        client.CoreV1Api(client_as_service_account(control_plane, namespaced)).read_namespaced_secret(
            "store-creds", namespace)
    assert missing.value.status == 404
    phase = control_plane.kubectl("get", "distillationjob", job["metadata"]["name"], "-n", namespace,
                                  "-o", "jsonpath={.status.phase}").stdout
    assert phase == "Failed"


# ----------------------------------------------------------------------------------- Pod Security


def test_operator_pod_passes_restricted_pod_security(control_plane, namespace, namespaced):
    """`namespace` enforces (and warns on) the restricted Pod Security Standard."""
    labels = json.loads(control_plane.kubectl("get", "namespace", namespace, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    deployment = namespaced.one("Deployment")
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(deployment))
    assert "PodSecurity" not in out.stderr, out.stderr  # the warn mode reports violations on workloads
    # Enforcement applies to pods: admit the Deployment's pod template as a pod.
    template = deployment["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "operator-admission-probe", "namespace": namespace, "labels": template["metadata"]["labels"]},
           "spec": template["spec"]}
    admitted = control_plane.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert admitted.returncode == 0, admitted.stderr
    assert "PodSecurity" not in admitted.stderr, admitted.stderr
    # The `helm test` pods too.
    for test_pod in [d for d in namespaced.docs if d["kind"] == "Pod"]:
        res = control_plane.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(test_pod), check=False)
        assert res.returncode == 0 and "PodSecurity" not in res.stderr, res.stderr


def test_a_weakened_pod_would_be_refused(control_plane, namespace, namespaced):
    """The admission check above is real: the same pod as root is refused."""
    template = namespaced.one("Deployment")["spec"]["template"]
    spec = json.loads(json.dumps(template["spec"]))
    spec["securityContext"]["runAsNonRoot"] = False
    spec["containers"][0]["securityContext"]["runAsNonRoot"] = False
    spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "weak", "namespace": namespace}, "spec": spec}
    refused = control_plane.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr


# ----------------------------------------------------------------------------------- GitOps: no drift


def operator_writes(control_plane: Cluster, namespace: str, name: str) -> dict:
    """What an operator writes: annotations under distillery.io/ (kopf's, as it keeps them on
    searches: a merge patch of the object's metadata, never spec) and the status subresource.
    Returns the object before."""
    obj = json.loads(control_plane.kubectl("get", "distillationjob", name, "-n", namespace, "-o", "json").stdout)
    control_plane.kubectl("patch", "distillationjob", name, "-n", namespace, "--type=merge", "-p", json.dumps(
        {"metadata": {"annotations": {"distillery.io/last-handled-configuration": json.dumps({"spec": obj["spec"]}),
                                      "distillery.io/reconcile": '{"started":"2026-01-01T00:00:00Z"}'}}}))
    status = st.started(obj["metadata"]["generation"], f"distill-{name}-g1", None, queued=False).to_wire()
    control_plane.kubectl("patch", "distillationjob", name, "-n", namespace, "--subresource=status",
                          "--type=merge", "-p", json.dumps({"status": status}))
    return obj


@pytest.mark.parametrize("mode", [[], ["--server-side"]], ids=["client-side-apply", "server-side-apply"])
def test_reapplying_after_the_operator_wrote_status_shows_no_drift(control_plane, namespace, mode):
    """What Argo CD and Flux do: apply the manifest from Git, let the operator work, compare
    (Argo CD's default diff is the client-side three-way one; Flux and Argo's ServerSideDiff
    use server-side apply)."""
    path = str(EXAMPLE_JOB)
    control_plane.kubectl("apply", "-n", namespace, "-f", path, *mode)
    name = yaml.safe_load(EXAMPLE_JOB.read_text())["metadata"]["name"]
    before = operator_writes(control_plane, namespace, name)

    diff = control_plane.kubectl("diff", "-n", namespace, "-f", path, *mode, check=False)
    assert diff.returncode == 0, f"drift:\n{diff.stdout}{diff.stderr}"
    again = control_plane.kubectl("apply", "-n", namespace, "-f", path, *mode)
    if not mode:
        assert "unchanged" in again.stdout
    after = json.loads(control_plane.kubectl("get", "distillationjob", name, "-n", namespace, "-o", "json").stdout)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]  # no new run
    assert after["spec"] == before["spec"]
    assert after["status"]["phase"] == "Pending"  # re-applying kept the operator's status...
    assert after["metadata"]["annotations"]["distillery.io/reconcile"]  # ...and its annotations


# ----------------------------------------------------------------------------------- the operator, as the chart runs it


def service_account_kubeconfig(control_plane: Cluster, who: Installed, path: Path) -> Path:
    """The admin kubeconfig (server, CA) with the ServiceAccount's token as the only credential."""
    config = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    token = control_plane.kubectl("create", "token", who.service_account, "-n", who.namespace,
                                  "--duration=1h").stdout.strip()
    for user in config["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("mode", ["namespaced", "clusterwide"])
def test_operator_runs_with_the_charts_service_account_args_and_env(
        control_plane, namespace, helm, digits_workspace, tmp_path, mode):
    """The real operator process, with the Deployment's args and env as rendered and only the
    ServiceAccount's token: it answers /healthz and runs a job to a registered StudentModel.
    Any verb the chart forgot shows up as an RBAC refusal in its log or a job that never
    finishes."""
    import os
    import sys
    import time
    import urllib.request

    from tests.cluster.operator_harness import free_port, wait_for
    from tests.digits import digits_job_document

    set_args = [f"watchNamespaces={{{namespace}}}"] if mode == "namespaced" else []
    installed = install(control_plane, helm, namespace, *set_args)
    namespaced = next(installed)  # the chart's objects, removed again at the end
    container = namespaced.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["DISTILLERY_NAMESPACES"] == (namespace if mode == "namespaced" else "")
    health, metrics = free_port(), free_port()
    args = [a.replace("http://0.0.0.0:8081/", f"http://127.0.0.1:{health}/") for a in container["args"]]
    assert args[0] == "operator" and any(a.startswith("--liveness=") for a in args)
    env.update(DISTILLERY_METRICS_PORT=str(metrics), DISTILLERY_POLL_INTERVAL_SECONDS="1",
               DISTILLERY_TRAINER_IMAGE="localhost/distillery-trainer:test")  # the node agent runs it
    kubeconfig = service_account_kubeconfig(control_plane, namespaced, tmp_path / "sa.kubeconfig")
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "distillery.cli", *args],
                                env={**os.environ, **env, "KUBECONFIG": str(kubeconfig)},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy():
            if proc.poll() is not None:
                raise AssertionError(f"the operator exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(healthy, 120, "the operator's /healthz", on_timeout=lambda: log_path.read_text()[-4000:])

        # A job that reads its (dummy) store credentials from a Secret, as jobs on S3 do.
        control_plane.kubectl("create", "secret", "generic", "store-creds", "-n", namespace,
                              "--from-literal=AWS_ACCESS_KEY_ID=id", "--from-literal=AWS_SECRET_ACCESS_KEY=key")
        # Opted in: the operator (with only `get` on Secrets) reads this label before using it.
        control_plane.kubectl("label", "secret", "store-creds", "-n", namespace, "distillery.io/usable-by-jobs=true")
        doc = digits_job_document(digits_workspace, tmp_path / "out", distillation={"epochs": 2},
                                  targets={"maxAccuracyDrop": 0.5})
        doc["metadata"] = {"name": "rbac"}
        doc["spec"]["output"]["credentialsSecret"] = "store-creds"
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))

        def finished():
            obj = json.loads(control_plane.kubectl("get", "dj", "rbac", "-n", namespace, "-o", "json").stdout)
            return obj if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

        obj = wait_for(finished, 600, "the job to finish",
                       on_timeout=lambda: log_path.read_text()[-6000:] + control_plane.pod_logs(namespace)[-4000:])
        assert obj["status"]["phase"] == "Succeeded", obj["status"]
        model = obj["status"]["studentModel"]
        sm = wait_for(lambda: (json.loads(control_plane.kubectl("get", "studentmodel", model, "-n", namespace,
                                                                "-o", "json").stdout).get("status") or {})
                      .get("onFrontier"), 60, "the StudentModel's frontier status (studentmodels/status)")
        assert sm is True
        events = control_plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
        assert '"reason": "Accepted"' in events  # events: create (the verdict's Event)
        time.sleep(1)
        # RBAC refusals read 'User "system:serviceaccount:..." cannot <verb> resource ...'. (A
        # cluster-wide operator may also meet other tests' namespaces being deleted, which the
        # API server refuses with a different 403; those are not RBAC gaps.)
        log = log_path.read_text(errors="replace")
        refusals = [line for line in log.splitlines() if f'User \\"{namespaced.user}\\" cannot' in line
                    or f'User "{namespaced.user}" cannot' in line]
        assert not refusals, "\n".join(refusals[:5])
        assert "Not enough permissions" not in log, log[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        installed.close()


def test_helm_test_crd_check_passes_as_the_service_account(control_plane, namespace, namespaced, monkeypatch,
                                                           capsys):
    """The `helm test` CRD pod's script, run here with the ServiceAccount's credentials in place
    of the in-cluster ones: the CRDs are established and the operator may list its jobs."""
    from kubernetes import client, config

    def in_cluster():
        client.Configuration.set_default(client_as_service_account(control_plane, namespaced).configuration)

    monkeypatch.setattr(config, "load_incluster_config", in_cluster)
    pod = next(d for d in namespaced.docs if d["kind"] == "Pod" and d["metadata"]["name"].endswith("-test-crds"))
    script = pod["spec"]["containers"][0]["args"][0]
    with pytest.raises(SystemExit) as done:
        exec(compile(script, pod["metadata"]["name"], "exec"), {"__name__": "__main__"})
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    assert f"CRDs established; 0 DistillationJob(s) in {namespace}" in out.out
