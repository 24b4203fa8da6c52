"""Kueue in the test cluster, deployed as a user deploys it: its CRDs, its controller in a pod
(the image scripts/build-images.sh makes from the binary built from tools/kueue), and a
ResourceFlavor, ClusterQueue and LocalQueue. Pure builders, plus the two things that touch the
machine: finding the CRDs of the pinned release and making the serving certificate.

Simplified on purpose, and only for the test: the controller is bound to cluster-admin (Kueue's
own release manifests carry its narrow RBAC), it manages only batch/v1 Jobs, and its webhooks are
not registered with the API server (the operator creates its trainer Jobs suspended with the
queue label already, which is what Kueue's mutating webhook would do).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "kueue-system"
NAME = "kueue-controller-manager"
# Where Kueue reads its certificates when its internal certificate management is off: the
# metrics server's path is fixed in its main.go; the webhook server's is controller-runtime's default.
METRICS_CERTS = "/etc/kueue/metrics/certs"
WEBHOOK_CERTS = "/tmp/k8s-webhook-server/serving-certs"


def pinned_version() -> str:
    found = re.search(r"^\s*sigs\.k8s\.io/kueue\s+(v\S+)", (REPO / "tools/kueue/go.mod").read_text(), re.MULTILINE)
    assert found, "tools/kueue/go.mod pins no sigs.k8s.io/kueue"
    return found.group(1)


def crds_dir() -> Path:
    """The CRDs of the pinned release, as scripts/setup-test-tools.sh copied them from its module."""
    env = os.environ.get("DISTILLERY_KUEUE_CRDS")
    tools = Path(os.environ.get("DISTILLERY_TOOLS_DIR") or Path.home() / ".cache/distillery/tools")
    return Path(env) if env else tools / f"kueue-{pinned_version()}" / "crds"


def self_signed_certificate(work: Path) -> tuple[str, str]:
    """(certificate, key) PEM for the controller's servers, made with openssl."""
    work.mkdir(parents=True, exist_ok=True)
    crt, key = work / "tls.crt", work / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN=kueue-webhook-service.{NAMESPACE}.svc", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True, timeout=60)
    return crt.read_text(), key.read_text()


def configuration() -> dict:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
        "health": {"healthProbeBindAddress": ":8081"},
        "metrics": {"bindAddress": ":8443"},
        "webhook": {"port": 9443},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": ["batch/job"]},
    }


def controller_manifests(image: str, certificate: str, key: str) -> list[dict]:
    """Namespace, ServiceAccount bound to cluster-admin, certificate Secret, configuration and the
    controller's Deployment (restricted pod, read-only root)."""
    meta = {"namespace": NAMESPACE}
    secret = "kueue-certs"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, **meta}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "distillery-test-kueue"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, **meta}, "type": "kubernetes.io/tls",
         "stringData": {"tls.crt": certificate, "tls.key": key}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kueue-config", **meta},
         "data": {"controller_manager_config.yaml": yaml.safe_dump(configuration())}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME, **meta},
         "spec": {
             "replicas": 1, "selector": {"matchLabels": {"app": NAME}},
             "template": {"metadata": {"labels": {"app": NAME}}, "spec": {
                 "serviceAccountName": NAME,
                 "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{
                     "name": "manager", "image": image, "imagePullPolicy": "Never",
                     # The on-demand visibility API is an aggregated API server of its own, which
                     # the test does not use (it reads the Workloads).
                     "args": ["--config=/config/controller_manager_config.yaml", "--zap-log-level=2",
                              "--feature-gates=VisibilityOnDemand=false"],
                     "ports": [{"containerPort": 8081, "name": "health"}],
                     "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8081}, "periodSeconds": 2},
                     "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                     "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                         "capabilities": {"drop": ["ALL"]}},
                     "volumeMounts": [{"name": "config", "mountPath": "/config"},
                                      {"name": "certs", "mountPath": METRICS_CERTS, "readOnly": True},
                                      {"name": "certs", "mountPath": WEBHOOK_CERTS, "readOnly": True}],
                 }],
                 "volumes": [{"name": "config", "configMap": {"name": "kueue-config"}},
                             {"name": "certs", "secret": {"secretName": secret}}],
             }},
         }},
    ]


def queue_manifests(namespace: str, local_queue: str, cluster_queue: str, cpu: str, memory: str) -> list[dict]:
    """One flavor, a ClusterQueue with this much CPU and memory for the namespace's LocalQueue."""
    return [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "default"}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": cluster_queue},
         "spec": {"namespaceSelector": {},
                  "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [
                      {"name": "default", "resources": [{"name": "cpu", "nominalQuota": cpu},
                                                        {"name": "memory", "nominalQuota": memory}]}]}]}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
         "metadata": {"name": local_queue, "namespace": namespace}, "spec": {"clusterQueue": cluster_queue}},
    ]
