"""Width pruning of BERT-family students: attention heads and FFN neurons, by activation importance.

Minitron-style (Sreenivas, Muralidharan et al., 2024): after the layer cut and before healing,
run the student on calibration batches from the train split and score

* each attention head by the L2 norm of its slice of the attention output (the context layer,
  before the output projection), averaged over the real (non-padding) tokens of a row, then
  over rows;
* each FFN neuron by the mean absolute value of its intermediate activation (after the
  activation function), over the same tokens and rows.

Every layer keeps the same number of heads and of neurons (the best-scoring ones), so the
student stays one configuration. FFN pruning is a standard BertConfig (`intermediate_size`).
Heads are removed from the model in memory and in the ONNX files; transformers 5 no longer has
`prune_heads` / `config.pruned_heads`, and BERT's attention width is tied to `hidden_size`, so
the saved Hugging Face directory stores the removed heads as zeros (`standard_layout`): it loads
with plain `from_pretrained` and gives the same outputs, and `compact` removes them again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from distillery.api.job import DistillationJob, Task, TeacherFormat
from distillery.api.width import LayerWidth, WidthReport
from distillery_trainer.checkpoint import CorruptCheckpoint
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.loading import Inputs, read_config
from distillery_trainer.nets import HFNet, Net, masked_mean
from distillery_trainer.student import calibration_batches

# Architectures whose layers have BERT's module layout (attention.self.{query,key,value},
# attention.output.dense, intermediate.dense, output.dense) and were tested here.
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra")
# The saved config.json names the kept heads under this key, so `compact` can remove them again.
KEPT_HEADS_KEY = "distillery_kept_heads"


@dataclass(frozen=True)
class WidthPlan:
    """What each student layer keeps (sorted indices); None for an axis that is not pruned."""

    heads: list[list[int]] | None
    ffn: list[list[int]] | None

    def to_state(self) -> dict:
        return {"heads": self.heads, "ffn": self.ffn}


# ----------------------------------------------------------------------------- checks (before any pass)


def kept_count(ratio: float, total: int) -> int:
    """round(ratio * total), halves up; 0 means the ratio keeps nothing."""
    return int(math.floor(ratio * total + 0.5))


def check_spec(job: DistillationJob) -> None:
    """What the spec alone says about width pruning (pure)."""
    spec = job.spec
    if spec.student.width is None:
        return
    if spec.teacher.task == Task.CAUSAL_LM:
        raise InputError("student.width: width pruning is for encoder tasks (BERT-family), not causal-lm")
    if spec.student.architecture is not None:
        raise InputError(f"student.width: width pruning needs a Hugging Face BERT-family student; "
                         f"student.architecture builds a built-in {spec.student.architecture.name}")
    source_format = spec.student.base.format if spec.student.base is not None else spec.teacher.format
    if source_format != TeacherFormat.HUGGINGFACE:
        field = "student.base.format" if spec.student.base is not None else "teacher.format"
        raise InputError(f"student.width: width pruning needs a Hugging Face BERT-family student; "
                         f"{field} is {source_format.value}")


def check_source_config(job: DistillationJob, config: dict, field: str) -> None:
    """The source model's config.json (teacher or student.base) against student.width: a
    supported architecture, and at least one head and one neuron left per layer."""
    width = job.spec.student.width
    if width is None:
        return
    if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        # Not quoted: config values are the model owner's data.
        raise InputError(f"student.width: width pruning supports BERT-family encoders; the model_type in "
                         f"{field}'s config.json is not one of: {', '.join(SUPPORTED_MODEL_TYPES)}")
    for name, ratio, key, what in (("heads", width.heads, "num_attention_heads", "attention heads"),
                                   ("ffn", width.ffn, "intermediate_size", "FFN neurons")):
        total = config.get(key)
        if ratio is None or not isinstance(total, int) or isinstance(total, bool) or total < 1:
            continue
        if kept_count(ratio, total) < 1:
            raise InputError(f"student.width.{name}: {ratio:g} of {total} {what} keeps none; "
                             f"use at least {1 / total:.4g}")


def check_source(job: DistillationJob, inputs: Inputs) -> None:
    """check_source_config on the model the student is cut from (student.base, else the teacher)."""
    if job.spec.student.width is None:
        return
    if job.spec.student.base is not None:
        path, field = inputs.base_path, "student.base.uri"
    else:
        path, field = inputs.teacher_path, "teacher.uri"
    check_source_config(job, read_config(path, field), field)


def check_prunable(net: Net) -> None:
    """The student in memory has the layout the pruning code edits."""
    model_type = getattr(getattr(getattr(net, "model", None), "config", None), "model_type", None)
    if not isinstance(net, HFNet) or model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(f"student.width: width pruning supports BERT-family encoders; the student is "
                         f"{type(getattr(net, 'model', net)).__name__}")
    for layer in net.layer_list():
        if not all(_has(layer, path) for path in ("attention.self.query", "attention.self.key", "attention.self.value",
                                                  "attention.output.dense", "intermediate.dense", "output.dense")):
            raise InputError(f"student.width: {type(net.model).__name__}'s layers do not have BERT's layout")


def _has(module: nn.Module, path: str) -> bool:
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return False
    return isinstance(module, nn.Linear)


# ----------------------------------------------------------------------------- importance


@dataclass
class Importance:
    """Per-layer scores from calibration batches (higher: the unit matters more)."""

    heads: list[torch.Tensor]  # per layer: [heads] mean per-token norm of each head's output
    neurons: list[torch.Tensor]  # per layer: [intermediate] mean |activation|
    rows: int


@torch.no_grad()
def measure_importance(net: HFNet, batches: list[dict]) -> Importance:
    """Head and neuron importance of every layer of `net` over `batches` (masking padding)."""
    layers = list(net.layer_list())
    head_sums = [torch.zeros(layer.attention.self.num_attention_heads, dtype=torch.float64) for layer in layers]
    neuron_sums = [torch.zeros(layer.intermediate.dense.out_features, dtype=torch.float64) for layer in layers]
    mask: dict[str, torch.Tensor] = {}

    def on_attention(i: int):
        def hook(module, args, output):
            context = output[0] if isinstance(output, tuple) else output  # [rows, tokens, heads * head_size]
            rows, tokens, _ = context.shape
            norms = context.float().view(rows, tokens, -1, module.attention_head_size).norm(dim=-1)
            head_sums[i].add_(masked_mean(norms, mask["m"]).sum(0).double().cpu())
        return hook

    def on_intermediate(i: int):
        def hook(module, args, output):
            neuron_sums[i].add_(masked_mean(output.float().abs(), mask["m"]).sum(0).double().cpu())
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.attention.self.register_forward_hook(on_attention(i)))
        handles.append(layer.intermediate.register_forward_hook(on_intermediate(i)))
    rows = 0
    net.eval()
    try:
        for batch in batches:
            mask["m"] = batch["attention_mask"]
            net.outputs(batch)
            rows += int(batch["attention_mask"].shape[0])
    finally:
        for handle in handles:
            handle.remove()
    scale = 1.0 / max(rows, 1)
    return Importance([s * scale for s in head_sums], [s * scale for s in neuron_sums], rows)


def top_indices(scores: torch.Tensor, k: int) -> list[int]:
    """The k best-scoring indices, in increasing order; ties keep the lower index."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def plan_for(importance: Importance, heads_kept: int | None, ffn_kept: int | None) -> WidthPlan:
    """The kept heads and neurons of every layer: the same count everywhere, the best in each."""
    heads = None if heads_kept is None else [top_indices(s, heads_kept) for s in importance.heads]
    ffn = None if ffn_kept is None else [top_indices(s, ffn_kept) for s in importance.neurons]
    return WidthPlan(heads, ffn)


