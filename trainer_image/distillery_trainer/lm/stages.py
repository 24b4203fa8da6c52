"""The stages where a causal LM differs from the other tasks: evaluate, export and benchmark.

The rest of a run (load, reuse, teacher pass, layer selection, training, decision, write) is
shared with stages.py. A decoder's logits over a 50k vocabulary are too large to keep for a whole
split, so every metric here is computed batch by batch; its latency is decode time per token with
a KV cache at batch 1 and prefill throughput, measured in torch on the target device for teacher
and student alike (an ONNX graph without a cache could not measure decoding); the exported
prefill ONNX graph and its int8 version are checked and measured with onnxruntime.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from distillery.api.job import ModelMetrics
from distillery_trainer import publish
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import NonFiniteError
from distillery_trainer.evaluation import Quality
from distillery_trainer.lm.quality import lm_quality, zero_shot_accuracy
from distillery_trainer.lm.speed import measure_speeds
from distillery_trainer.lm.text_blocks import zero_shot_set
from distillery_trainer.onnx_tools import export_onnx, quantize_int8, session
from distillery_trainer.run_context import Exported, Measurements, RunContext
from distillery_trainer.teacher import autocast

LATENCY_NAME = "decode-ms-per-token"
# Blocks of the eval split fed to the ONNX round-trip check and to the ORT prefill timing.
ONNX_CHECK_BLOCKS = 2
ORT_PREFILL_RUNS = 5


def torch_logits(net, device: torch.device):
    """logits_of(batch) for a torch decoder, in eval mode and without gradients."""
    net.to(device).eval()

    @torch.no_grad()
    def logits_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(device):
            return net.outputs(batch).logits.float()

    return logits_of


def onnx_logits(path: Path, ctx: RunContext):
    """logits_of(batch) for an exported prefill graph (the int8 model is scored through it)."""
    sess = session(path, ctx.spec.targets.hardware, ctx.spec.benchmark.threads)

    def logits_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {i.name: batch[i.name].cpu().numpy().astype(np.int64) for i in sess.get_inputs()}
        return torch.from_numpy(sess.run(None, feed)[0]).float()

    return logits_of


def zero_shot_examples(ctx: RunContext):
    """The labelled eval rows as zero-shot prompts, or None when the eval split has no labels."""
    split, labels, ds = ctx.inputs.eval, ctx.inputs.labels, ctx.spec.dataset
    if split.labels is None or labels is None:
        return None
    return zero_shot_set(split.all_texts(), split.labels, labels.names, ctx.inputs.tokenizer, ds.prompt_template,
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
    ctx.student.cpu()


def weights_size(directory: Path) -> int:
    """Bytes of a model directory's safetensors files (what a user downloads to run it)."""
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def export(ctx: RunContext) -> None:
    """The student as a Hugging Face directory, its prefill graph as ONNX (and int8)."""
    ctx.progress.stage("exporting", "Hugging Face directory and ONNX prefill graph")
    spec, student, teacher = ctx.spec, ctx.student, ctx.teacher
    staging = ctx.work / "artifacts"
    weights_dir = staging / "model"
    student.save(weights_dir)
    publish.write_provenance(weights_dir, ctx.job, ctx.state.layers, teacher.net.num_layers())
    head = Encoded({k: v[:ONNX_CHECK_BLOCKS] for k, v in ctx.eval_data.tensors.items()}, None)
    example = tuple(head.tensors[name] for name in student.input_names)
    student_onnx = export_onnx(student, staging / "model.onnx", example, spec.export.opset)
    diff = float((onnx_logits(student_onnx, ctx)(head.tensors) - torch_logits(student, torch.device("cpu"))(
        head.tensors)).abs().max())
    int8 = quantize_int8(student_onnx, staging / "model.int8.onnx") if spec.export.int8 else None
    ctx.exported = Exported(staging, weights_dir, student_onnx, None, int8, example, diff,
                            teacher.net.parameter_count(), teacher.net.num_layers())


