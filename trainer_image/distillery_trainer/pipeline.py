"""One distillation run, stage by stage: load, teacher outputs, extract, train, measure, write.

Every number in the result is measured in this run (or in the run it resumed); nothing is
assumed. The stages are small functions so each can be read and tested on its own.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from distillery.api.job import DistillationJob, ExportFormat, ModelMetrics, Task, TeacherFormat
from distillery.api.result import METRICS_KEY, RESULT_KEY, TrainerResult, TrainingSummary
from distillery.compare import PROVENANCE
from distillery.fingerprint import spec_hash, training_fingerprint
from distillery.store import open_store
from distillery.verdict import Measured, decide
from distillery_trainer import report, teacher_cache
from distillery_trainer.checkpoint import Checkpoints, CheckpointState
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.evaluation import Quality, quality
from distillery_trainer.loading import encode as encode_split
from distillery_trainer.loading import load_inputs
from distillery_trainer.nets import HFNet, Net
from distillery_trainer.onnx_tools import (
    example_inputs,
    export_onnx,
    measure_latencies,
    onnx_outputs,
    providers_for,
    quantize_int8,
)
from distillery_trainer.progress import Progress
from distillery_trainer.student import select_layers, student_source
from distillery_trainer.teacher import (
    OnnxTeacher,
    TeacherOutputs,
    TeacherSide,
    load_torch_model,
    torch_outputs,
)
from distillery_trainer.training import TrainContext, train

EVAL_BATCH = 64


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- stage: teacher


def teacher_outputs(job, inputs, train_data, eval_data, store, device, progress) -> TeacherSide:
    spec = job.spec
    num_labels = len(inputs.labels) if inputs.labels is not None else None
    net = onnx = None
    if spec.teacher.format == TeacherFormat.ONNX:
        onnx = OnnxTeacher(inputs.teacher_path, spec.teacher.task, providers_for(spec.targets.hardware))
    else:
        # Load the teacher as it is (never resize its head), then check it fits the data.
        net = load_torch_model(inputs.teacher_path, spec.teacher.format, spec.teacher.task, None)
        if num_labels is not None and spec.teacher.task != Task.SENTENCE_EMBEDDING:
            out_dim = net.model.config.num_labels if isinstance(net, HFNet) else net.model.config.num_classes
            if out_dim != num_labels:
                raise InputError(f"dataset has {num_labels} classes but the teacher predicts {out_dim}")

    # Teacher outputs are computed once and cached: reused across epochs, resumes and jobs.
    cache, prefix = teacher_cache.cache_location(spec, store)
    key = teacher_cache.entry_key(prefix, teacher_cache.content_key(spec, inputs.teacher_path, train_data, eval_data))
    if cache.exists(key):
        tensors = load_safetensors(cache.read_bytes(key))
        progress.log(f"reusing cached teacher outputs {cache.uri_for(key)}")
        return TeacherSide(net, onnx, TeacherOutputs.from_tensors(tensors, "train"),
                           TeacherOutputs.from_tensors(tensors, "eval"))
    if onnx is not None:
        train_out, eval_out = onnx.outputs(train_data, EVAL_BATCH), onnx.outputs(eval_data, EVAL_BATCH)
        if num_labels is not None and train_out.logits is not None and train_out.logits.shape[1] != num_labels:
            raise InputError(
                f"dataset has {num_labels} classes but the ONNX teacher predicts {train_out.logits.shape[1]}")
    else:
        net.to(device)
        train_out = torch_outputs(net, train_data, EVAL_BATCH, device)
        progress.fraction(0.8)
        eval_out = torch_outputs(net, eval_data, EVAL_BATCH, device)
        net.cpu()
    cache.write_bytes(key, save_safetensors({**train_out.as_tensors("train"), **eval_out.as_tensors("eval")}))
    return TeacherSide(net, onnx, train_out, eval_out)


# ----------------------------------------------------------------------------- stage: measure


@torch.no_grad()
def student_outputs(net: Net, data: Encoded, device) -> TeacherOutputs:
    return torch_outputs(net, data, EVAL_BATCH, device)


def metrics(q: Quality, latency, params: int, size: int, layers: int | None) -> ModelMetrics:
    return ModelMetrics(
        accuracy=round(q.accuracy, 6), metric_name=q.metric_name,
        agreement=None if q.agreement is None else round(q.agreement, 6),
        fidelity=None if q.fidelity is None else round(q.fidelity, 6),
        latency_p50_ms=round(latency.p50_ms, 4), latency_p95_ms=round(latency.p95_ms, 4),
        parameters=params, size_bytes=size, num_layers=layers,
    )


def onnx_parameter_count(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        total += n
    return total


# ----------------------------------------------------------------------------- the run


def run(job: DistillationJob, *, restart: bool = False, progress: Progress | None = None) -> TrainerResult:
    spec = job.spec
    started = now()
    store = open_store(spec.output.uri, endpoint=spec.output.endpoint, region=spec.output.region)
    progress = progress or Progress(store)
    progress.store = store
    fingerprint, whole_hash = training_fingerprint(spec), spec_hash(spec)

    if restart:
        store.delete_prefix("checkpoints/")
        store.delete_prefix("cache/")
        store.delete(RESULT_KEY)
    elif store.exists(RESULT_KEY):
        previous = TrainerResult.model_validate(store.read_json(RESULT_KEY))
        if previous.spec_hash == whole_hash:
            progress.log(f"this job already finished: {store.uri_for(RESULT_KEY)} (use --restart to run again)")
            progress.finish()
            return previous

    device = pick_device()
    torch.manual_seed(spec.distillation.seed)
    work = Path(tempfile.mkdtemp(prefix="distillery-"))
    try:
        return _run_stages(job, store, progress, fingerprint, whole_hash, started, device, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_stages(job, store, progress, fingerprint, whole_hash, started, device, work) -> TrainerResult:
    spec = job.spec
    task, hardware = spec.teacher.task, spec.targets.hardware
    providers_for(hardware)  # fail now, not after training, when the hardware cannot be measured

    progress.stage("loading", f"teacher {spec.teacher.uri}")
    inputs = load_inputs(job, work)
    train_data, eval_data = encode_split(inputs.train, inputs, job), encode_split(inputs.eval, inputs, job)
    progress.log(f"{len(train_data)} train rows, {len(eval_data)} eval rows, device {device.type}")

    checkpoints = Checkpoints(store, fingerprint)
    state = checkpoints.latest()

    progress.stage("teacher-outputs", "computing the teacher's outputs once")
    teacher = teacher_outputs(job, inputs, train_data, eval_data, store, device, progress)

    progress.stage("selecting-layers", f"method {spec.student.method.value}")
    source = student_source(job, inputs, teacher, train_data)
    resume_payload = None
    if state is None:
        layers, scores = select_layers(source, train_data, job, device)
        state = CheckpointState(fingerprint, layers, scores, epoch=0, step_in_epoch=0, global_step=0)
        student = source.with_layers(layers)
    else:
        progress.log(f"resuming from step {state.global_step} (epoch {state.epoch + 1})")
        student = source.with_layers(state.layers)
        weights, resume_payload = checkpoints.load_weights(state)
        student.load_state_dict(weights)
    resumed_from = state.global_step or None
    if source is teacher.net:
        source.cpu()
    progress.log(f"keeping layers {state.layers} of {source.num_layers()}"
                 + (f" (scores {state.layer_scores})" if state.layer_scores else ""))

    progress.stage("training", f"{spec.distillation.epochs} epochs, T={spec.distillation.temperature:g}, "
                   f"alpha={spec.distillation.alpha:g}")
    t0 = time.perf_counter()
    if not state.finished:
        train(TrainContext(student, train_data, teacher.train, spec.distillation, task, device,
                           checkpoints, state, progress), resume_payload)
    train_seconds = time.perf_counter() - t0
    student.to(device).eval()

    progress.stage("evaluating")
    labels_eval, labels_train = eval_data.labels, train_data.labels
    student_eval = student_outputs(student, eval_data, device)
    student_train = student_outputs(student, train_data, device) if task == Task.SENTENCE_EMBEDDING else None
    q_student = quality(task, student_eval, teacher.eval, labels_eval, student_train, labels_train)
    q_teacher = quality(task, teacher.eval, None, labels_eval, teacher.train, labels_train)
    student.cpu()

    progress.stage("exporting")
    staging = work / "artifacts"
    weights_dir = staging / "model"
    student.save(weights_dir)
    write_provenance(weights_dir, job, state.layers, teacher_layers_of(teacher))
    feature_shape = tuple(train_data.tensors["features"].shape[1:]) if "features" in train_data.tensors else ()
    example = example_inputs(student, spec.benchmark.batch_size, spec.benchmark.sequence_length, feature_shape)
    student_onnx = export_onnx(student, staging / "model.onnx", example, spec.export.opset)
    if teacher.onnx is not None:
        teacher_onnx = teacher.onnx.path
        teacher_params = onnx_parameter_count(teacher_onnx)
        teacher_layers = None
    else:
        teacher_onnx = export_onnx(teacher.net, work / "teacher.onnx", example, spec.export.opset)
        teacher_params, teacher_layers = teacher.net.parameter_count(), teacher.net.num_layers()
    check_batches = [next(eval_data.batches(EVAL_BATCH))]  # one batch is enough for the round trip
    onnx_check = onnx_outputs(student_onnx, check_batches, hardware)
    ref = student_outputs(student, Encoded({k: v[:EVAL_BATCH] for k, v in eval_data.tensors.items()}, None), torch.device("cpu"))
    ref_tensor = ref.logits if ref.logits is not None else ref.pooled
    onnx_diff = float((onnx_check - ref_tensor).abs().max())
    int8_path = quantize_int8(student_onnx, staging / "model.int8.onnx") if spec.export.int8 else None

    progress.stage("benchmarking", f"onnxruntime on {hardware.value}, batch {spec.benchmark.batch_size}")
    # Teacher, student (and int8) measured in turns, so the speedup is a ratio from one spell.
    latencies = measure_latencies([teacher_onnx, student_onnx, *([int8_path] if int8_path else [])],
                                  example, spec.benchmark, hardware)
    lat_teacher, lat_student = latencies[:2]
    progress.fraction(0.4)
    teacher_m = metrics(q_teacher, lat_teacher, teacher_params, teacher_onnx.stat().st_size, teacher_layers)
    student_m = metrics(q_student, lat_student, student.parameter_count(), student_onnx.stat().st_size,
                        student.num_layers())
    int8_m = None
    if int8_path is not None:
        progress.fraction(0.7)
        lat_int8 = latencies[2]
        int8_eval = onnx_outputs(int8_path, eval_data.batches(EVAL_BATCH), hardware)
        int8_out = TeacherOutputs(None if task == Task.SENTENCE_EMBEDDING else int8_eval,
                                  int8_eval if task == Task.SENTENCE_EMBEDDING else None)
        int8_train = None
        if task == Task.SENTENCE_EMBEDDING:
            int8_train = TeacherOutputs(None, onnx_outputs(int8_path, train_data.batches(EVAL_BATCH), hardware))
        q_int8 = quality(task, int8_out, teacher.eval, labels_eval, int8_train, labels_train)
        int8_m = metrics(q_int8, lat_int8, student_m.parameters, int8_path.stat().st_size, student.num_layers())

    scores, verdict = decide(
        spec.targets,
        Measured(teacher_m.accuracy, teacher_m.latency_p50_ms, teacher_m.size_bytes, teacher_params),
        Measured(student_m.accuracy, student_m.latency_p50_ms, student_m.size_bytes, student_m.parameters),
    )

    progress.stage("writing", f"artifacts to {store.uri_for('')}")
    result = TrainerResult(
        job=job.metadata.name, task=task, hardware=hardware, fingerprint=fingerprint, spec_hash=whole_hash,
        teacher_uri=spec.teacher.uri, teacher=teacher_m, student=student_m, student_int8=int8_m,
        teacher_layers=teacher_layers, layers_kept=state.layers, layer_scores=state.layer_scores,
        speedup=round(scores.speedup, 4), accuracy_retention=round(scores.accuracy_retention, 6),
        compression_ratio=round(scores.compression_ratio, 4), pareto_score=round(scores.pareto_score, 6),
        decision={"accepted": verdict.accepted, "reasons": verdict.reasons},
        artifacts=artifact_uris(store, spec, int8_path is not None),
        training=TrainingSummary(epochs=spec.distillation.epochs, steps=state.global_step,
                                 seconds=round(train_seconds, 2), device=device.type,
                                 history=state.history, resumed_from_step=resumed_from),
        onnx_max_abs_diff=round(onnx_diff, 8), start_time=started, completion_time=now(),
    )
    write_artifacts(store, spec, staging, weights_dir, result, job)
    progress.finish()
    return result


def teacher_layers_of(teacher: TeacherSide) -> int | None:
    return None if teacher.net is None else teacher.net.num_layers()


def write_provenance(weights_dir: Path, job: DistillationJob, layers: list[int], teacher_layers: int | None) -> None:
    """Where the student came from, next to its weights (read by `distillery compare`)."""
    import json

    body = {"teacherUri": job.spec.teacher.uri, "teacherLayers": teacher_layers, "layersKept": layers,
            "task": job.spec.teacher.task.value, "job": job.metadata.name}
    (weights_dir / PROVENANCE).write_text(json.dumps(body, indent=2) + "\n")


def artifact_uris(store, spec, has_int8: bool) -> dict:
    out = {"uri": store.uri_for(""), "metrics": store.uri_for(METRICS_KEY),
           "result": store.uri_for(RESULT_KEY), "model_card": store.uri_for("README.md")}
    if ExportFormat.ONNX in spec.export.formats:
        out["onnx"] = store.uri_for("model.onnx")
        if has_int8:
            out["onnx_int8"] = store.uri_for("model.int8.onnx")
    if ExportFormat.SAFETENSORS in spec.export.formats:
        out["weights"] = store.uri_for("model/")
    return out


def write_artifacts(store, spec, staging: Path, weights_dir: Path, result: TrainerResult, job) -> None:
    """Upload every artifact; result.json goes last so its presence means the set is complete."""
    if ExportFormat.SAFETENSORS in spec.export.formats:
        store.upload_tree(weights_dir, "model")
    if ExportFormat.ONNX in spec.export.formats:
        store.upload_file(staging / "model.onnx", "model.onnx")
        if (staging / "model.int8.onnx").is_file():
            store.upload_file(staging / "model.int8.onnx", "model.int8.onnx")
    store.write_json(METRICS_KEY, report.metrics_document(result))
    store.write_text("README.md", report.model_card(result, job))
    store.write_json(RESULT_KEY, result.to_wire())