@dataclass(frozen=True)
class UnitSizes:
    """What one head and one FFN neuron cost in parameters, in a student of `layers` layers."""

    layers: int
    heads: int
    per_head: int  # its query, key and value rows (and biases) and its output-projection columns
    ffn: int
    per_neuron: int  # its intermediate row (and bias) and its output column

    def parameters(self, total: int, heads_kept: int, ffn_kept: int) -> int:
        """The student's parameter count once every layer keeps that many heads and neurons."""
        removed = (self.heads - heads_kept) * self.per_head + (self.ffn - ffn_kept) * self.per_neuron
        return total - self.layers * removed


def unit_sizes(net: HFNet) -> UnitSizes:
    layer = net.layer_list()[0]
    attention, size = layer.attention.self, layer.attention.self.attention_head_size
    per_head = sum(size * lin.in_features + (size if lin.bias is not None else 0)
                   for lin in (attention.query, attention.key, attention.value))
    per_head += size * layer.attention.output.dense.out_features
    up, down = layer.intermediate.dense, layer.output.dense
    per_neuron = up.in_features + (1 if up.bias is not None else 0) + down.out_features
    return UnitSizes(net.num_layers(), attention.num_attention_heads, per_head, up.out_features, per_neuron)


def counts_for_budget(total: int, sizes: UnitSizes, budget: int) -> tuple[int, int]:
    """(heads, neurons) kept per layer under a parameter budget: one share for both, the largest
    (stepping by one neuron, heads rounded to that share) whose student fits."""
    for ffn_kept in range(sizes.ffn, 0, -1):
        heads_kept = max(1, kept_count(ffn_kept / sizes.ffn, sizes.heads))
        if sizes.parameters(total, heads_kept, ffn_kept) <= budget:
            return heads_kept, ffn_kept
    smallest = sizes.parameters(total, 1, 1)
    raise InputError(f"student.width.maxParameters: {budget:,} is below the smallest width-pruned student, "
                     f"{smallest:,} parameters (1 head and 1 FFN neuron in each of its {sizes.layers} layers)")


