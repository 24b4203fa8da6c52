"""The stages of one run, in order, each a small function over the RunContext.

load -> reuse_finished -> teacher_outputs -> select_layers -> train -> evaluate -> export ->
benchmark -> decide -> write. Each reads what earlier stages put in the context and adds its own
part; `reuse_finished` may end the run early with an earlier run's (re-judged) result. Every number
in a result is measured in this run (or in the run it resumed); nothing is assumed, and whatever
is read back from a store (result, cache, checkpoint) is checked before it is used.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from distillery.api.job import ExtractionMethod, ModelMetrics, TeacherFormat, TeacherLogits
from distillery.api.result import RESULT_KEY, TrainerResult, TrainingSummary, non_finite_paths
from distillery.store import StoreError
from distillery.variants import FP32, INT8, Candidate, judge, result_fields
from distillery_trainer import (
    distributed,
    ensemble,
    extraction,
    finished,
    incremental,
    preflight,
    publish,
    teacher_cache,
    training,
    width,
)
from distillery_trainer import vocabulary as vocabulary_pruning
from distillery_trainer.checkpoint import (
    Checkpoints,
    CheckpointState,
    CorruptCheckpoint,
    check_fits,
    fill_tied,
)
from distillery_trainer.encode import Encoded
from distillery_trainer.ensemble import EnsembleRun
from distillery_trainer.errors import NonFiniteError
from distillery_trainer.evaluation import Quality
from distillery_trainer.loading import encode as encode_split
from distillery_trainer.loading import load_inputs, student_base_uri
from distillery_trainer.memory_probe import MemoryUse, measure_memory
from distillery_trainer.nets import Net
from distillery_trainer.onnx_tools import (
    Latency,
    example_inputs,
    export_onnx,
    feed_for_file,
    measure_latencies,
    onnx_batch_outputs,
    onnx_outputs,
    providers_for,
    quantize_int8,
)
from distillery_trainer.outputs import OutputWriter, TeacherOutputs
from distillery_trainer.ranking_cache import NO_MEMO, RankingMemo, ranking_key
from distillery_trainer.run_context import Exported, Measurements, RunContext
from distillery_trainer.student import select_layers as choose_layers
from distillery_trainer.student import student_source
from distillery_trainer.tasks import TaskStrategy
from distillery_trainer.teacher import OnnxTeacher, TeacherSide, load_torch_model, torch_outputs

EVAL_BATCH = 64


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- load


def load(ctx: RunContext) -> None:
    """Fetch and check the inputs, encode both splits once, and find a checkpoint to resume."""
    read_inputs(ctx)
    find_checkpoint(ctx)


def read_inputs(ctx: RunContext) -> None:
    """Fetch and check the inputs and encode both splits once."""
    spec = ctx.spec
    providers_for(spec.targets.hardware)  # fail now, not after training, when the hardware cannot be measured
    ctx.progress.stage("loading", f"teacher {spec.teacher.uri}")
    ctx.inputs = load_inputs(ctx.job, ctx.work)
    preflight.check_inputs(ctx.job, ctx.inputs)  # depth, positions, shapes: before the teacher pass
    ctx.train_data = encode_split(ctx.inputs.train, ctx.inputs, ctx.job, ctx.work / "encoded" / "train")
    ctx.eval_data = encode_split(ctx.inputs.eval, ctx.inputs, ctx.job, ctx.work / "encoded" / "eval")
    ctx.digests = teacher_cache.input_digests(ctx.inputs.teacher_path, ctx.train_data, ctx.eval_data,
                                              ctx.inputs.base_path)
    if ctx.inputs.ensemble:  # replacing an ensemble teacher's weights must run the job again
        ctx.digests = ctx.digests.model_copy(
            update={"ensemble": [teacher_cache.file_tree_digest(path) for path in ctx.inputs.ensemble]})
    if ctx.inputs.previous_train is not None:  # incremental: the old data decides the result too
        ctx.previous_train = encode_split(ctx.inputs.previous_train, ctx.inputs, ctx.job,
                                          ctx.work / "encoded" / "previous-train")
        ctx.previous_eval = encode_split(ctx.inputs.previous_eval, ctx.inputs, ctx.job,
                                         ctx.work / "encoded" / "previous-eval")
        ctx.digests = ctx.digests.model_copy(update={"previous": [
            teacher_cache.encoded_digest(ctx.previous_train), teacher_cache.encoded_digest(ctx.previous_eval)]})
    ctx.progress.log(f"{len(ctx.train_data)} train rows, {len(ctx.eval_data)} eval rows, device {ctx.device.type}"
                     + (f", {ctx.world.size} processes" if ctx.world.distributed else ""))


def find_checkpoint(ctx: RunContext) -> None:
    """The newest checkpoint of this spec on these very inputs, or None (one log line when one
    is there but does not fit)."""
    ctx.checkpoints = Checkpoints(ctx.store, ctx.fingerprint)
    try:
        ctx.state = ctx.checkpoints.latest()
        if ctx.state is not None and set_fields(ctx.state.inputs) != ctx.digests.model_dump(exclude_none=True):
            raise CorruptCheckpoint("it was trained on another teacher or other data (their contents changed)")
    except CorruptCheckpoint as err:
        ctx.state = None
        ctx.progress.log(f"ignoring the checkpoint in {ctx.store.uri_for('checkpoints/')}: {err}; "
                         "training starts from scratch")


def set_fields(digests: dict | None) -> dict | None:
    """A digests dict without its unset (None) entries: checkpoints written before a field existed
    compare equal."""
    return None if digests is None else {k: v for k, v in digests.items() if v is not None}


# ----------------------------------------------------------------------------- reuse_finished


def reuse_finished(ctx: RunContext) -> None:
    """An earlier run of this spec on these very inputs stands, with its verdict recomputed."""
    if ctx.restart or not ctx.store.exists(RESULT_KEY):
        return
    uri = ctx.store.uri_for(RESULT_KEY)
    try:
        raw = ctx.store.read_json(RESULT_KEY)
    except StoreError as err:
        if "invalid JSON" not in str(err):
            raise
        ctx.progress.log(f"not reusing {uri}: it is not JSON; running again")
        return
    previous = finished.check_previous(raw, spec_hash=ctx.spec_hash, fingerprint=ctx.fingerprint,
                                       digests=ctx.digests, targets=ctx.spec.targets)
    if isinstance(previous, finished.Rerun):
        ctx.progress.log(f"not reusing {uri}: {previous.reason}; running again")
        return
    stored = raw.get("decision", {}).get("accepted") if isinstance(raw.get("decision"), dict) else None
    if stored is not previous.decision.accepted:
        ctx.progress.log(f"{uri}: its stored verdict does not follow from its measured numbers; "
                         "the recomputed one stands")
    ctx.progress.log(f"this job already finished: {uri} (use --restart to run again)")
    ctx.result = previous


# ----------------------------------------------------------------------------- teacher_outputs


def load_teacher(ctx: RunContext) -> tuple[Net | None, OnnxTeacher | None]:
    """The teacher as a torch Net or an ONNX session; its head must fit the data's classes."""
    spec = ctx.spec
    if spec.teacher.format == TeacherFormat.ONNX:
        return None, OnnxTeacher(ctx.inputs.teacher_path, spec.teacher.task, providers_for(spec.targets.hardware))
    # Load the teacher as it is (never resize its head), then check it fits the data.
    net = load_torch_model(ctx.inputs.teacher_path, spec.teacher.format, spec.teacher.task, None)
    ctx.task.check_head(num_labels(ctx), net.class_count(), "the teacher")
    return net, None


