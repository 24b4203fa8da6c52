"""Runs the CUDA check's job with `distillery run` under read-only probes and proves the GPU path:
(1) torch sees CUDA and the healing steps ran on the GPU under bf16 autocast, (2) the latency
sessions really ran on onnxruntime's CUDAExecutionProvider (no silent CPU fallback), (3) the
result has latency figures on hardware cuda and a verdict. Prints a summary for the README.

Usage: python examples/cuda-check/check.py [--dry-run] [--job FILE] [--ort-preload]
--dry-run runs the same job with targets.hardware: cpu and checks the CPU equivalents instead.
Exit codes: 0 all checks held (whatever the verdict), 1 a check failed or the run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"


class CheckFailed(SystemExit):
    def __init__(self, message: str):
        super().__init__(f"check-cuda: FAILED: {message}")


@dataclass(frozen=True)
class Expect:
    """What the run must show: on the GPU, or (dry run) the CPU path the same checks cover."""

    hardware: str  # targets.hardware and result.hardware
    device: str  # torch device type of training
    provider: str  # first provider every latency session must really use
    autocast_dtype: str | None  # None: autocast must be off

    @classmethod
    def for_mode(cls, dry_run: bool) -> Expect:
        if dry_run:
            return cls("cpu", "cpu", CPU_EP, None)
        return cls("cuda", "cuda", CUDA_EP, "torch.bfloat16")


# ------------------------------------------------------------------------- environment


def environment() -> dict:
    import onnxruntime as ort
    import torch
    from onnxruntime.capi import build_and_package_info as ort_build

    env = {
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "onnxruntime": ort.__version__, "ort_package": getattr(ort_build, "package_name", "onnxruntime"),
        "ort_cuda": getattr(ort_build, "cuda_version", None), "ort_cudnn": getattr(ort_build, "cudnn_version", None),
        "ort_available": ort.get_available_providers(),
    }
    if env["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        env["device_name"] = props.name
        env["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["capability"] = f"{props.major}.{props.minor}"
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    return env


def tiny_onnx_model(path: Path) -> Path:
    """y = x @ W: the smallest model a provider must take, for the pre-flight session."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "preflight",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # old enough for every onnxruntime the trainer supports
    onnx.save(model, str(path))
    return path


def preflight(expect: Expect, env: dict) -> list[str]:
    """Fails early, before the job, when torch or onnxruntime cannot use the GPU here."""
    import onnxruntime as ort

    if expect.device == "cuda" and not env["cuda_available"]:
        raise CheckFailed(
            f"torch {env['torch']} (built for CUDA {env['torch_cuda']}) sees no CUDA device; "
            "this check needs a machine with an NVIDIA GPU and driver (use --dry-run for the CPU path)")
    if expect.device == "cuda" and not env.get("bf16_supported"):
        raise CheckFailed(f"{env['device_name']} (compute capability {env['capability']}) has no bf16 support")
    if expect.provider == CUDA_EP and CUDA_EP not in env["ort_available"]:
        raise CheckFailed(
            f"{env['ort_package']} {env['onnxruntime']} has no {CUDA_EP} (providers {env['ort_available']}); "
            "install onnxruntime-gpu, not onnxruntime")
    requested = [CUDA_EP, CPU_EP] if expect.provider == CUDA_EP else [CPU_EP]
    with tempfile.TemporaryDirectory() as tmp:
        sess = ort.InferenceSession(str(tiny_onnx_model(Path(tmp) / "tiny.onnx")), providers=requested)
        used = sess.get_providers()
    if used[0] != expect.provider:
        raise CheckFailed(
            f"onnxruntime created a session with {used} when asked for {requested}: its CUDA provider "
            f"did not load ({cuda_provider_load_error() or 'see onnxruntime error above'}; onnxruntime-gpu "
            f"built for CUDA {env['ort_cuda']}, torch has CUDA {env['torch_cuda']}). The trainer would "
            "time the models on the CPU and label them cuda; --ort-preload shows whether "
            "onnxruntime.preload_dlls() cures it")
    return used


def cuda_provider_load_error() -> str | None:
    """Why the CUDA provider library does not load here (the dynamic loader's own message)."""
    import ctypes

    import onnxruntime as ort

    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(library))
    except OSError as err:
        return f"{library.name}: {err}"
    return None