def kept_counts(width, net: HFNet) -> tuple[int | None, int | None]:
    """Heads and neurons each layer keeps, from student.width's ratios or its parameter budget."""
    sizes = unit_sizes(net)
    if width.max_parameters is not None:
        return counts_for_budget(net.parameter_count(), sizes, width.max_parameters)
    heads = None if width.heads is None else max(1, kept_count(width.heads, sizes.heads))
    ffn = None if width.ffn is None else max(1, kept_count(width.ffn, sizes.ffn))
    return heads, ffn


# ----------------------------------------------------------------------------- pruning


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _head_rows(keep: list[int], head_size: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in keep])


@torch.no_grad()
def prune_layer_heads(layer: nn.Module, keep: list[int]) -> None:
    """Keep only the heads at `keep`: rows of query/key/value, columns of the output projection.
    BERT's attention infers the head count from the projection's width, so nothing else changes."""
    attention = layer.attention.self
    rows = _head_rows(keep, attention.attention_head_size).to(attention.query.weight.device)
    for name in ("query", "key", "value"):
        old = getattr(attention, name)
        setattr(attention, name, _linear(old.weight[rows], None if old.bias is None else old.bias[rows]))
    dense = layer.attention.output.dense
    layer.attention.output.dense = _linear(dense.weight[:, rows], dense.bias)
    attention.num_attention_heads = len(keep)
    attention.all_head_size = len(keep) * attention.attention_head_size


@torch.no_grad()
def prune_layer_ffn(layer: nn.Module, keep: list[int]) -> None:
    """Keep only the intermediate neurons at `keep`: rows of intermediate.dense, columns of output.dense."""
    index = torch.tensor(keep, device=layer.intermediate.dense.weight.device)
    up, down = layer.intermediate.dense, layer.output.dense
    layer.intermediate.dense = _linear(up.weight[index], None if up.bias is None else up.bias[index])
    layer.output.dense = _linear(down.weight[:, index], down.bias)