def num_labels(ctx: RunContext) -> int | None:
    return len(ctx.inputs.labels) if ctx.inputs.labels is not None else None


def require_finite(outputs: TeacherOutputs, whose: str, split: str) -> None:
    row = outputs.first_non_finite_row()
    if row is not None:
        raise NonFiniteError(
            f"{whose} outputs on the {split} split are NaN or infinite (first at row {row + 1}); check "
            f"{'the teacher weights and ' if whose.startswith('the teacher') else ''}the inputs "
            "(features contain NaN/inf?)")


def teacher_outputs(ctx: RunContext) -> None:
    """The teacher's outputs on both splits: from the verified cache, or computed once and cached.
    Online distillation (a causal LM with teacherLogits: online) computes only the eval split's,
    for agreement; the teacher then runs beside the student during training."""
    ctx.progress.stage("teacher-outputs", "computing the teacher's outputs once")
    net, onnx = load_teacher(ctx)
    compute = teacher_compute(ctx, net, onnx)

    if online(ctx):
        eval_out = compute(ctx.eval_data)
        require_finite(eval_out, "the teacher's", "eval")
        net.cpu()
        ctx.teacher = TeacherSide(net, None, None, eval_out)
        return

    cache, prefix = teacher_cache.cache_location(ctx.spec, ctx.store)
    key = teacher_cache.key_for(ctx.spec, ctx.digests)
    entry = teacher_cache.entry_key(prefix, key)
    found = cached_teacher_outputs(ctx, cache, entry, key, compute)
    if found is not None:
        train_out, eval_out = found
    else:
        train_out, eval_out = teacher_pass(ctx, compute)
        require_finite(train_out, "the teacher's", "train")
        require_finite(eval_out, "the teacher's", "eval")
        store_entry(ctx, cache, entry, key, train_out, eval_out)
    if onnx is not None and train_out.logits is not None:
        ctx.task.check_head(num_labels(ctx), train_out.logits.shape[1], "the ONNX teacher")
    if net is not None:
        net.cpu()
    ctx.teacher = TeacherSide(net, onnx, train_out, eval_out)
    if ctx.spec.ensemble is not None:
        ctx.ensemble = ensemble_outputs(ctx, cache, prefix)