# ------------------------------------------------------------------------- the job


def job_for_mode(job_path: Path, expect: Expect) -> Path:
    """The job file to run: the file itself on CUDA; for the dry run a sibling copy (relative paths
    still resolve) that differs only in hardware, name and output folder."""
    doc = yaml.safe_load(job_path.read_text())
    if doc["spec"]["targets"]["hardware"] == expect.hardware:
        return job_path
    doc["spec"]["targets"]["hardware"] = expect.hardware
    doc["metadata"]["name"] += "-dry-run"
    doc["spec"]["output"]["uri"] = doc["spec"]["output"]["uri"].rstrip("/") + "-dry-run"
    out = job_path.with_name(job_path.stem + ".dry-run.yaml")
    out.write_text(f"# written by {Path(__file__).name} from {job_path.name}; do not edit\n" + yaml.safe_dump(doc))
    return out


def output_dir(job_file: Path) -> Path:
    from distillery.api import load_job_file
    from distillery.local_paths import resolve_local_uris

    job = resolve_local_uris(load_job_file(job_file), job_file.resolve().parent)
    if not job.spec.output.uri.startswith("file://"):
        raise CheckFailed(f"output.uri must be a local folder for this check, not {job.spec.output.uri}")
    return Path(job.spec.output.uri.removeprefix("file://"))


# ------------------------------------------------------------------------- the checks


def session_problems(sessions: list[dict], expect: Expect) -> list[str]:
    """Every latency session must really run on the expected provider, not fall back."""
    latency = [s for s in sessions if s["stage"] == "latency"]
    if len(latency) < 2:
        return [f"expected latency sessions for teacher and student, the probe saw {len(latency)}"]
    return [f"latency session for {s['model']}: asked for {s['requested']}, onnxruntime used {s['used']} "
            f"(fell back from {expect.provider})" for s in latency if not s["used"] or s["used"][0] != expect.provider]


def training_problems(probe: dict, result: dict, expect: Expect) -> list[str]:
    problems = []
    training = result.get("training") or {}
    if training.get("device") != expect.device:
        problems.append(f"result.training.device is {training.get('device')!r}, expected {expect.device!r}")
    if not training.get("steps"):
        problems.append("result.training.steps is 0: no healing step ran")
    steps = [a for a in probe["autocast"] if a["where"] == "training"]
    if not steps:
        problems.append("the probe saw no training step enter the trainer's autocast")
    for a in steps + [a for a in probe["autocast"] if a["where"] == "outputs"]:
        on = a["dtype"] if a["enabled"] else None
        if a["device"] != expect.device or on != expect.autocast_dtype:
            problems.append(f"{a['where']}: {a['count']} autocast entries on {a['device']} with autocast "
                            f"{on or 'off'}, expected {expect.device} with {expect.autocast_dtype or 'off'}")
    linear = probe["train_linear"]
    want_dtype = expect.autocast_dtype or "torch.float32"
    if linear is None:
        problems.append("the probe saw no Linear layer run in a training step")
    elif linear["dtype"] != want_dtype or not linear["device"].startswith(expect.device):
        problems.append(f"first training step: Linear output {linear['dtype']} on {linear['device']}, "
                        f"expected {want_dtype} on {expect.device}")
    return problems


def result_problems(result: dict, expect: Expect) -> list[str]:
    problems = []
    if result.get("hardware") != expect.hardware:
        problems.append(f"result.hardware is {result.get('hardware')!r}, expected {expect.hardware!r}")
    for side in ("teacher", "student"):
        p50 = (result.get(side) or {}).get("latencyP50Ms")
        if not p50 or p50 <= 0:
            problems.append(f"result.{side}.latencyP50Ms is {p50!r}")
    if "accepted" not in (result.get("decision") or {}):
        problems.append("result.decision has no verdict")
    return problems


# ------------------------------------------------------------------------- summary


