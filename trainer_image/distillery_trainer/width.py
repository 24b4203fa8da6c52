"""Width pruning of encoder and Llama-family decoder students: attention heads and FFN neurons.

Minitron-style (Sreenivas, Muralidharan et al., 2024): after the layer cut and before healing,
run the student on calibration batches from the train split and score

* each attention head by the L2 norm of its slice of the attention output (the context layer,
  before the output projection), averaged over the real (non-padding) tokens of a row, then
  over rows;
* each FFN neuron by the mean absolute value of its intermediate activation (after the
  activation function), over the same tokens and rows.

Every layer keeps the same number of heads and of neurons (the best-scoring ones), so the
student stays one configuration. FFN pruning is a standard config field (`intermediate_size`,
DistilBERT's `hidden_dim`); a gated FFN (SwiGLU) loses the neuron's gate row with its up row.
A decoder with grouped-query attention keeps heads by whole key/value group (scored by the sum of
its query heads), and its config records the kept counts (`num_attention_heads`,
`num_key_value_heads`, an explicit `head_dim`). Encoders' attention width is tied to the hidden
size in their configs, and transformers 5 no longer has `prune_heads` / `config.pruned_heads`, so
their heads are removed in memory and in the ONNX files while the saved Hugging Face directory
stores them as zeros (`standard_layout`): it loads with plain `from_pretrained` and gives the same
outputs, and `compact` removes them again. Where each architecture keeps these parts:
width_layouts.py.
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
from distillery_trainer.width_layouts import (
    LAYOUTS,
    SUPPORTED_MODEL_TYPES,
    Layout,
    get_module,
    group_size,
    head_count,
    head_size,
    layout_of,
    set_module,
)

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
    if spec.student.architecture is not None:
        raise InputError(f"student.width: width pruning needs a Hugging Face transformer student; "
                         f"student.architecture builds a built-in {spec.student.architecture.name}")
    source_format = spec.student.base.format if spec.student.base is not None else spec.teacher.format
    if source_format != TeacherFormat.HUGGINGFACE:
        field = "student.base.format" if spec.student.base is not None else "teacher.format"
        raise InputError(f"student.width: width pruning needs a Hugging Face transformer student; "
                         f"{field} is {source_format.value}")


def check_source_config(job: DistillationJob, config: dict, field: str) -> None:
    """The source model's config.json (teacher or student.base) against student.width: a
    supported architecture, and at least one head and one neuron left per layer."""
    width = job.spec.student.width
    if width is None:
        return
    layout = LAYOUTS.get(config.get("model_type"))
    if layout is None:
        # Not quoted: config values are the model owner's data.
        raise InputError(f"student.width: width pruning supports BERT-family encoders, DistilBERT, DeBERTa-v2 and "
                         f"Llama-family decoders; the model_type in {field}'s config.json is not one of: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    # Grouped-query heads go by key/value group: the ratio applies to the groups.
    grouped = layout.kv_heads_field is not None and isinstance(config.get(layout.kv_heads_field), int)
    heads_key, heads_what = ((layout.kv_heads_field, "key/value head groups") if grouped
                             else (layout.heads_field, "attention heads"))
    for name, ratio, key, what in (("heads", width.heads, heads_key, heads_what),
                                   ("ffn", width.ffn, layout.ffn_field, "FFN neurons")):
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


def check_prunable(net: Net) -> Layout:
    """The student in memory has the layout the pruning code edits; returns it."""
    layout = layout_of(net)
    for layer in net.layer_list():
        if not all(isinstance(get_module(layer, path), nn.Linear) for path in layout.linears()):
            raise InputError(f"student.width: {type(net.model).__name__}'s layers do not have the layout of "
                             f"{net.model.config.model_type}")
    return layout


# ----------------------------------------------------------------------------- importance


@dataclass
class Importance:
    """Per-layer scores from calibration batches (higher: the unit matters more)."""

    heads: list[torch.Tensor]  # per layer: [heads] mean per-token norm of each head's output
    neurons: list[torch.Tensor]  # per layer: [intermediate] mean |activation|
    rows: int


@torch.no_grad()
def measure_importance(net: Net, batches: list[dict]) -> Importance:
    """Head and neuron importance of every layer of `net` over `batches` (masking padding).
    Both are read at the input of a projection: the output projection sees the heads' outputs
    side by side, the FFN's second projection the activations."""
    layout = layout_of(net)
    layers = list(net.layer_list())
    head_sizes = [head_size(layout, layer) for layer in layers]
    head_sums = [torch.zeros(head_count(net, layout, layer), dtype=torch.float64) for layer in layers]
    neuron_sums = [torch.zeros(get_module(layer, layout.up).out_features, dtype=torch.float64) for layer in layers]
    mask: dict[str, torch.Tensor] = {}

    def on_heads(i: int):
        def hook(module, args):
            context = args[0]  # [rows, tokens, heads * head_size]
            rows, tokens, _ = context.shape
            norms = context.float().reshape(rows, tokens, -1, head_sizes[i]).norm(dim=-1)
            head_sums[i].add_(masked_mean(norms, mask["m"]).sum(0).double().cpu())
        return hook

    def on_activations(i: int):
        def hook(module, args):
            neuron_sums[i].add_(masked_mean(args[0].float().abs(), mask["m"]).sum(0).double().cpu())
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(get_module(layer, layout.out).register_forward_pre_hook(on_heads(i)))
        handles.append(get_module(layer, layout.down).register_forward_pre_hook(on_activations(i)))
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


