"""The stages where a causal LM differs from the other tasks: evaluate, export and benchmark.

The rest of a run (load, reuse, teacher pass, layer selection, training, decision, write) is
shared with stages.py. A decoder's logits over a 50k vocabulary are too large to keep for a whole
split, so every metric here is computed batch by batch. Teacher and student are exported as one
ONNX graph each with KV-cache inputs and outputs (lm/onnx_decoder.py); latency is decode time per
token at batch 1 with that cache, plus prefill throughput, measured with onnxruntime on the target
hardware for the teacher, the student and its int8 graph alike, in turns.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from distillery.api.job import ModelMetrics, Task
from distillery.api.result import EnsembleMember, EnsembleReport
from distillery_trainer import publish
from distillery_trainer.errors import NonFiniteError
from distillery_trainer.evaluation import Quality
from distillery_trainer.lm.model import cache_io_names
from distillery_trainer.lm.onnx_decoder import DecoderSession, export_decoder, measure_onnx_speeds
from distillery_trainer.lm.quality import lm_quality, zero_shot_accuracy
from distillery_trainer.lm.speed import DecodeSpeed
from distillery_trainer.lm.text_blocks import zero_shot_set
from distillery_trainer.onnx_tools import quantize_int8
from distillery_trainer.run_context import Exported, Measurements, RunContext
from distillery_trainer.stages import finish_incremental, memory_uses
from distillery_trainer.teacher import autocast, load_torch_model

LATENCY_NAME = "decode-ms-per-token"
# Blocks of the eval split fed to the ONNX round-trip check.
ONNX_CHECK_BLOCKS = 2


def torch_logits(net, device: torch.device):
    """logits_of(batch) for a torch decoder, in eval mode and without gradients."""
    net.to(device).eval()

    @torch.no_grad()
    def logits_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(device):
            return net.outputs(batch).logits.float()

    return logits_of


def onnx_logits(path: Path, ctx: RunContext):
    """logits_of(batch) for an exported decoder graph (the int8 model is scored through it)."""
    decoder = DecoderSession(path, ctx.spec.targets.hardware, ctx.spec.benchmark.threads)

    def logits_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = decoder.logits(batch["input_ids"].cpu().numpy(), batch["attention_mask"].cpu().numpy())
        return torch.from_numpy(logits).float()

    return logits_of


def zero_shot_examples(ctx: RunContext):
    """The labelled eval rows as zero-shot prompts, or None when the eval split has no labels."""
    split, labels, ds = ctx.inputs.eval, ctx.inputs.labels, ctx.spec.dataset
    if split.labels is None or labels is None:
        return None
    return zero_shot_set(split.row_texts(), split.labels, labels.names, ctx.inputs.tokenizer, ds.prompt_template,
                         ds.max_prompt_rows, ds.max_sequence_length)


def score(ctx: RunContext, logits_of, teacher_top1: torch.Tensor | None, examples) -> Quality:
    """Perplexity, next-token accuracy, agreement with the teacher's top-1 and zero-shot accuracy."""
    q = lm_quality(logits_of, ctx.eval_data, ctx.task.eval_batch, ctx.device, teacher_top1)
    if not all(np.isfinite([q.perplexity, q.next_token_accuracy])):
        raise NonFiniteError("the perplexity or next-token accuracy on the eval split is NaN or infinite; "
                             "check the learning rate")
    zero_shot = None if examples is None else zero_shot_accuracy(logits_of, examples, ctx.device)
    return Quality(q.next_token_accuracy, "next-token-accuracy", agreement=q.agreement,
                   perplexity=q.perplexity, zero_shot_accuracy=zero_shot)


def evaluate(ctx: RunContext) -> None:
    ctx.progress.stage("evaluating", "perplexity, next-token accuracy, agreement, zero-shot")
    examples = zero_shot_examples(ctx)
    ctx.zero_shot = examples
    teacher_top1 = ctx.teacher.eval.topk_ids[..., 0].long()
    ctx.quality["teacher"] = score(ctx, torch_logits(ctx.teacher.net, ctx.device), None, examples)
    ctx.teacher.net.cpu()
    ctx.progress.fraction(0.5)
    ctx.quality["student"] = score(ctx, torch_logits(ctx.student, ctx.device), teacher_top1, examples)
    if ctx.previous_eval is not None:
        finish_incremental(ctx, ctx.student)
    ctx.student.cpu()
    if ctx.ensemble is not None:
        ctx.ensemble_report = ensemble_report(ctx, examples)
        ctx.progress.log("ensemble: " + ", ".join(f"{m.uri} perplexity {m.perplexity:.2f}"
                                                  for m in ctx.ensemble_report.members)
                         + f"; mixture {ctx.ensemble_report.perplexity:.2f}")