def summary(env: dict, expect: Expect, probe: dict, result: dict, run_seconds: float, peak_gib: float | None) -> str:
    t, s = result["teacher"], result["student"]
    lat = [x for x in probe["sessions"] if x["stage"] == "latency"]
    providers = sorted({", ".join(x["used"]) for x in lat})
    train_ac = next((a for a in probe["autocast"] if a["where"] == "training"), None)
    autocast = f"{train_ac['dtype']} autocast" if train_ac and train_ac["enabled"] else "autocast off (fp32)"
    linear = probe["train_linear"] or {}
    device = (f"{env['device_name']} ({env['device_memory_gib']} GiB, compute {env['capability']})"
              if env["cuda_available"] else "no CUDA device (dry run on the CPU)")
    ort_build = f", built for CUDA {env['ort_cuda']}" if env.get("ort_cuda") else ""
    verdict = "ACCEPTED" if result["decision"]["accepted"] else "REJECTED"
    mode = "dry run: CPU, CUDA checks replaced by their CPU equivalents" if expect.device == "cpu" else "CUDA"
    lines = [
        f"check-cuda ({mode}), {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"device           {device}",
        f"torch            {env['torch']} (CUDA {env['torch_cuda']}); {env['ort_package']} {env['onnxruntime']}{ort_build}",
        f"training         {result['training']['device']}, {autocast}, {result['training']['steps']} steps in "
        f"{result['training']['seconds']:.1f} s; first Linear output {linear.get('dtype')} on {linear.get('device')}"
        + (f"; peak GPU memory {peak_gib:.2f} GiB" if peak_gib is not None else ""),
        f"latency sessions {len(lat)} ({', '.join(x['model'] for x in lat)}) on {' | '.join(providers)}",
        f"latency p50      teacher {t['latencyP50Ms']:.2f} ms, student {s['latencyP50Ms']:.2f} ms "
        f"(p95 {t['latencyP95Ms']:.2f} / {s['latencyP95Ms']:.2f} ms), hardware {result['hardware']}",
        f"speedup          {result['speedup']:.2f}x",
        f"{s.get('metricName') or 'accuracy':16} teacher {t['accuracy']:.4f}, student {s['accuracy']:.4f} "
        f"(retention {result['accuracyRetention']:.4f})",
        f"verdict          {verdict} ({'; '.join(result['decision'].get('reasons', []))})",
        f"wall time        {run_seconds:.0f} s for `distillery run` (load, teacher, train, export, benchmark)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU: same job with hardware cpu")
    parser.add_argument("--job", type=Path, default=HERE / "job.yaml")
    parser.add_argument("--ort-preload", action="store_true",
                        help="call onnxruntime.preload_dlls() first (the trainer does not): shows whether "
                             "a failing CUDA provider only lacks libraries that are installed")
    args = parser.parse_args(argv)
    expect = Expect.for_mode(args.dry_run)
    if args.ort_preload:
        import onnxruntime

        onnxruntime.preload_dlls()
        print("check-cuda: called onnxruntime.preload_dlls() (--ort-preload): the trainer alone does not", flush=True)

    env = environment()
    preflight_used = preflight(expect, env)
    print(f"check-cuda: pre-flight ok: torch {env['torch']}, cuda available {env['cuda_available']}, "
          f"onnxruntime session on {preflight_used}", flush=True)

    job_file = job_for_mode(args.job.resolve(), expect)
    import probes  # after the pre-flight: installing wraps onnxruntime's session class

    from distillery import cli

    records = probes.install()
    started = time.perf_counter()
    code = cli.main(["run", str(job_file), "--restart", "--no-progress"])
    run_seconds = time.perf_counter() - started
    if code not in (0, 3):  # 0 accepted, 3 rejected: both are a finished run
        raise CheckFailed(f"`distillery run {job_file}` exited {code} (its error is printed above)")

    out = output_dir(job_file)
    result = json.loads((out / "result.json").read_text())
    probe = records.as_dict()
    peak = None
    if expect.device == "cuda":
        import torch

        peak = torch.cuda.max_memory_allocated() / 2**30
    problems = (training_problems(probe, result, expect) + session_problems(probe["sessions"], expect)
                + result_problems(result, expect))
    (out / "check-probes.json").write_text(json.dumps(probe, indent=2) + "\n")
    if problems:
        print("\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        raise CheckFailed(f"{len(problems)} check(s) failed; probe records in {out / 'check-probes.json'}")
    text = summary(env, expect, probe, result, run_seconds, peak)
    if args.ort_preload:
        text += "\nnote             run with --ort-preload: onnxruntime.preload_dlls() was called before the job"
    (out / "check-summary.txt").write_text(text + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