def teacher_compute(ctx: RunContext, net: Net | None, onnx: OnnxTeacher | None):
    """The function that runs a teacher (on the run's device) over an encoded split, its outputs
    in memory, or written under `into` (memory-mapped) when given."""
    if net is not None:
        net.to(ctx.device)
    task, batch = ctx.task, ctx.task.eval_batch

    def compute(data: Encoded, into: Path | None = None) -> TeacherOutputs:
        if onnx is not None:
            return onnx.outputs(data, batch, into)
        return torch_outputs(net, data, batch, ctx.device, lambda out: task.teacher_targets(out, ctx.spec.distillation),
                             into)

    return compute


def one_process_pass(ctx: RunContext, compute, name: str) -> tuple[TeacherOutputs, TeacherOutputs]:
    """Both splits' outputs computed here, written as memory-mapped files under the run's folder."""
    train_out = compute(ctx.train_data, ctx.work / "outputs" / name / "train")
    ctx.progress.fraction(0.8)
    return train_out, compute(ctx.eval_data, ctx.work / "outputs" / name / "eval")


def store_entry(ctx: RunContext, cache, entry: str, key: str, train: TeacherOutputs, evals: TeacherOutputs) -> None:
    """Write a cache entry through a file (streamed, not built in memory), then upload it."""
    local = ctx.work / "teacher-cache" / f"new-{Path(entry).name}"
    local.parent.mkdir(parents=True, exist_ok=True)
    with local.open("wb") as fh:
        teacher_cache.write_entry(fh, key, train, evals)
    cache.upload_file(local, entry)
    local.unlink()


def teacher_pass(ctx: RunContext, compute) -> tuple[TeacherOutputs, TeacherOutputs]:
    """Both splits' teacher outputs: on one process, or with every rank computing a share of the
    rows (distributed.shared_outputs; the other ranks join through join_teacher_pass)."""
    if ctx.signal is None:
        return one_process_pass(ctx, compute, "teacher")
    ctx.progress.log(f"the teacher's outputs: each of {ctx.world.size} processes computes a share of the rows")
    ctx.signal.send_teacher_pass()
    train_out, eval_out = distributed.shared_outputs(compute, [ctx.train_data, ctx.eval_data], ctx.world,
                                                     ctx.work / "outputs" / "teacher")
    return train_out, eval_out


def join_teacher_pass(ctx: RunContext) -> None:
    """A rank other than 0: its share of rank 0's teacher pass (teacher_pass), in the same order."""
    try:
        net, onnx = load_teacher(ctx)
        compute = teacher_compute(ctx, net, onnx)
    except Exception as err:  # noqa: BLE001 - the gathers must still be joined; rank 0 raises it

        def compute(data: Encoded, into: Path | None = None, err=err) -> TeacherOutputs:
            raise err
    distributed.shared_outputs(compute, [ctx.train_data, ctx.eval_data], ctx.world, ctx.work / "outputs" / "teacher")