def ort_prefill_tokens_per_second(ctx: RunContext, path: Path) -> float:
    """Prefill throughput of an ONNX graph on the benchmark batch (onnxruntime, target hardware)."""
    bench = ctx.spec.benchmark
    sess = session(path, ctx.spec.targets.hardware, bench.threads)
    ids = torch.randint(0, ctx.student.vocab_size(), (bench.batch_size, bench.sequence_length),
                        generator=torch.Generator().manual_seed(0))
    feed = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}
    feed = {i.name: feed[i.name] for i in sess.get_inputs()}
    sess.run(None, feed)
    start = time.perf_counter()
    for _ in range(ORT_PREFILL_RUNS):
        sess.run(None, feed)
    return ORT_PREFILL_RUNS * ids.numel() / (time.perf_counter() - start)


def lm_metrics(q: Quality, speed, params: int, size: int, layers: int | None) -> ModelMetrics:
    """A model's metrics; `speed` is None for the int8 graph, whose decoding is not measured."""
    return ModelMetrics(
        accuracy=round(q.accuracy, 6), metric_name=q.metric_name,
        agreement=None if q.agreement is None else round(q.agreement, 6),
        perplexity=round(q.perplexity, 4),
        zero_shot_accuracy=None if q.zero_shot_accuracy is None else round(q.zero_shot_accuracy, 6),
        latency_p50_ms=None if speed is None else round(speed.ms_per_token_p50, 4),
        latency_p95_ms=None if speed is None else round(speed.ms_per_token_p95, 4),
        latency_name=None if speed is None else LATENCY_NAME,
        prefill_tokens_per_second=None if speed is None else round(speed.prefill_tokens_per_second, 2),
        parameters=params, size_bytes=size, num_layers=layers)


def benchmark(ctx: RunContext) -> None:
    """Decode ms/token and prefill tokens/s of teacher and student, measured in turns; the int8
    prefill graph is kept only where onnxruntime runs it faster than the fp32 graph."""
    spec, ex, student, teacher = ctx.spec, ctx.exported, ctx.student, ctx.teacher.net
    bench = spec.benchmark
    ctx.progress.stage("benchmarking", f"decode {bench.decode_tokens} tokens at batch 1 after a "
                                       f"{bench.sequence_length}-token prompt, on {spec.targets.hardware.value}")
    speeds = measure_speeds([teacher.model, student.model], bench.sequence_length, bench.decode_tokens,
                            bench.batch_size, bench.warmup, bench.iterations, ctx.device, bench.threads)
    teacher.cpu()
    student.cpu()
    ctx.progress.fraction(0.6)
    teacher_m = lm_metrics(ctx.quality["teacher"], speeds[0], ex.teacher_parameters,
                           weights_size(ctx.inputs.teacher_path), ex.teacher_layers)
    student_m = lm_metrics(ctx.quality["student"], speeds[1], student.parameter_count(),
                           weights_size(ex.weights_dir), student.num_layers())
    int8_m = None
    if ex.int8_onnx is not None:
        fp32_rate = ort_prefill_tokens_per_second(ctx, ex.student_onnx)
        int8_rate = ort_prefill_tokens_per_second(ctx, ex.int8_onnx)
        if int8_rate <= fp32_rate:
            ctx.progress.log(f"int8 prefill graph not kept: {int8_rate:.0f} tokens/s against {fp32_rate:.0f} for "
                             "fp32 under onnxruntime here")
            ex.int8_onnx.unlink()
            ex.int8_onnx = None
        else:
            q = score(ctx, onnx_logits(ex.int8_onnx, ctx), ctx.teacher.eval.topk_ids[..., 0].long(), ctx.zero_shot)
            # Its onnxruntime prefill rate is not comparable with the torch figures beside it: logged only.
            int8_m = lm_metrics(q, None, student_m.parameters, ex.int8_onnx.stat().st_size, student.num_layers())
            ctx.progress.log(f"int8 prefill graph: {int8_rate:.0f} tokens/s against {fp32_rate:.0f} for fp32 "
                             "(onnxruntime)")
    ctx.measured = Measurements(teacher_m, student_m, int8_m)
