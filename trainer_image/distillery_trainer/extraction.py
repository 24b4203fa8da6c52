"""Choosing which layers a student keeps (depth pruning). Pure functions over scores and sizes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distillery.api.job import ExtractionMethod, ImportanceMetric, Student
from distillery_trainer.errors import InputError


def target_size(spec: Student, num_layers: int) -> int:
    """How many layers to keep, from keepLayers or keepRatio (default: half, at least one)."""
    if spec.layers is not None and spec.method == ExtractionMethod.EXPLICIT:
        return len(spec.layers)
    if spec.keep_layers is not None:
        k = spec.keep_layers
    elif spec.keep_ratio is not None:
        k = max(1, round(spec.keep_ratio * num_layers))
    else:
        k = max(1, num_layers // 2)
    if k > num_layers:
        raise InputError(f"student.keepLayers: {k} is larger than the teacher's {num_layers} layers")
    return k


def uniform_layers(num_layers: int, k: int) -> list[int]:
    """Evenly spread layers, always keeping the last (DistilBERT keeps every other layer)."""
    if k == 1:
        return [num_layers - 1]
    step = (num_layers - 1) / (k - 1)
    return sorted({round(i * step) for i in range(k)})


def first_layers(num_layers: int, k: int) -> list[int]:
    return list(range(k))


def top_k_layers(scores: list[float], k: int) -> list[int]:
    """The k highest-scoring layers in model order (ties broken towards earlier layers)."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:k])


def protects_ends(spec: Student, causal: bool) -> bool:
    """student.keepFirstAndLast: by default on for decoders only, which lean on both ends far more
    than on the middle layers; an explicit value holds for every task."""
    return causal if spec.keep_first_and_last is None else spec.keep_first_and_last


def check_protected_size(k: int, num_layers: int, protect: bool) -> None:
    if protect and k < 2 <= num_layers:
        raise InputError("student.keepLayers: at least 2 layers are needed while student.keepFirstAndLast is on")


def protected_layers(num_layers: int, protect: bool) -> frozenset[int]:
    """The layers a scoring method may not drop."""
    return frozenset({0, num_layers - 1}) if protect else frozenset()


def keep_top_scored(scores: list[float], k: int, protect: bool) -> list[int]:
    """The k highest-scoring layers in order; with `protect` the first and last always stay."""
    n = len(scores)
    if not protect or n <= 2:
        return top_k_layers(scores, k)
    middle = top_k_layers(scores[1:-1], k - 2) if k > 2 else []
    return [0, *(i + 1 for i in middle), n - 1]