def ensemble_outputs(ctx: RunContext, cache, prefix: str) -> EnsembleRun:
    """Each ensemble teacher's outputs on both splits (cached per teacher and verified like the
    teacher's), and their mixture with the teacher's: what the student learns from."""
    spec, task = ctx.spec, ctx.task
    runs = [(spec.teacher.uri, spec.ensemble.teacher_weight, ctx.teacher.train, ctx.teacher.eval)]
    for i, (member, path) in enumerate(zip(spec.ensemble.teachers, ctx.inputs.ensemble, strict=True)):
        field = f"ensemble.teachers[{i}]"
        ctx.progress.log(f"{field}: computing (or reading) the outputs of {member.uri}")
        if member.format == TeacherFormat.ONNX:
            net, onnx = None, OnnxTeacher(path, spec.teacher.task, providers_for(spec.targets.hardware))
        else:
            net, onnx = load_torch_model(path, member.format, spec.teacher.task, None), None
            task.check_head(num_labels(ctx), net.class_count(), field)
        compute = teacher_compute(ctx, net, onnx)

        member_spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(
            update={"uri": member.uri, "format": member.format})})
        key = teacher_cache.key_for(member_spec, ctx.digests.model_copy(update={"teacher": ctx.digests.ensemble[i]}))
        entry = teacher_cache.entry_key(prefix, key)
        found = cached_teacher_outputs(ctx, cache, entry, key, compute)
        if found is None:
            found = one_process_pass(ctx, compute, f"ensemble-{i}")
            require_finite(found[0], f"{field}'s", "train")
            require_finite(found[1], f"{field}'s", "eval")
            store_entry(ctx, cache, entry, key, *found)
        if net is not None:
            net.cpu()
        ensemble.check_compatible(ctx.teacher.train, found[0], field)
        runs.append((member.uri, member.weight, *found))
    uris, weights, trains, evals = (list(column) for column in zip(*runs, strict=True))
    temperature = spec.distillation.temperature
    mixed = ctx.work / "outputs" / "ensemble-mixture"
    return EnsembleRun(uris, ensemble.normalized(weights), trains, evals,
                       ensemble.mix(trains, weights, temperature, mixed / "train"),
                       ensemble.mix(evals, weights, temperature, mixed / "eval"))


def cached_teacher_outputs(ctx: RunContext, cache, entry: str, key: str, compute):
    """(train, eval) outputs from the cache once the entry's hash and a fresh teacher pass on
    randomly sampled rows agree with it; None (with one log line) otherwise."""
    if not cache.exists(entry):
        return None
    uri = cache.uri_for(entry)
    local = ctx.work / "teacher-cache" / Path(entry).name
    local.parent.mkdir(parents=True, exist_ok=True)
    cache.download_file(entry, local)
    try:
        train_out, eval_out = teacher_cache.read_entry(local, key, len(ctx.train_data), len(ctx.eval_data))
        for split, data, cached in (("train", ctx.train_data, train_out), ("eval", ctx.eval_data, eval_out)):
            rows = teacher_cache.sample_rows(len(data))
            if not teacher_cache.outputs_agree(cached.rows(rows), compute(data.rows(rows))):
                raise teacher_cache.BadCacheEntry(f"it disagrees with the teacher on {len(rows)} sampled {split} rows")
    except teacher_cache.BadCacheEntry as err:
        ctx.progress.log(f"ignoring cached teacher outputs {uri}: {err}; recomputing them")
        return None
    ctx.progress.log(f"reusing cached teacher outputs {uri}")
    return train_out, eval_out


def online(ctx: RunContext) -> bool:
    return ctx.task.causal and ctx.spec.distillation.teacher_logits == TeacherLogits.ONLINE


# ----------------------------------------------------------------------------- select_layers


def select_layers(ctx: RunContext) -> None:
    """The student: resumed from a checkpoint that fits, or cut from the source model anew."""
    spec = ctx.spec
    ctx.progress.stage("selecting-layers", f"method {spec.student.method.value}")
    source = student_source(ctx.job, ctx.inputs, ctx.teacher, ctx.train_data)
    ctx.source_layers = source.num_layers()
    if ctx.state is not None:
        resume(ctx, source)
    if ctx.state is None:
        if ctx.task.causal:
            from distillery_trainer.lm.selection import select_decoder_layers as choose
        else:
            choose = choose_layers
        memo = ranking_memo(ctx, source)
        layers, scores = choose(source, ctx.train_data, ctx.job, ctx.device, memo)
        if memo.reused:
            ctx.progress.log(f"reused the layer ranking ({', '.join(memo.reused)}) from {memo.store.uri_for(memo.path)}")
        memo.save()
        ctx.state = CheckpointState(ctx.fingerprint, layers, scores, epoch=0, step_in_epoch=0, global_step=0,
                                    inputs=ctx.digests.model_dump())
        ctx.student = source.with_layers(layers)
        ctx.state.width = width.prune(ctx.student, ctx.train_data, ctx.job, ctx.device, ctx.progress.log, layers)
        ctx.student = vocabulary_pruning.prune_new(ctx, ctx.student)  # after depth and width: the last cut
    ctx.resumed_from = ctx.state.global_step or None
    if ctx.spec.incremental is not None:
        start_incremental(ctx, source)
    if source is ctx.teacher.net:
        source.cpu()
    ctx.progress.log(f"keeping layers {ctx.state.layers} of {ctx.source_layers}"
                     + (f" (scores {ctx.state.layer_scores})" if ctx.state.layer_scores else ""))
    vocabulary_pruning.student_view(ctx, source)  # from here on both splits carry the student's token ids


