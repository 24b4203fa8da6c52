"""examples/gitops (what Argo CD or Flux is pointed at) and docs/gitops.md.

The folder renders with kustomize (kubectl's built-in one) into the namespace and a
DistillationJob that validates against the API models; the Flux example in the docs parses
and names the right kinds. That re-applying the manifest shows no drift after the operator wrote
status is checked against a real API server in tests/cluster/test_chart_install.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from distillery.api.job import DistillationJob

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "gitops"
DOC = REPO / "docs" / "gitops.md"


def find_kubectl() -> str | None:
    env = os.environ.get("DISTILLERY_KUBECTL_BIN")
    if env and Path(env).is_file():
        return env
    tools = Path(os.environ.get("DISTILLERY_TOOLS_DIR") or Path.home() / ".cache/distillery/tools")
    env_file = tools / "control-plane.env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, _, value = line.strip().partition("=")
            if key == "DISTILLERY_KUBECTL_BIN" and Path(value.strip("'\"")).is_file():
                return value.strip("'\"")
    return shutil.which("kubectl")


def test_example_renders_with_kustomize():
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("kubectl not found (scripts/build-control-plane.sh builds one)")
    out = subprocess.run([kubectl, "kustomize", str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Namespace", "DistillationJob"}
    ns = kinds["Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    job = kinds["DistillationJob"]
    assert job["metadata"]["namespace"] == ns["metadata"]["name"]
    DistillationJob.model_validate(job)
    # Users own what is in Git; nothing the operator writes is there.
    assert "status" not in job
    assert not [k for k in job["metadata"].get("annotations", {}) if k.startswith("distillery.io/")]


def test_example_files_validate_without_kustomize():
    kustomization = yaml.safe_load((EXAMPLE / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (EXAMPLE / resource).is_file(), resource
    job = yaml.safe_load((EXAMPLE / "distillationjob.yaml").read_text())
    DistillationJob.model_validate({**job, "metadata": {**job["metadata"], "namespace": "x"}})
    assert job["spec"]["output"]["credentialsSecret"], "the job reads its store credentials by Secret reference"


def yaml_blocks(markdown: str) -> list[dict]:
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", markdown, re.DOTALL)]


def test_docs_have_a_flux_health_check_for_both_kinds():
    text = DOC.read_text()
    flux = next(b for b in yaml_blocks(text) if b.get("kind") == "Kustomization")
    assert flux["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
    assert flux["spec"]["wait"] is True
    checks = {c["kind"]: c for c in flux["spec"]["healthCheckExprs"]}
    assert set(checks) == {"DistillationJob", "StudentModel"}
    job = checks["DistillationJob"]
    assert job["apiVersion"] == "distillery.io/v1alpha1"
    assert {"inProgress", "failed", "current"} <= set(job)
    assert "'Failed'" in job["failed"] and "'Succeeded'" in job["current"]
    for expr in (job["inProgress"], job["failed"], job["current"]):
        assert "metadata.generation" in expr  # status of an older generation is not the answer
    argo = next(b for b in yaml_blocks(text) if b.get("kind") == "Application")
    assert argo["spec"]["source"]["path"] == "examples/gitops"
    assert "Replace=true" not in argo["spec"]["syncPolicy"].get("syncOptions", [])


def test_docs_say_what_is_not_needed():
    text = DOC.read_text()
    assert "no `ignoreDifferences` is needed" in text
    assert "IgnoreExtraneous` is not needed" in text
    assert "distillery.io/" in text
    assert "resource.customizations.health.distillery.io_DistillationJob" in text
