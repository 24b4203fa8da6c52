"""How a result is shown: the terminal table, metrics.json and the model card."""

from __future__ import annotations

from distillery.api.result import TrainerResult


def _fmt(value, spec: str = ".4f", suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{suffix}"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(result: TrainerResult) -> str:
    """Teacher vs every variant of the student, then the chosen one's scores and the verdict."""
    cols = [("teacher", result.teacher)]
    if len(result.variants) == 1:
        cols.append(("student", result.student))
    else:
        cols.extend((f"student {v.name}" + (" *" if v.name == result.variant else ""), v.metrics)
                    for v in result.variants)
    metric = result.student.metric_name or "accuracy"
    decode = result.student.latency_name == "decode-ms-per-token"
    latency = "decode ms/token" if decode else "latency"
    rows = [
        ("perplexity", [_fmt(m.perplexity, ".2f") for _, m in cols]),
        (metric, [_fmt(m.accuracy) for _, m in cols]),
        ("zero-shot accuracy", [_fmt(m.zero_shot_accuracy) for _, m in cols]),
        ("agreement w/ teacher", ["-"] + [_fmt(m.agreement) for _, m in cols[1:]]),
        ("fidelity (cosine)", ["-"] + [_fmt(m.fidelity) for _, m in cols[1:]]),
        (f"{latency} p50", [_fmt(m.latency_p50_ms, ".2f", " ms") for _, m in cols]),
        (f"{latency} p95", [_fmt(m.latency_p95_ms, ".2f", " ms") for _, m in cols]),
        ("prefill tokens/s", [_fmt(m.prefill_tokens_per_second, ".0f") for _, m in cols]),
        ("parameters", [f"{m.parameters:,}" if m.parameters else "-" for _, m in cols]),
        ("size (safetensors; int8: onnx)" if decode and len(cols) > 2 else "size (safetensors)" if decode
         else "size (onnx)", [_size(m.size_bytes) for _, m in cols]),
        ("memory (ort session)", [_size(m.memory_bytes) for _, m in cols]),
        ("layers", [str(m.num_layers) if m.num_layers else "-" for _, m in cols]),
    ]
    rows = [r for r in rows if any(v != "-" for v in r[1])]
    width0 = max(len(r[0]) for r in rows)
    widths = [max(len(name), *(len(r[1][i]) for r in rows)) for i, (name, _) in enumerate(cols)]
    lines = ["  ".join([" " * width0] + [name.rjust(w) for (name, _), w in zip(cols, widths, strict=True)])]
    for label, values in rows:
        lines.append("  ".join([label.ljust(width0)] + [v.rjust(w) for v, w in zip(values, widths, strict=True)]))
    lines.append("")
    if len(result.variants) > 1:
        lines.append("variants (* = the student: the best by targets.optimizeFor that meets every target)")
        for v in result.variants:
            scores = "" if v.speedup is None else f"speedup {v.speedup:.2f}x, pareto {v.pareto_score:.4f}, "
            lines.append(f"  {v.name}: {scores}{'meets every target' if v.accepted else 'rejected'}"
                         + ("" if v.accepted else f" ({'; '.join(v.reasons)})"))
        lines.append("")
    if result.incremental is not None:
        inc = result.incremental
        remedies = [f"{inc.replayed_rows} old rows replayed"] if inc.replayed_rows else []
        remedies += [f"EWC lambda {inc.ewc_lambda:g} (Fisher on {inc.fisher_rows} old rows)"] if inc.ewc_lambda else []
        lines.append(f"continued from     {inc.parent}" + (f" ({', '.join(remedies)})" if remedies else ""))
        lines.append(f"old eval accuracy  {inc.previous_accuracy_before:.4f} before, {inc.previous_accuracy_after:.4f} "
                     f"after (forgetting {inc.forgetting:+.4f})")
        if inc.previous_perplexity_after is not None:
            lines.append(f"old eval perplexity {inc.previous_perplexity_before:.2f} before, "
                         f"{inc.previous_perplexity_after:.2f} after")
        lines.append("")
    if result.ensemble is not None:
        lines.append(f"ensemble ({result.ensemble.metric_name or 'accuracy'} on eval; the student learned from "
                     "the mixture, and is measured against the first)")
        def perplexity(value: float | None) -> str:
            return "" if value is None else f"  perplexity {value:.2f}"

        lines.extend(f"  {m.accuracy:.4f}  weight {m.weight:.3f}  {m.uri}{perplexity(m.perplexity)}"
                     for m in result.ensemble.members)
        lines.append(f"  {result.ensemble.accuracy:.4f}  the mixture{perplexity(result.ensemble.perplexity)}")
        lines.append("")
    lines.append(f"layers kept        {result.layers_kept} of {result.teacher_layers or '?'}")
    if result.width is not None:
        lines.append(f"width              {result.width.summary()}")
    if result.vocabulary is not None:
        lines.append(f"vocabulary         {vocabulary_summary(result.vocabulary)}")
    how = "onnxruntime, decode at batch 1 with a KV cache" if decode else "onnxruntime"
    lines.append(f"speedup            {result.speedup:.2f}x  ({result.hardware.value}, {how})")
    lines.append(f"accuracy retention {result.accuracy_retention:.4f}")
    lines.append(f"compression ratio  {result.compression_ratio:.2f}x")
    lines.append(f"pareto score       {result.pareto_score:.4f}")
    verdict = "ACCEPTED" if result.decision.accepted else "REJECTED"
    lines.append(f"verdict            {verdict}" + (f" ({result.variant} variant)" if len(result.variants) > 1 else ""))
    lines.extend(f"  - {reason}" for reason in result.decision.reasons)
    lines.append(f"artifacts          {result.artifacts.uri}")
    return "\n".join(lines)


def metrics_document(result: TrainerResult) -> dict:
    """The measured numbers alone (result.json adds the decision and the provenance)."""
    doc = {
        "teacher": result.teacher.to_wire(),
        "student": result.student.to_wire(),
        "variant": result.variant,
        "variants": [v.to_wire() for v in result.variants],
        "speedup": result.speedup,
        "accuracyRetention": result.accuracy_retention,
        "compressionRatio": result.compression_ratio,
        "paretoScore": result.pareto_score,
        "layersKept": result.layers_kept,
        "layerScores": result.layer_scores,
        "hardware": result.hardware.value,
    }
    if result.training is not None:
        doc["training"] = result.training.to_wire()
    if result.vocabulary is not None:
        doc["vocabulary"] = result.vocabulary.to_wire()
    if result.width is not None:
        doc["width"] = result.width.to_wire()
    return doc


def vocabulary_summary(v) -> str:
    """One line on vocabulary pruning: tokens kept, embedding share removed, eval tokens lost."""
    kept = (f"kept {v.kept_tokens:,} of {v.original_tokens:,} tokens ({v.embedding_share_removed:.1%} of the word "
            f"embeddings removed); ")
    if v.segmentation == "resplit":
        return kept + (f"the eval split takes {v.eval_tokens_student:,} tokens (the teacher's tokenizer "
                       f"{v.eval_tokens:,}), {v.eval_tokens_unknown:,} of them unknown ({v.eval_unknown_share:.2%})")
    return kept + (f"{v.eval_tokens_unknown:,} of {v.eval_tokens:,} eval tokens became [UNK] "
                   f"({v.eval_unknown_share:.2%})")


def _variant_file(result: TrainerResult) -> str:
    chosen = result.chosen_variant()
    return f": `{chosen.artifact.rsplit('/', 1)[-1] or 'model/'}`" if chosen and chosen.artifact else ""


def measured_how(result: TrainerResult, spec) -> str:
    """How the card's numbers were taken, in one line."""
    from distillery_trainer.tasks import for_task  # torch: only the trainer writes model cards

    bench = spec.benchmark
    if for_task(result.task).causal:
        return (f"eval text in {spec.dataset.max_sequence_length}-token blocks; decode latency with onnxruntime and a KV cache on "
                f"{result.hardware.value}, batch 1, {bench.decode_tokens} tokens after a {bench.sequence_length}-token "
                f"prompt; prefill at batch {bench.batch_size}")
    sequence = f", sequence {bench.sequence_length}" if for_task(result.task).text else ""
    return f"eval split; latency with onnxruntime on {result.hardware.value}, batch {bench.batch_size}{sequence}"


def _vocabulary_card(result: TrainerResult, spec) -> str:
    """The model card's vocabulary-pruning bullet ("" without pruning)."""
    v, asked = result.vocabulary, spec.student.vocabulary
    if v is None or asked is None:
        return ""
    floor = f", the {asked.keep_tokens:,} lowest ids" if asked.keep_tokens else ""
    return (f"\n- Vocabulary pruning: kept the tokens the train split uses at least {asked.min_count} time(s)"
            f"{floor} and the special tokens: {vocabulary_summary(v)}. " + (
                "The tokenizer in `model/` has only the kept tokens: it spells a removed one with kept pieces."
                if v.segmentation == "resplit" else
                "The tokenizer in `model/` splits text as the teacher's does; removed tokens map to [UNK]. Copy "
                "its tokenizer.json rather than re-saving the tokenizer: `save_pretrained` keeps one string per id "
                "and loses the removed ones."))


def model_card(result: TrainerResult, job) -> str:
    spec = job.spec
    d = spec.distillation
    verdict = "accepted" if result.decision.accepted else "rejected"
    return f"""# {result.job}: distilled student

Distilled by Distillery from `{result.teacher_uri}` ({spec.teacher.format.value}, task
`{result.task.value}`).

## How
- Layer extraction: method `{spec.student.method.value}`, kept layers {result.layers_kept} of
  {result.teacher_layers or "the source model's"} layers.
- Layer scores ({spec.student.importance_metric.value if spec.student.method.value == "importance" else spec.student.method.value}): {result.layer_scores or "n/a"}
{result.width.card_text() + chr(10) if result.width is not None else ""}- Knowledge distillation: temperature {d.temperature:g}, alpha {d.alpha:g}, {d.epochs} epochs,
  learning rate {d.learning_rate:g}, batch size {d.batch_size}, seed {d.seed}, hidden loss
  `{d.hidden_loss.type.value}`.
- Data: train `{spec.dataset.train_uri}`, eval `{spec.dataset.eval_uri}`.{_vocabulary_card(result, spec)}

## Measured ({measured_how(result, spec)})

```
{table(result)}
```

Verdict: **{verdict}**.

## Files
- `model/`: weights (safetensors) and config
- `model.onnx`{" and `model.int8.onnx`" if result.artifacts.onnx_int8 else ""}: for onnxruntime
  (the student is the `{result.variant}` variant{_variant_file(result)})
- `metrics.json`, `result.json`: the numbers above
"""