def old_eval_score(ctx: RunContext, net: Net) -> incremental.OldScore:
    """`net` on the old eval split: accuracy by the task's metric; a causal LM's next-token
    accuracy and perplexity, streamed like its other metrics."""
    net.to(ctx.device).eval()
    if ctx.task.causal:
        from distillery_trainer.lm.quality import lm_quality
        from distillery_trainer.lm.stages import torch_logits

        q = lm_quality(torch_logits(net, ctx.device), ctx.previous_eval, ctx.task.eval_batch, ctx.device)
        return incremental.OldScore(q.next_token_accuracy, q.perplexity)
    outputs = torch_outputs(net, ctx.previous_eval, EVAL_BATCH, ctx.device)
    return incremental.OldScore(ctx.task.quality(outputs, None, ctx.previous_eval.labels, None, None).accuracy)


def finish_incremental(ctx: RunContext, student: Net) -> None:
    """The incremental report: the old eval split before (student.base) and after (the student)."""
    after = old_eval_score(ctx, student)
    ewc = ctx.spec.distillation.ewc
    ctx.incremental_report = incremental.report(student_base_uri(ctx.spec.student.base), ctx.previous_before, after,
                                                ctx.inputs.replayed_rows, ctx.ewc, None if ewc is None else ewc.lambda_)
    before, r = ctx.previous_before, ctx.incremental_report
    perplexity = "" if after.perplexity is None else (f"; perplexity {before.perplexity:.2f} before, "
                                                      f"{after.perplexity:.2f} after")
    ctx.progress.log(f"old eval: {before.accuracy:.4f} before, {after.accuracy:.4f} after "
                     f"(forgetting {r.forgetting:+.4f}){perplexity}")


def start_incremental(ctx: RunContext, base: Net) -> None:
    """student.base's score on the old eval split, and the EWC penalty around its weights
    (measured on student.base itself, also when the run resumes)."""
    incremental.check_same_parameters(base, ctx.student)
    ctx.previous_before = old_eval_score(ctx, base)
    if ctx.spec.distillation.ewc is not None:
        ctx.ewc = incremental.ewc_penalty(base, ctx.previous_train, ctx.job, ctx.device)
        ctx.progress.log(f"EWC: Fisher of student.base on {ctx.ewc.rows} old train rows, "
                         f"lambda {ctx.spec.distillation.ewc.lambda_:g}")
    base.cpu()


def ranking_memo(ctx: RunContext, source: Net):
    """The layer-ranking cache entry for this teacher (or student.base) and data, next to the
    teacher-output cache; none for a fresh built-in net, whose layers are random."""
    spec = ctx.spec
    if spec.student.method != ExtractionMethod.IMPORTANCE or spec.student.architecture is not None:
        return NO_MEMO
    protect = extraction.protects_ends(spec.student, ctx.task.causal)
    cache, prefix = teacher_cache.cache_location(spec, ctx.store)
    return RankingMemo.open(cache, prefix, ranking_key(spec, ctx.digests, protect), source.num_layers(),
                            ctx.progress.log)


def resume(ctx: RunContext, source: Net) -> None:
    """Load the checkpoint's student and optimizer state, or drop it (one log line) when it does
    not fit: a bad checkpoint costs a restart from scratch, never a wrong model."""
    state = ctx.state
    ctx.progress.log(f"resuming from step {state.global_step} (epoch {state.epoch + 1})")
    try:
        if state.layers[-1] >= ctx.source_layers:
            raise CorruptCheckpoint(f"its layers go beyond the {ctx.source_layers} layers of the model")
        student = source.with_layers(state.layers)
        width.reapply(student, state.width, ctx.job)  # the same heads and neurons, before the weights
        student = vocabulary_pruning.prune_resumed(ctx, student, state)
        weights, payload = ctx.checkpoints.load_weights(state)
        weights = fill_tied(weights, student.state_dict())
        check_fits(state, weights, student.state_dict(), ctx.source_layers)
        student.load_state_dict(weights)
        training.check_resume_payload(student, ctx.spec.distillation, payload)
    except CorruptCheckpoint as err:
        ctx.progress.log(f"ignoring the checkpoint at step {state.global_step}: {err}; training starts from scratch")
        ctx.state = None
        return
    ctx.student, ctx.resume_payload = student, payload