def apply_plan(net: HFNet, plan: WidthPlan) -> None:
    """Prune `net` in place to `plan`; the config records the FFN width (a standard field)."""
    layers = list(net.layer_list())
    for axis in (plan.heads, plan.ffn):
        if axis is not None and len(axis) != len(layers):
            raise ValueError(f"the plan has {len(axis)} layers, the student {len(layers)}")
    if plan.heads is not None:
        for layer, keep in zip(layers, plan.heads, strict=True):
            _check_indices(keep, layer.attention.self.num_attention_heads, "head")
        counts = {len(keep) for keep in plan.heads}
        if len(counts) != 1:
            raise ValueError("every layer must keep the same number of heads")
        for layer, keep in zip(layers, plan.heads, strict=True):
            prune_layer_heads(layer, keep)
    if plan.ffn is not None:
        for layer, keep in zip(layers, plan.ffn, strict=True):
            _check_indices(keep, layer.intermediate.dense.out_features, "FFN neuron")
        counts = {len(keep) for keep in plan.ffn}
        if len(counts) != 1:
            raise ValueError("every layer must keep the same number of FFN neurons")
        for layer, keep in zip(layers, plan.ffn, strict=True):
            prune_layer_ffn(layer, keep)
        net.model.config.intermediate_size = counts.pop()


def _check_indices(keep, total: int, what: str) -> None:
    if not (isinstance(keep, list) and keep and all(isinstance(i, int) and not isinstance(i, bool) for i in keep)
            and keep == sorted(set(keep)) and keep[0] >= 0 and keep[-1] < total):
        raise ValueError(f"kept {what} indices are not increasing indices below {total}")


# ----------------------------------------------------------------------------- the saved layout


@contextmanager
def standard_layout(net: Net) -> Iterator[None]:
    """While saving: every layer's attention at full width with the removed heads as zeros, so
    the directory is a standard config that `from_pretrained` loads; a zero head adds exactly
    nothing (zero query and key give uniform weights over zero values). config.json names the
    kept heads under KEPT_HEADS_KEY. Restored afterwards."""
    if not isinstance(net, HFNet) or not _pruned_heads(net):
        yield
        return
    config = net.model.config
    total = config.num_attention_heads
    saved, kept = [], []
    with torch.no_grad():
        for layer in net.layer_list():
            attention, output = layer.attention.self, layer.attention.output
            keep = getattr(attention, "distillery_kept_heads", list(range(total)))
            rows = _head_rows(keep, attention.attention_head_size).to(attention.query.weight.device)
            full = total * attention.attention_head_size
            saved.append((attention.query, attention.key, attention.value, output.dense,
                          attention.num_attention_heads, attention.all_head_size))
            for name in ("query", "key", "value"):
                old = getattr(attention, name)
                weight = old.weight.new_zeros(full, old.in_features)
                weight[rows] = old.weight
                bias = None
                if old.bias is not None:
                    bias = old.bias.new_zeros(full)
                    bias[rows] = old.bias
                setattr(attention, name, _linear(weight, bias))
            weight = output.dense.weight.new_zeros(output.dense.out_features, full)
            weight[:, rows] = output.dense.weight
            output.dense = _linear(weight, output.dense.bias)
            attention.num_attention_heads, attention.all_head_size = total, full
            kept.append(list(keep))
    setattr(config, KEPT_HEADS_KEY, kept)
    try:
        yield
    finally:
        for layer, (q, k, v, dense, heads, width) in zip(net.layer_list(), saved, strict=True):
            attention = layer.attention.self
            attention.query, attention.key, attention.value = q, k, v
            layer.attention.output.dense = dense
            attention.num_attention_heads, attention.all_head_size = heads, width
        if hasattr(config, KEPT_HEADS_KEY):
            delattr(config, KEPT_HEADS_KEY)


def _pruned_heads(net: HFNet) -> bool:
    return any(hasattr(layer.attention.self, "distillery_kept_heads") for layer in net.layer_list())


def compact(model: nn.Module) -> nn.Module:
    """A model loaded with `from_pretrained` from a head-pruned directory, with its zero heads
    removed again (in place, as named by config.json's KEPT_HEADS_KEY); unchanged without it.
    For inference and export: `save_pretrained` on the compact model would write shapes its
    config does not describe."""
    kept = getattr(model.config, KEPT_HEADS_KEY, None)
    if not kept:
        return model
    net = HFNet(model, Task.SENTENCE_EMBEDDING, None)  # only its layer list is used
    heads = [list(k) for k in kept]
    apply_plan(net, WidthPlan(heads, None))
    _mark_kept_heads(net, heads)
    return model