def mixture_logits(logits_fns, weights: list[float]):
    """logits_of(batch) whose softmax is the teachers' mixture at T=1, sum_i w_i softmax(z_i): the
    full distributions, not the top-k lists the student learned from."""

    def logits_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        terms = [torch.log_softmax(fn(batch), dim=-1) + math.log(w) for fn, w in zip(logits_fns, weights, strict=True)]
        return torch.logsumexp(torch.stack(terms), dim=0)

    return logits_of


def ensemble_report(ctx: RunContext, examples) -> EnsembleReport:
    """Each teacher of a causal-lm ensemble alone and their mixture, scored like the student."""
    run = ctx.ensemble
    members = [load_torch_model(path, member.format, Task.CAUSAL_LM, None)
               for member, path in zip(ctx.spec.ensemble.teachers, ctx.inputs.ensemble, strict=True)]
    nets = [ctx.teacher.net, *members]
    qualities = [ctx.quality["teacher"]]
    for net in members:
        qualities.append(score(ctx, torch_logits(net, ctx.device), None, examples))
        net.cpu()
    mixture = score(ctx, mixture_logits([torch_logits(net, ctx.device) for net in nets], run.weights), None, examples)
    for net in nets:
        net.cpu()
    return EnsembleReport(
        members=[EnsembleMember(uri=uri, weight=round(w, 6), accuracy=round(q.accuracy, 6),
                                perplexity=round(q.perplexity, 4))
                 for uri, w, q in zip(run.uris, run.weights, qualities, strict=True)],
        accuracy=round(mixture.accuracy, 6), metric_name=mixture.metric_name, perplexity=round(mixture.perplexity, 4))


def weights_size(directory: Path) -> int:
    """Bytes of a model directory's safetensors files (what a user downloads to run it)."""
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def export(ctx: RunContext) -> None:
    """The student as a Hugging Face directory and as an ONNX graph with a KV cache (and int8);
    the teacher's graph too, outside the artifacts, to time it the same way."""
    ctx.progress.stage("exporting", "Hugging Face directory and ONNX decoder graphs with a KV cache")
    spec, student, teacher = ctx.spec, ctx.student, ctx.teacher
    staging = ctx.work / "artifacts"
    weights_dir = staging / "model"
    student.save(weights_dir)
    publish.write_provenance(weights_dir, ctx.job, ctx.state.layers, teacher.net.num_layers())
    student_onnx = export_decoder(student, staging / "model.onnx", spec.export.opset)
    teacher_onnx = export_decoder(teacher.net, ctx.work / "teacher.onnx", spec.export.opset)
    head = {k: v[:ONNX_CHECK_BLOCKS] for k, v in ctx.eval_data.tensors.items()}
    diff = cached_round_trip_diff(student, DecoderSession(student_onnx, spec.targets.hardware, spec.benchmark.threads),
                                  head)
    int8 = quantize_int8(student_onnx, staging / "model.int8.onnx") if spec.export.int8 else None
    bench = spec.benchmark
    ids = torch.ones(bench.batch_size, bench.sequence_length, dtype=torch.long)
    example = (ids, torch.ones_like(ids))  # the benchmark batch: what memory is measured on
    ctx.exported = Exported(staging, weights_dir, student_onnx, teacher_onnx, int8, example, diff,
                            teacher.net.parameter_count(), teacher.net.num_layers())


