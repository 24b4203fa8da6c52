"""The end-to-end scenario on kind: tests/e2e/kind/run.sh, where Docker and kind exist.

The harness creates a kind cluster, builds both images from the project's Dockerfiles, loads them
into kind and runs tests/e2e/test_scenario.py against it: the same scenario the README's test
command runs on the real single-node cluster (see tests/e2e/kind/README.md). Machines without a
Docker daemon or kind skip it.
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
    """Runs everywhere: the script parses, runs the shared scenario, and pins the MinIO image."""
    assert subprocess.run(["bash", "-n", str(HERE / "run.sh")]).returncode == 0
    text = (HERE / "run.sh").read_text()
    assert "tests/e2e/test_scenario.py" in text and "DISTILLERY_E2E_KUBECONFIG" in text
    for name in ("OPERATOR", "TRAINER", "MINIO"):
        assert f"DISTILLERY_E2E_IMAGE_{name}=" in text
    [minio] = [line for line in (HERE / "minio-image.txt").read_text().splitlines() if not line.startswith("#")]
    assert "@sha256:" in minio and ":latest" not in minio
