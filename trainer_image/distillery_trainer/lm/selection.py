"""Choosing which layers a decoder student keeps: block influence (ShortGPT), the angular
distance of a contiguous block (Gromov et al.), greedy ablation by next-token KL, and the
fixed rules shared with encoders. By default the first and last layers are never dropped by
the scoring methods: decoders lean on both far more than on the middle ones."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distillery.api.job import DistillationJob, ImportanceMetric
from distillery_trainer import extraction
from distillery_trainer.encode import Encoded
from distillery_trainer.lm.logits import kd_loss_top_k, top_k_targets
from distillery_trainer.lm.model import CausalLMNet
from distillery_trainer.ranking_cache import NO_MEMO, RankingMemo

# Decoder calibration rows are full blocks of L tokens and V-wide logits: keep batches small.
_CALIBRATION_BATCH = 4


def calibration_batches(data: Encoded, job: DistillationJob, device) -> list[dict[str, torch.Tensor]]:
    """calibrationBatches batches of min(4, batchSize) blocks spread evenly over the train split."""
    batch_size = max(1, min(_CALIBRATION_BATCH, job.spec.distillation.batch_size))
    rows = min(len(data), batch_size * job.spec.student.calibration_batches)
    index = torch.linspace(0, len(data) - 1, rows).round().long().unique()
    return [data.batch(chunk, device) for chunk in index.split(batch_size)]


# ----------------------------------------------------------------------------- pure choices


def drop_block(num_layers: int, start: int, width: int) -> list[int]:
    """The layers kept when `width` consecutive layers from `start` are removed."""
    return [i for i in range(num_layers) if not start <= i < start + width]


def allowed_starts(num_layers: int, width: int, protect: bool) -> range:
    """Starts of a contiguous block of `width` layers that may be dropped (the ends excluded with `protect`)."""
    return range(1, num_layers - width) if protect else range(0, num_layers - width + 1)


def best_block_start(distances: list[float], starts: range) -> int:
    """The allowed start whose block changes the hidden state least (ties: the earlier block)."""
    return min(starts, key=lambda s: (distances[s], s))


def angular_distance(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """arccos(cos(first, second)) / pi per token: 0 for the same direction, 1 for opposite."""
    cos = F.cosine_similarity(first.float(), second.float(), dim=-1).clamp(-1.0, 1.0)
    return torch.arccos(cos) / math.pi


# ----------------------------------------------------------------------------- measurements


@torch.no_grad()
def block_influence(net: CausalLMNet, batches: list[dict]) -> list[float]:
    """Per layer, 1 - cos(layer input, layer output) averaged over every calibration token."""
    totals = torch.zeros(net.num_layers(), dtype=torch.float64)
    tokens = 0
    for batch in batches:
        hs = net.outputs(batch, hidden_states=True).hidden_states
        for layer in range(net.num_layers()):
            per_example = extraction.block_scores(hs[layer], hs[layer + 1], batch["attention_mask"],
                                                  ImportanceMetric.BLOCK_INFLUENCE)
            totals[layer] += (per_example.double() * batch["attention_mask"].sum(1).double()).sum().cpu()
        tokens += int(batch["attention_mask"].sum())
    return [round(float(v) / max(tokens, 1), 6) for v in totals]


@torch.no_grad()
def block_distances(net: CausalLMNet, batches: list[dict], width: int) -> list[float]:
    """d(start) = mean over all tokens (Gromov et al. use the last token only) of the angular
    distance between the hidden state entering layer `start` and the one leaving `start+width-1`."""
    starts = net.num_layers() - width + 1
    totals = torch.zeros(starts, dtype=torch.float64)
    tokens = 0
    for batch in batches:
        hs = net.outputs(batch, hidden_states=True).hidden_states
        weights = batch["attention_mask"].double()
        for start in range(starts):
            totals[start] += (angular_distance(hs[start], hs[start + width]).double() * weights).sum().cpu()
        tokens += int(weights.sum())
    return [round(float(v) / max(tokens, 1), 6) for v in totals]


@torch.no_grad()
def ablation_selection(net: CausalLMNet, batches: list[dict], k: int, temperature: float, top_k: int,
                       protect: bool, memo: RankingMemo = NO_MEMO) -> tuple[list[int], list[float]]:
    """Greedy: drop, one at a time, the layer whose removal moves the next-token distributions
    least from the full model's, measured as KL(full || cut) * T^2 per position.

    The full model's distributions are kept as their top-k log-probabilities (the same targets
    the top-k KD cache holds) rather than (B, L, V) logits: a batch of 4 x 2048 tokens over a
    150k vocabulary is 5 GB in fp32, its top 64 a few MB. Scores: each layer's divergence when
    removed alone from the full model."""
    n = net.num_layers()
    protected = extraction.protected_layers(n, protect)
    known = memo.removals()
    if known is not None and len(known.order) >= n - k:  # the path is known this far
        keep, scores, _ = extraction.greedy_removal(n, k, None, protected, known)
        return keep, scores
    reference = [top_k_targets(net.outputs(batch).logits, top_k, temperature) for batch in batches]

    def divergence(keep: list[int]) -> float:
        with net.only_layers(keep):
            total = sum(float(kd_loss_top_k(net.outputs(batch).logits, logprobs, ids, temperature))
                        for (logprobs, ids), batch in zip(reference, batches, strict=True))
        return total / max(1, len(batches))

    keep, scores, removals = extraction.greedy_removal(n, k, divergence, protected, known)
    memo.keep_removals(removals)
    return keep, scores


# ----------------------------------------------------------------------------- entry point


def select_decoder_layers(net: CausalLMNet, data: Encoded, job: DistillationJob, device,
                          memo: RankingMemo = NO_MEMO) -> tuple[list[int], list[float]]:
    """The layers the student keeps, in order, and the scores behind the choice (may be empty);
    measurements kept in `memo` (the layer-ranking cache) are reused rather than measured again."""
    spec = job.spec.student
    n = net.num_layers()
    k = extraction.target_size(spec, n)
    fixed = extraction.fixed_rule_layers(spec, list(net.layer_list()), k)
    if fixed is not None:
        return fixed
    protect = extraction.protects_ends(spec, causal=True)
    extraction.check_protected_size(k, n, protect)
    if k == n:
        return list(range(n)), []
    net.to(device).eval()

    def batches() -> list[dict]:  # only measured when the memo lacks the measurement
        return calibration_batches(data, job, device)

    if spec.importance_metric == ImportanceMetric.ABLATION:
        known = memo.removals()
        return ablation_selection(net, [] if known and len(known.order) >= n - k else batches(), k,
                                  job.spec.distillation.temperature, job.spec.distillation.top_k, protect, memo)
    if spec.importance_metric == ImportanceMetric.ANGULAR_DISTANCE:
        width = n - k
        distances = memo.scores(f"distances/{width}", lambda: block_distances(net, batches(), width))
        start = best_block_start(distances, allowed_starts(n, width, protect))
        return drop_block(n, start, width), distances
    scores = memo.scores("scores", lambda: block_influence(net, batches()))
    return extraction.keep_top_scored(scores, k, protect), scores