def cached_round_trip_diff(student, decoder: DecoderSession, blocks: dict[str, torch.Tensor]) -> float:
    """Largest difference between the graph's logits and torch's on a few eval blocks, taking the
    graph's own path: all but the last token as a prefill, then the last one with the cache."""
    ids = blocks["input_ids"].cpu()
    expected = torch_logits(student, torch.device("cpu"))({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    prefix, last = ids[:, :-1].numpy().astype(np.int64), ids[:, -1:].numpy().astype(np.int64)
    first, *present = decoder.sess.run(None, {"input_ids": prefix, "attention_mask": np.ones_like(prefix),
                                              **decoder.empty_past(prefix.shape[0])})
    step = decoder.sess.run(["logits"], {"input_ids": last, "attention_mask": np.ones_like(ids.numpy(), dtype=np.int64),
                                         **dict(zip(decoder.past_names, present, strict=True))})[0]
    got = np.concatenate([first, step], axis=1)
    return float(np.abs(got - expected.numpy()).max())


def lm_metrics(q: Quality, speed: DecodeSpeed, params: int, size: int, layers: int | None,
               memory: int | None) -> ModelMetrics:
    return ModelMetrics(
        accuracy=round(q.accuracy, 6), metric_name=q.metric_name,
        agreement=None if q.agreement is None else round(q.agreement, 6),
        perplexity=round(q.perplexity, 4),
        zero_shot_accuracy=None if q.zero_shot_accuracy is None else round(q.zero_shot_accuracy, 6),
        latency_p50_ms=round(speed.ms_per_token_p50, 4), latency_p95_ms=round(speed.ms_per_token_p95, 4),
        latency_name=LATENCY_NAME, prefill_tokens_per_second=round(speed.prefill_tokens_per_second, 2),
        parameters=params, size_bytes=size, num_layers=layers, memory_bytes=memory)


def prefill_feeds(example: tuple, nets: list) -> list[dict[str, np.ndarray]]:
    """What each graph's memory is measured on: a prefill of the benchmark batch (empty cache)."""
    ids, mask = (t.numpy().astype(np.int64) for t in example)
    feeds = []
    for net in nets:
        empty = np.zeros(net.cache_shape(ids.shape[0], 0), dtype=np.float32)
        past_names, _ = cache_io_names(net.num_layers())
        feeds.append({"input_ids": ids, "attention_mask": mask, **dict.fromkeys(past_names, empty)})
    return feeds


def benchmark(ctx: RunContext) -> None:
    """Decode ms/token and prefill tokens/s of teacher, student and int8 graphs with onnxruntime,
    in turns; the int8 graph is kept only where it decodes faster than the fp32 graph."""
    spec, ex, student, teacher = ctx.spec, ctx.exported, ctx.student, ctx.teacher.net
    bench = spec.benchmark
    ctx.progress.stage("benchmarking", f"onnxruntime: decode {bench.decode_tokens} tokens at batch 1 after a "
                                       f"{bench.sequence_length}-token prompt, on {spec.targets.hardware.value}")
    models = [ex.teacher_onnx, ex.student_onnx, *([ex.int8_onnx] if ex.int8_onnx else [])]
    speeds = measure_onnx_speeds(models, bench.sequence_length, bench.decode_tokens, bench.batch_size,
                                 bench.warmup, bench.iterations, spec.targets.hardware, bench.threads)
    ctx.progress.fraction(0.4)
    if ex.int8_onnx is not None and speeds[2].ms_per_token_p50 >= speeds[1].ms_per_token_p50:
        ctx.progress.log(f"int8 graph not kept: it decodes in {speeds[2].ms_per_token_p50:.2f} ms/token against "
                         f"{speeds[1].ms_per_token_p50:.2f} for fp32 under onnxruntime here")
        ex.int8_onnx.unlink()
        ex.int8_onnx, models, speeds = None, models[:2], speeds[:2]
    memory = [None if use is None else use.session_bytes
              for use in memory_uses(models, prefill_feeds(ex.example, [teacher, student, student][:len(models)]), ctx)]
    ctx.progress.fraction(0.6)
    teacher_m = lm_metrics(ctx.quality["teacher"], speeds[0], ex.teacher_parameters,
                           weights_size(ctx.inputs.teacher_path), ex.teacher_layers, memory[0])
    student_m = lm_metrics(ctx.quality["student"], speeds[1], student.parameter_count(),
                           weights_size(ex.weights_dir), student.num_layers(), memory[1])
    int8_m = None
    if ex.int8_onnx is not None:
        q = score(ctx, onnx_logits(ex.int8_onnx, ctx), ctx.teacher.eval.topk_ids[..., 0].long(), ctx.zero_shot)
        int8_m = lm_metrics(q, speeds[2], student_m.parameters, ex.int8_onnx.stat().st_size, student.num_layers(),
                            memory[2])
    ctx.measured = Measurements(teacher_m, student_m, int8_m)