def block_scores(
    inputs: torch.Tensor, outputs: torch.Tensor, mask: torch.Tensor | None, metric: ImportanceMetric
) -> torch.Tensor:
    """Per-example importance of one block from its input and output hidden states.

    Block influence (ShortGPT) is 1 - cos(in, out) per token; angular distance is
    arccos(cos) / pi. A block that barely changes its input scores near zero.
    """
    cos = F.cosine_similarity(inputs.float(), outputs.float(), dim=-1).clamp(-1.0, 1.0)
    if metric == ImportanceMetric.ANGULAR_DISTANCE:
        per_token = torch.arccos(cos) / math.pi
    else:
        per_token = 1.0 - cos
    if per_token.dim() == 1:  # one vector per example (MLP blocks)
        return per_token
    if per_token.dim() == 3:  # conv feature maps reduced over channels: (N, H, W)
        return per_token.flatten(1).mean(1)
    weights = mask.float() if mask is not None else torch.ones_like(per_token)
    return (per_token * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def output_divergence(reference, trial, temperature: float) -> torch.Tensor:
    """How far a cut model's outputs are from the full model's, per example, summed.

    Classifiers: KL(full || cut) of the softened class distributions, the quantity KD will have
    to recover; embeddings: 1 - cosine of the pooled vectors.
    """
    if reference.logits is not None:
        target = F.log_softmax(reference.logits.float() / temperature, dim=-1)
        guess = F.log_softmax(trial.logits.float() / temperature, dim=-1)
        return F.kl_div(guess, target, log_target=True, reduction="sum")
    return (1.0 - F.cosine_similarity(reference.pooled.float(), trial.pooled.float(), dim=-1)).sum()


def weight_rms(layer: torch.nn.Module) -> float:
    """Root-mean-square of a layer's weight matrices (biases and norms left out)."""
    total, count = 0.0, 0
    for name, p in layer.named_parameters():
        if p.dim() >= 2 and "norm" not in name.lower():
            total += float((p.detach().float() ** 2).sum())
            count += p.numel()
    return math.sqrt(total / count) if count else 0.0


def weight_range_layers(rms: list[float], low: float, high: float, k: int | None) -> list[int]:
    """Layers whose weight RMS lies in [low, high]; capped at k by highest RMS when k is set."""
    inside = [i for i, v in enumerate(rms) if low <= v <= high]
    if not inside:
        shown = ", ".join(f"{v:.4f}" for v in rms)
        raise InputError(
            f"student.weightRange: no layer has weight RMS in [{low:g}, {high:g}] (layers: {shown})"
        )
    if k is not None and len(inside) > k:
        inside = sorted(sorted(inside, key=lambda i: -rms[i])[:k])
    return inside


def check_explicit(layers: list[int], num_layers: int) -> list[int]:
    bad = [i for i in layers if i >= num_layers]
    if bad:
        raise InputError(
            f"student.layers: {bad} out of range, the teacher has layers 0..{num_layers - 1}"
        )
    return sorted(layers)


def greedy_removal(num_layers: int, k: int, divergence, protected: frozenset[int] = frozenset(),
                   known: Removals | None = None) -> tuple[list[int], list[float], Removals]:
    """Drop, one at a time, the layer whose removal gives the smallest `divergence(kept)` until k
    remain (ties: the later layer). Returns the kept layers, as scores each layer's divergence when
    removed alone from the full model (protected layers are scored, never dropped), and the removals
    made. `known` are removals measured earlier on the same model and data: the greedy path does not
    depend on k, so they are replayed and only the steps beyond them are measured."""
    keep = list(range(num_layers))
    if k >= num_layers:
        return keep, [], known or Removals([], [])
    alone = list(known.alone) if known else [divergence([i for i in keep if i != layer]) for layer in keep]
    removed = list(known.order[:num_layers - k]) if known else []
    for layer in removed:
        keep.remove(layer)
    costs = dict(enumerate(alone))
    while len(keep) > k:
        candidates = [i for i in keep if i not in protected]
        if len(keep) < num_layers:
            costs = {layer: divergence([i for i in keep if i != layer]) for layer in candidates}
        victim = min(candidates, key=lambda i: (costs[i], -i))
        keep.remove(victim)
        removed.append(victim)
    longest = removed if not known or len(removed) >= len(known.order) else list(known.order)
    return keep, [round(v, 6) for v in alone], Removals(alone, longest)


@dataclass(frozen=True)
class Removals:
    """A greedy removal path: each layer's divergence when removed alone, and the layers removed in order."""

    alone: list[float]
    order: list[int]


def fixed_rule_layers(spec: Student, layers: list[torch.nn.Module], k: int) -> tuple[list[int], list[float]] | None:
    """The layers of the rules that need no data (explicit, uniform, first, weight-range), or None
    for importance, which scores layers on calibration batches."""
    n = len(layers)
    if spec.method == ExtractionMethod.EXPLICIT:
        return check_explicit(spec.layers, n), []
    if spec.method == ExtractionMethod.UNIFORM:
        return uniform_layers(n, k), []
    if spec.method == ExtractionMethod.FIRST:
        return first_layers(n, k), []
    if spec.method == ExtractionMethod.WEIGHT_RANGE:
        rms = [round(weight_rms(layer), 6) for layer in layers]
        cap = spec.keep_layers if spec.keep_layers is not None else (k if spec.keep_ratio is not None else None)
        return weight_range_layers(rms, spec.weight_range.min, spec.weight_range.max, cap), rms
    return None
