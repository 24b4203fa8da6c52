"""scripts/check-cuda.sh and examples/cuda-check without a GPU: the script parses, both job files
validate, the GPU mode refuses a machine without CUDA, and the provider check catches a real
onnxruntime fallback from CUDA to the CPU. (The dry run itself takes minutes: run it by hand.)"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check-cuda.sh"
EXAMPLE = ROOT / "examples" / "cuda-check"


def load_check_module():
    spec = importlib.util.spec_from_file_location("cuda_check", EXAMPLE / "check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def distillery(*args):
    return subprocess.run([sys.executable, "-m", "distillery.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_script_is_valid_bash():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_script_rejects_unknown_arguments():
    r = subprocess.run(["bash", str(SCRIPT), "--gpu-please"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "unknown argument '--gpu-please'" in r.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver")
def test_gpu_mode_fails_at_once_without_a_gpu():
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "check-cuda: FAILED: no NVIDIA driver here" in r.stderr
    assert "--dry-run" in r.stderr


def test_job_file_validates_and_targets_cuda():
    r = distillery("validate", str(EXAMPLE / "job.yaml"))
    assert r.returncode == 0, r.stderr
    assert "valid DistillationJob 'cuda-check'" in r.stdout
    assert yaml.safe_load((EXAMPLE / "job.yaml").read_text())["spec"]["targets"]["hardware"] == "cuda"


def test_dry_run_job_differs_only_in_hardware_name_and_output(tmp_path):
    check = load_check_module()
    job = tmp_path / "job.yaml"
    shutil.copy(EXAMPLE / "job.yaml", job)
    dry = check.job_for_mode(job, check.Expect.for_mode(dry_run=True))
    assert dry == tmp_path / "job.dry-run.yaml"
    r = distillery("validate", str(dry))
    assert r.returncode == 0, r.stderr
    original, variant = yaml.safe_load(job.read_text()), yaml.safe_load(dry.read_text())
    assert variant["spec"]["targets"].pop("hardware") == "cpu"
    assert original["spec"]["targets"].pop("hardware") == "cuda"
    assert variant["spec"]["output"].pop("uri") == original["spec"]["output"].pop("uri") + "-dry-run"
    assert variant["metadata"]["name"] == "cuda-check-dry-run"
    assert variant["spec"] == original["spec"]
    # The GPU mode runs the file itself.
    assert check.job_for_mode(job, check.Expect.for_mode(dry_run=False)) == job


def test_provider_check_catches_a_real_fallback_to_the_cpu(tmp_path):
    """A CPU-only onnxruntime asked for CUDA silently gives a CPU session, as a CUDA provider that
    fails to load does; the probe records it and the check names it."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has a CUDA provider: no fallback to provoke")
    program = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(EXAMPLE)!r})
        import check, probes
        import onnxruntime as ort
        records = probes.install()
        model = str(check.tiny_onnx_model(Path({str(tmp_path)!r}) / "tiny.onnx"))
        records.stage = "latency"  # as inside the trainer's measure_latencies
        for _ in range(2):
            ort.InferenceSession(model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        sessions = records.as_dict()["sessions"]
        for problem in check.session_problems(sessions, check.Expect.for_mode(dry_run=False)):
            print("PROBLEM", problem)
        print("CPU-OK", check.session_problems(sessions, check.Expect.for_mode(dry_run=True)) == [])
    """)
    r = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    problems = [line for line in r.stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 2, r.stdout
    assert ("asked for ['CUDAExecutionProvider', 'CPUExecutionProvider'], onnxruntime used "
            "['CPUExecutionProvider'] (fell back from CUDAExecutionProvider)") in problems[0]
    assert "CPU-OK True" in r.stdout