def top_groups(scores: torch.Tensor, kept: int, group: int) -> list[int]:
    """The heads of the kept//group best key/value groups (a group scores the sum of its heads)."""
    if group == 1:
        return top_indices(scores, kept)
    return [g * group + j for g in top_indices(scores.view(-1, group).sum(1), kept // group) for j in range(group)]


def plan_for(importance: Importance, heads_kept: int | None, ffn_kept: int | None, group: int = 1) -> WidthPlan:
    """The kept heads and neurons of every layer: the same count everywhere, the best in each
    (heads by whole groups of `group`, the query heads sharing one key/value head)."""
    heads = None if heads_kept is None else [top_groups(s, heads_kept, group) for s in importance.heads]
    ffn = None if ffn_kept is None else [top_indices(s, ffn_kept) for s in importance.neurons]
    return WidthPlan(heads, ffn)


@dataclass(frozen=True)
class UnitSizes:
    """What one head group and one FFN neuron cost in parameters, in a student of `layers` layers."""

    layers: int
    heads: int  # query heads per layer
    group: int  # query heads kept or removed together (sharing one key/value head; 1 without)
    per_group: int  # their query (and key, value) rows and biases and their output-projection columns
    ffn: int
    per_neuron: int  # its up (and gate) row and bias and its down column

    def parameters(self, total: int, heads_kept: int, ffn_kept: int) -> int:
        """The student's parameter count once every layer keeps that many heads and neurons."""
        removed = (self.heads - heads_kept) // self.group * self.per_group + (self.ffn - ffn_kept) * self.per_neuron
        return total - self.layers * removed


def _rows_cost(linear: nn.Linear, rows: int) -> int:
    return rows * linear.in_features + (rows if linear.bias is not None else 0)


def unit_sizes(net: Net) -> UnitSizes:
    layout, layer = layout_of(net), net.layer_list()[0]
    size, group = head_size(layout, layer), group_size(net, layout)
    per_group = sum(group * _rows_cost(get_module(layer, path), size) for path in layout.query_rows(layer))
    per_group += sum(_rows_cost(get_module(layer, path), size) for path in (layout.key, layout.value))
    per_group += group * size * get_module(layer, layout.out).out_features
    down = get_module(layer, layout.down)
    per_neuron = sum(_rows_cost(get_module(layer, path), 1) for path in layout.ffn_inputs()) + down.out_features
    return UnitSizes(net.num_layers(), head_count(net, layout, layer), group, per_group, down.in_features, per_neuron)


def counts_for_budget(total: int, sizes: UnitSizes, budget: int) -> tuple[int, int]:
    """(heads, neurons) kept per layer under a parameter budget: one share for both, the largest
    (stepping by one neuron, heads rounded to that share by whole groups) whose student fits."""
    groups = sizes.heads // sizes.group
    for ffn_kept in range(sizes.ffn, 0, -1):
        heads_kept = max(1, kept_count(ffn_kept / sizes.ffn, groups)) * sizes.group
        if sizes.parameters(total, heads_kept, ffn_kept) <= budget:
            return heads_kept, ffn_kept
    smallest = sizes.parameters(total, sizes.group, 1)
    raise InputError(f"student.width.maxParameters: {budget:,} is below the smallest width-pruned student, "
                     f"{smallest:,} parameters ({sizes.group} head{'s' if sizes.group > 1 else ''} and 1 FFN neuron "
                     f"in each of its {sizes.layers} layers)")


def kept_counts(width, net: Net) -> tuple[int | None, int | None]:
    """Heads and neurons each layer keeps, from student.width's ratios (the heads' applied to
    whole groups) or its parameter budget."""
    sizes = unit_sizes(net)
    if width.max_parameters is not None:
        return counts_for_budget(net.parameter_count(), sizes, width.max_parameters)
    groups = sizes.heads // sizes.group
    heads = None if width.heads is None else max(1, kept_count(width.heads, groups)) * sizes.group
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


def _head_rows(keep: list[int], size: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep])


def _set_head_count(attention: nn.Module, layout: Layout, heads: int) -> None:
    if layout.heads_attribute is None:  # the config holds it (apply_plan sets it)
        return
    setattr(attention, layout.heads_attribute, heads)
    if hasattr(attention, "all_head_size"):  # BERT's attention keeps the width too
        attention.all_head_size = heads * getattr(attention, layout.head_size_attribute)


def _keep_rows(layer: nn.Module, path: str, rows: torch.Tensor) -> None:
    old = get_module(layer, path)
    set_module(layer, path, _linear(old.weight[rows], None if old.bias is None else old.bias[rows]))


@torch.no_grad()
def prune_layer_heads(layer: nn.Module, layout: Layout, keep: list[int], group: int = 1) -> None:
    """Keep only the query heads at `keep` (whole groups of `group`) and their key/value heads:
    rows of the query/key/value projections, columns of the output projection. The attention
    infers the head count from the projection's width, so nothing else in it changes."""
    size = head_size(layout, layer)
    device = get_module(layer, layout.query).weight.device
    rows = _head_rows(keep, size).to(device)
    kv_rows = _head_rows(sorted({h // group for h in keep}), size).to(device)
    for path in layout.query_rows(layer):
        _keep_rows(layer, path, rows)
    for path in (layout.key, layout.value):
        _keep_rows(layer, path, kv_rows)
    out = get_module(layer, layout.out)
    set_module(layer, layout.out, _linear(out.weight[:, rows], out.bias))
    _set_head_count(get_module(layer, layout.attention), layout, len(keep))


@torch.no_grad()
def prune_layer_ffn(layer: nn.Module, layout: Layout, keep: list[int]) -> None:
    """Keep only the FFN neurons at `keep`: rows of the up (and gate) projection, columns of the down one."""
    index = torch.tensor(keep, device=get_module(layer, layout.up).weight.device)
    for path in layout.ffn_inputs():
        _keep_rows(layer, path, index)
    down = get_module(layer, layout.down)
    set_module(layer, layout.down, _linear(down.weight[:, index], down.bias))


def apply_plan(net: Net, plan: WidthPlan) -> None:
    """Prune `net` in place to `plan`; the config records the FFN width (a standard field) and,
    for grouped-query decoders, the head counts and head size."""
    layout = layout_of(net)
    layers = list(net.layer_list())
    for axis in (plan.heads, plan.ffn):
        if axis is not None and len(axis) != len(layers):
            raise ValueError(f"the plan has {len(axis)} layers, the student {len(layers)}")
    if plan.heads is not None:
        group = group_size(net, layout)
        for layer, keep in zip(layers, plan.heads, strict=True):
            _check_indices(keep, head_count(net, layout, layer), "head")
            whole = {g * group + j for g in {h // group for h in keep} for j in range(group)}
            if set(keep) != whole:
                raise ValueError(f"kept heads must be whole groups of {group} (query heads sharing a key/value head)")
        counts = {len(keep) for keep in plan.heads}
        if len(counts) != 1:
            raise ValueError("every layer must keep the same number of heads")
        size = head_size(layout, layers[0])
        for layer, keep in zip(layers, plan.heads, strict=True):
            prune_layer_heads(layer, layout, keep, group)
        if layout.config_holds_heads:
            config, kept = net.model.config, counts.pop()
            setattr(config, layout.head_dim_field, size)  # no longer hidden_size / heads
            setattr(config, layout.heads_field, kept)
            setattr(config, layout.kv_heads_field, kept // group)
    if plan.ffn is not None:
        for layer, keep in zip(layers, plan.ffn, strict=True):
            _check_indices(keep, get_module(layer, layout.up).out_features, "FFN neuron")
        counts = {len(keep) for keep in plan.ffn}
        if len(counts) != 1:
            raise ValueError("every layer must keep the same number of FFN neurons")
        for layer, keep in zip(layers, plan.ffn, strict=True):
            prune_layer_ffn(layer, layout, keep)
        setattr(net.model.config, layout.ffn_field, counts.pop())


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
    if not isinstance(net, HFNet) or not _pruned_heads(net):  # (a decoder's config holds its heads)
        yield
        return
    layout = layout_of(net)
    config = net.model.config
    total = getattr(config, layout.heads_field)
    saved, kept = [], []
    with torch.no_grad():
        for layer in net.layer_list():
            attention = get_module(layer, layout.attention)
            keep = getattr(attention, "distillery_kept_heads", list(range(total)))
            size = head_size(layout, layer)
            rows = _head_rows(keep, size).to(get_module(layer, layout.query).weight.device)
            full = total * size
            paths = (*layout.query_rows(layer), layout.key, layout.value)
            saved.append(({path: get_module(layer, path) for path in (*paths, layout.out)},
                          getattr(attention, layout.heads_attribute)))
            for path in paths:
                old = get_module(layer, path)
                weight = old.weight.new_zeros(full, old.in_features)
                weight[rows] = old.weight
                bias = None
                if old.bias is not None:
                    bias = old.bias.new_zeros(full)
                    bias[rows] = old.bias
                set_module(layer, path, _linear(weight, bias))
            out = get_module(layer, layout.out)
            weight = out.weight.new_zeros(out.out_features, full)
            weight[:, rows] = out.weight
            set_module(layer, layout.out, _linear(weight, out.bias))
            _set_head_count(attention, layout, total)
            kept.append(list(keep))
    setattr(config, KEPT_HEADS_KEY, kept)
    try:
        yield
    finally:
        for layer, (modules, heads) in zip(net.layer_list(), saved, strict=True):
            for path, module in modules.items():
                set_module(layer, path, module)
            _set_head_count(get_module(layer, layout.attention), layout, heads)
        if hasattr(config, KEPT_HEADS_KEY):
            delattr(config, KEPT_HEADS_KEY)


def _pruned_heads(net: HFNet) -> bool:
    layout = layout_of(net)
    return not layout.config_holds_heads and any(
        hasattr(get_module(layer, layout.attention), "distillery_kept_heads") for layer in net.layer_list())


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


def _mark_kept_heads(net: Net, heads: list[list[int]] | None) -> None:
    """Note the kept heads on an encoder's attention modules, for standard_layout (a decoder's
    config holds its heads, and its directory is saved as it is)."""
    layout = layout_of(net)
    if heads is not None and not layout.config_holds_heads:
        for layer, keep in zip(net.layer_list(), heads, strict=True):
            get_module(layer, layout.attention).distillery_kept_heads = list(keep)


def prune(student: Net, data: Encoded, job: DistillationJob, device: torch.device,
          log: Callable[[str], None], source_layers: list[int]) -> dict | None:
    """Width-prune the freshly cut student in place, as student.width asks; returns what the
    checkpoint keeps (the plan and the report), or None when the spec asks for no width pruning."""
    width = job.spec.student.width
    if width is None:
        return None
    layout = check_prunable(student)
    before = student.parameter_count()
    student.to(device)
    batches = calibration_batches(data, job, device, batches=width.calibration_batches)
    importance = measure_importance(student, batches)
    student.cpu()
    plan = plan_for(importance, *kept_counts(width, student), group_size(student, layout))
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