# ----------------------------------------------------------------------------- train


def train(ctx: RunContext) -> None:
    d = ctx.spec.distillation
    ctx.progress.stage("training", f"{d.epochs} epochs, T={d.temperature:g}, alpha={d.alpha:g}")
    started = time.perf_counter()
    if not ctx.state.finished:
        teacher_net = ctx.teacher.net if online(ctx) else None
        soft_labels = ctx.ensemble.soft_train if ctx.ensemble is not None else ctx.teacher.train
        training.train(training.TrainContext(ctx.student, ctx.train_data, soft_labels, d, ctx.spec.teacher.task,
                                             ctx.device, ctx.checkpoints, ctx.state, ctx.progress, teacher_net,
                                             penalty=ctx.ewc, world=ctx.world),
                       ctx.resume_payload)
        if teacher_net is not None:
            teacher_net.cpu()
    ctx.train_seconds = time.perf_counter() - started


# ----------------------------------------------------------------------------- evaluate


def evaluate(ctx: RunContext) -> None:
    """The task's metric for the student and the teacher on the eval split."""
    ctx.progress.stage("evaluating")
    task, student = ctx.task, ctx.student
    eval_labels, train_labels = ctx.eval_data.labels, ctx.train_data.labels
    student.to(ctx.device).eval()
    student_eval = torch_outputs(student, ctx.eval_data, EVAL_BATCH, ctx.device)
    require_finite(student_eval, "the student's", "eval")
    student_train = (torch_outputs(student, ctx.train_data, EVAL_BATCH, ctx.device,
                                   into=ctx.work / "outputs" / "student" / "train")
                     if task.quality_needs_train_outputs else None)
    ctx.quality["student"] = task.quality(student_eval, ctx.teacher.eval, eval_labels, student_train, train_labels)
    ctx.quality["teacher"] = task.quality(ctx.teacher.eval, None, eval_labels, ctx.teacher.train, train_labels)
    if ctx.previous_eval is not None:
        finish_incremental(ctx, student)
    if ctx.ensemble is not None:
        ctx.ensemble_report = ensemble.report(ctx.ensemble, task, eval_labels, train_labels)
        ctx.progress.log("ensemble: " + ", ".join(f"{m.uri} {m.accuracy:.4f}" for m in ctx.ensemble_report.members)
                         + f"; mixture {ctx.ensemble_report.accuracy:.4f}")
    student.cpu()


# ----------------------------------------------------------------------------- export


def export(ctx: RunContext) -> None:
    """Weights, ONNX (and int8) files of the student, the teacher as ONNX to measure it alike."""
    ctx.progress.stage("exporting")
    spec, student, teacher = ctx.spec, ctx.student, ctx.teacher
    staging = ctx.work / "artifacts"
    weights_dir = staging / "model"
    with width.standard_layout(student):  # removed heads as zeros: a config from_pretrained loads
        student.save(weights_dir)
    publish.write_provenance(weights_dir, ctx.job, ctx.state.layers, teacher_layers_of(teacher))
    vocabulary_pruning.save_student_tokenizer(ctx, weights_dir)
    features = ctx.train_data.tensors.get("features")
    feature_shape = tuple(features.shape[1:]) if features is not None else ()
    example = example_inputs(student, spec.benchmark.batch_size, spec.benchmark.sequence_length, feature_shape)
    example = vocabulary_pruning.student_example(ctx, example)
    student_onnx = export_onnx(student, staging / "model.onnx", example, spec.export.opset)
    if teacher.onnx is not None:
        teacher_onnx, teacher_params, teacher_layers = teacher.onnx.path, onnx_parameter_count(teacher.onnx.path), None
    else:
        teacher_onnx = export_onnx(teacher.net, ctx.work / "teacher.onnx", example, spec.export.opset)
        teacher_params, teacher_layers = teacher.net.parameter_count(), teacher.net.num_layers()
    int8 = quantize_int8(student_onnx, staging / "model.int8.onnx") if spec.export.int8 else None
    ctx.exported = Exported(staging, weights_dir, student_onnx, teacher_onnx, int8, example,
                            onnx_round_trip_diff(ctx, student_onnx), teacher_params, teacher_layers)


