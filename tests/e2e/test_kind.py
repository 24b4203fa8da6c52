"""End-to-end on kind: tests/e2e/kind/run.sh, where Docker and kind exist.

The harness builds both images, loads them into a kind cluster, installs MinIO and the chart,
distills the digits MLP in the cluster and checks the verdict, the StudentModel, the artifacts
in the bucket and that re-applying the manifest shows no drift (see tests/e2e/kind/README.md).
Machines without a Docker daemon or kind (like the CI machine of this project) skip it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "kind"
REPO = HERE.parents[2]


def missing_prerequisites() -> str | None:
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (the kind end-to-end run needs docker, kind, kubectl and helm)"
    helm = os.environ.get("DISTILLERY_HELM_BIN") or shutil.which("helm")
    if not helm:
        from tests.chart.test_chart import find_helm

        found, where = find_helm()
        if found is None:
            return f"helm not found (looked at {where})"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"docker does not answer: {err}"
    if info.returncode != 0:
        return f"the Docker daemon is not reachable: {info.stderr.strip()[:200]}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_digits_job_end_to_end_on_kind():
    reason = missing_prerequisites()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, PYTHON=sys.executable)
    if "HELM" not in env:
        from tests.chart.test_chart import find_helm

        helm, _ = find_helm()
        if helm is not None:
            env["HELM"] = str(helm)
    proc = subprocess.run(["bash", str(HERE / "run.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=3500)
    assert proc.returncode == 0, f"run.sh failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-8000:]}"
    assert "e2e passed" in proc.stderr


def test_harness_files_are_consistent():
    """Runs everywhere: the harness is valid shell and its manifests parse and fit together."""
    import yaml

    assert subprocess.run(["bash", "-n", str(HERE / "run.sh")]).returncode == 0
    minio = list(yaml.safe_load_all((HERE / "minio.yaml").read_text()))
    image = next(d for d in minio if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert "@sha256:" in image and ":latest" not in image
    job = yaml.safe_load((HERE / "digits-job.yaml").read_text())
    from distillery.api.job import DistillationJob

    parsed = DistillationJob.model_validate({**job, "metadata": {**job["metadata"], "namespace": "e2e"}})
    assert parsed.spec.output.uri.startswith("s3://distillery/")
    assert parsed.spec.output.endpoint is None and parsed.spec.output.credentials_secret is None  # chart defaults
    text = (HERE / "run.sh").read_text()
    assert "store.credentialsSecret=store-creds" in text and "store.endpoint=http://minio.minio.svc:9000" in text
    assert "--for=condition=Succeeded" in text