# ----------------------------------------------------------------------------- the run's step


def _mark_kept_heads(net: HFNet, heads: list[list[int]] | None) -> None:
    if heads is not None:
        for layer, keep in zip(net.layer_list(), heads, strict=True):
            layer.attention.self.distillery_kept_heads = list(keep)


def prune(student: Net, data: Encoded, job: DistillationJob, device: torch.device,
          log: Callable[[str], None], source_layers: list[int]) -> dict | None:
    """Width-prune the freshly cut student in place, as student.width asks; returns what the
    checkpoint keeps (the plan and the report), or None when the spec asks for no width pruning."""
    width = job.spec.student.width
    if width is None:
        return None
    check_prunable(student)
    before = student.parameter_count()
    student.to(device)
    batches = calibration_batches(data, job, device, batches=width.calibration_batches)
    importance = measure_importance(student, batches)
    student.cpu()
    plan = plan_for(importance, *kept_counts(width, student))
    apply_plan(student, plan)
    _mark_kept_heads(student, plan.heads)
    report = build_report(importance, plan, source_layers, before, student.parameter_count(), width.max_parameters)
    log(describe(report))
    return {"plan": plan.to_state(), "report": report.model_dump(by_alias=True, mode="json")}


def build_report(importance: Importance, plan: WidthPlan, source_layers: list[int], before: int,
                 after: int, budget: int | None = None) -> WidthReport:
    heads_total, ffn_total = len(importance.heads[0]), len(importance.neurons[0])
    layers = []
    for i, layer in enumerate(source_layers):
        entry = LayerWidth(layer=layer)
        if plan.heads is not None:
            entry.heads_kept = plan.heads[i]
            entry.head_scores = [round(float(v), 6) for v in importance.heads[i]]
        if plan.ffn is not None:
            scores = importance.neurons[i]
            total = float(scores.sum())
            entry.ffn_kept = len(plan.ffn[i])
            entry.ffn_importance_kept = round(float(scores[plan.ffn[i]].sum()) / total, 6) if total > 0 else 1.0
        layers.append(entry)
    return WidthReport(
        heads=heads_total, heads_kept=len(plan.heads[0]) if plan.heads is not None else heads_total,
        ffn=ffn_total, ffn_kept=len(plan.ffn[0]) if plan.ffn is not None else ffn_total,
        calibration_rows=importance.rows, parameters_before=before, parameters_after=after,
        max_parameters=budget, layers=layers)


def describe(report: WidthReport) -> str:
    """The progress log's one line."""
    return (f"width: kept {report.heads_kept} of {report.heads} attention heads and {report.ffn_kept} of "
            f"{report.ffn} FFN neurons per layer (by activation importance on {report.calibration_rows} "
            f"train rows); parameters {report.parameters_before:,} -> {report.parameters_after:,}")


def reapply(student: Net, saved: dict | None, job: DistillationJob) -> None:
    """On resume, before the checkpoint's weights are loaded: the same width pruning as the run
    that wrote it. Raises CorruptCheckpoint when the checkpoint's structure does not fit."""
    wanted = job.spec.student.width is not None
    if saved is None:
        if wanted:
            raise CorruptCheckpoint("it records no width pruning but student.width asks for it")
        return
    if not wanted:
        raise CorruptCheckpoint("it records width pruning but student.width is not set")
    plan_raw = saved.get("plan") if isinstance(saved, dict) else None
    if not isinstance(plan_raw, dict):
        raise CorruptCheckpoint("its width structure is malformed")
    try:
        WidthReport.model_validate(saved.get("report"))
        check_prunable(student)
        plan = WidthPlan(plan_raw.get("heads"), plan_raw.get("ffn"))
        apply_plan(student, plan)
    except (ValueError, TypeError, InputError) as err:
        raise CorruptCheckpoint(f"its width structure does not fit the student ({type(err).__name__})") from None
    _mark_kept_heads(student, plan.heads)


def result_block(saved: dict | None) -> WidthReport | None:
    """The width report for result.json, from what the checkpoint state keeps."""
    if not saved:
        return None
    return WidthReport.model_validate(saved["report"])