def onnx_round_trip_diff(ctx: RunContext, student_onnx) -> float:
    """Largest difference between the ONNX file and the torch student on one eval batch."""
    head = Encoded({k: v[:EVAL_BATCH] for k, v in ctx.eval_data.tensors.items()}, None)
    from_onnx = onnx_outputs(student_onnx, [next(head.batches(EVAL_BATCH))], ctx.spec.targets.hardware)
    from_torch = ctx.task.answer(torch_outputs(ctx.student, head, EVAL_BATCH, torch.device("cpu")))
    return float((from_onnx - from_torch).abs().max())


def teacher_layers_of(teacher: TeacherSide) -> int | None:
    return None if teacher.net is None else teacher.net.num_layers()


def onnx_parameter_count(path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        total += n
    return total


# ----------------------------------------------------------------------------- benchmark


def metrics(q: Quality, latency: Latency, params: int, size: int, layers: int | None,
            memory: MemoryUse | None = None) -> ModelMetrics:
    return ModelMetrics(
        accuracy=round(q.accuracy, 6), metric_name=q.metric_name,
        agreement=None if q.agreement is None else round(q.agreement, 6),
        fidelity=None if q.fidelity is None else round(q.fidelity, 6),
        latency_p50_ms=round(latency.p50_ms, 4), latency_p95_ms=round(latency.p95_ms, 4),
        parameters=params, size_bytes=size, num_layers=layers,
        memory_bytes=None if memory is None else memory.session_bytes,
    )


def memory_uses(paths: list, feeds: list[dict], ctx: RunContext) -> list[MemoryUse | None]:
    """Each model's runtime memory on its feed, measured one at a time in a fresh process
    (memory_probe.py). A probe that fails leaves that model's memory unmeasured (one log line; a
    maxMemoryBytes target then misses) rather than failing a run whose other numbers are sound."""
    hardware, threads = ctx.spec.targets.hardware, ctx.spec.benchmark.threads
    uses = []
    for path, feed in zip(paths, feeds, strict=True):
        try:
            uses.append(measure_memory(path, feed, providers_for(hardware), threads))
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
            ctx.progress.log(f"runtime memory of {path.name} not measured: {err}")
            uses.append(None)
    ctx.progress.log("runtime memory (onnxruntime session, benchmark batch): " + ", ".join(
        f"{path.name} {'-' if use is None else f'{use.session_bytes / 2**20:.1f} MiB'}"
        for path, use in zip(paths, uses, strict=True)))
    return uses


def benchmark(ctx: RunContext) -> None:
    """Latency of teacher, student (and int8) with onnxruntime, measured in turns so the speedup
    is a ratio from one spell; then each model's metrics."""
    spec, ex, student = ctx.spec, ctx.exported, ctx.student
    hardware = spec.targets.hardware
    ctx.progress.stage("benchmarking", f"onnxruntime on {hardware.value}, batch {spec.benchmark.batch_size}")
    models = [ex.teacher_onnx, ex.student_onnx, *([ex.int8_onnx] if ex.int8_onnx else [])]
    latencies = measure_latencies(models, ex.example, spec.benchmark, hardware)
    ctx.progress.fraction(0.3)
    memory = memory_uses(models, [feed_for_file(path, ex.example) for path in models], ctx)
    ctx.progress.fraction(0.5)
    teacher_m = metrics(ctx.quality["teacher"], latencies[0], ex.teacher_parameters, ex.teacher_onnx.stat().st_size,
                        ex.teacher_layers, memory[0])
    student_m = metrics(ctx.quality["student"], latencies[1], student.parameter_count(),
                        ex.student_onnx.stat().st_size, student.num_layers(), memory[1])
    int8_m = None
    if ex.int8_onnx is not None:
        ctx.progress.fraction(0.7)
        q_int8 = int8_quality(ctx, ex.int8_onnx)
        int8_m = metrics(q_int8, latencies[2], student_m.parameters, ex.int8_onnx.stat().st_size, student.num_layers(),
                         memory[2])
    ctx.measured = Measurements(teacher_m, student_m, int8_m)


def onnx_split_outputs(path: Path, data: Encoded, task, hardware, into: Path) -> TeacherOutputs:
    """An exported model's outputs on a whole split, written batch by batch as memory-mapped
    files under `into` (a kNN metric's train embeddings never sit in memory at once)."""
    writer = OutputWriter(into, len(data))
    for answer in onnx_batch_outputs(path, data.batches(EVAL_BATCH), hardware):
        writer.add(task.from_answer(answer))
    return writer.finish()


def int8_quality(ctx: RunContext, path) -> Quality:
    """The int8 model scored like the student, from what its ONNX file returns."""
    task, hardware, folder = ctx.task, ctx.spec.targets.hardware, ctx.work / "outputs" / "int8"
    int8_eval = onnx_split_outputs(path, ctx.eval_data, task, hardware, folder / "eval")
    int8_train = None
    if task.quality_needs_train_outputs:
        int8_train = onnx_split_outputs(path, ctx.train_data, task, hardware, folder / "train")
    return task.quality(int8_eval, ctx.teacher.eval, ctx.eval_data.labels, int8_train, ctx.train_data.labels)


# ----------------------------------------------------------------------------- decide


def decide(ctx: RunContext) -> None:
    """The targets applied to each measured variant, one chosen by targets.optimizeFor; a
    non-finite number fails the run instead."""
    m = ctx.measured
    # model_dump in python mode: JSON mode would have turned NaN into null already.
    numbers = {"teacher": m.teacher.model_dump(by_alias=True), "student": m.student.model_dump(by_alias=True),
               "studentInt8": None if m.student_int8 is None else m.student_int8.model_dump(by_alias=True),
               "onnxMaxAbsDiff": ctx.exported.onnx_max_abs_diff}
    bad = non_finite_paths(numbers)
    if bad:
        raise NonFiniteError(f"measured {', '.join(bad[:5])} is NaN or infinite; check the inputs "
                             "(features contain NaN/inf?) and the learning rate")
    uris = publish.artifact_uris(ctx.store, ctx.spec, m.student_int8 is not None)
    # A causal LM's fp32 student is its Hugging Face directory; model.onnx, timed, is its checked export.
    fp32_artifact = uris.get("weights") if ctx.task.causal else uris.get("onnx")
    candidates = [Candidate(FP32, m.student, fp32_artifact)]
    if m.student_int8 is not None:
        candidates.append(Candidate(INT8, m.student_int8, uris.get("onnx_int8")))
    ctx.judged = judge(ctx.spec.targets, m.teacher, candidates)
    if len(candidates) > 1:
        ctx.progress.log("variants: " + ", ".join(
            f"{v.name} {'meets every target' if v.accepted else 'rejected'}" for v in ctx.judged.variants)
            + f"; the student is the {ctx.judged.chosen.name} variant (optimizeFor {ctx.spec.targets.optimize_for.value})")


# ----------------------------------------------------------------------------- write


def build_result(ctx: RunContext) -> TrainerResult:
    spec, state, m = ctx.spec, ctx.state, ctx.measured
    return TrainerResult(
        job=ctx.job.metadata.name, task=spec.teacher.task, hardware=spec.targets.hardware,
        fingerprint=ctx.fingerprint, spec_hash=ctx.spec_hash, teacher_uri=spec.teacher.uri,
        teacher=m.teacher,
        teacher_layers=ctx.exported.teacher_layers, layers_kept=state.layers, layer_scores=state.layer_scores,
        width=width.result_block(state.width),
        **result_fields(ctx.judged),
        artifacts=publish.artifact_uris(ctx.store, spec, ctx.exported.int8_onnx is not None),
        training=TrainingSummary(epochs=spec.distillation.epochs, steps=state.global_step,
                                 seconds=round(ctx.train_seconds, 2), device=ctx.device.type,
                                 history=state.history, resumed_from_step=ctx.resumed_from,
                                 world_size=ctx.world.size),
        onnx_max_abs_diff=round(ctx.exported.onnx_max_abs_diff, 8), inputs=ctx.digests, ensemble=ctx.ensemble_report,
        incremental=ctx.incremental_report, vocabulary=ctx.vocabulary,
        start_time=ctx.started, completion_time=now(),
    )


def write(ctx: RunContext) -> None:
    ctx.progress.stage("writing", f"artifacts to {ctx.store.uri_for('')}")
    result = build_result(ctx)
    publish.write_artifacts(ctx.store, ctx.spec, ctx.exported.staging, ctx.exported.weights_dir, result, ctx.job)
    ctx.result = result


STAGES = (load, reuse_finished, teacher_outputs, select_layers, train, evaluate, export, benchmark, decide, write)


def stages_for(task: TaskStrategy) -> tuple:
    """A causal LM is evaluated, exported and measured its own way (lm/stages.py)."""
    if not task.causal:
        return STAGES
    from distillery_trainer.lm import stages as lm_stages

    return (load, reuse_finished, teacher_outputs, select_layers, train, lm_stages.evaluate, lm_stages.export,
            lm_stages.benchmark, decide, write)
