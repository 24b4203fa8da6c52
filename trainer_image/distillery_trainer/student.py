"""Building the student: the model to cut, the layers to keep (and why), the cut itself."""

from __future__ import annotations

import torch

from distillery.api.job import DistillationJob, ImportanceMetric
from distillery_trainer import extraction
from distillery_trainer.builtin import BuiltinConfig, BuiltinNet
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.loading import Inputs
from distillery_trainer.nets import BuiltinWrapper, Net
from distillery_trainer.ranking_cache import NO_MEMO, RankingMemo
from distillery_trainer.tasks import for_task
from distillery_trainer.teacher import TeacherSide, load_torch_model


def student_source(job: DistillationJob, inputs: Inputs, teacher: TeacherSide, train_data: Encoded) -> Net:
    """The model whose layers are extracted: the teacher itself, student.base, or a fresh net."""
    spec = job.spec
    num_labels = len(inputs.labels) if inputs.labels is not None else None
    if teacher.net is not None and spec.student.base is None and spec.student.architecture is None:
        return teacher.net
    if spec.student.base is not None:
        return load_torch_model(inputs.base_path, spec.student.base.format, spec.teacher.task, num_labels)
    arch = spec.student.architecture
    if for_task(spec.teacher.task).text:
        raise InputError("student.architecture: built-in architectures are for array data; use student.base for text")
    if num_labels is None:
        raise InputError("student.architecture: needs labels to size the classifier head")
    features = train_data.tensors["features"]
    torch.manual_seed(spec.distillation.seed)
    shape = list(features.shape[1:])
    config = BuiltinConfig(
        architecture=arch.name, num_classes=num_labels, hidden_size=arch.hidden_size,
        num_blocks=arch.num_blocks, input_dim=int(torch.tensor(shape).prod()),
        in_channels=shape[0] if len(shape) == 3 else 1,
        image_size=shape[-2:] if len(shape) >= 2 else _square(shape[0]),
    )
    return BuiltinWrapper(BuiltinNet(config), spec.teacher.task)


def _square(n: int) -> list[int]:
    side = int(round(n ** 0.5))
    return [side, side] if side * side == n else [1, n]


def calibration_batches(data: Encoded, job: DistillationJob, device: torch.device,
                        batches: int | None = None) -> list[dict]:
    """calibrationBatches (or `batches`) batches of train rows spread evenly over the split:
    deterministic, and not just its head, which a file sorted by label would fill with one class."""
    batch_size = min(32, job.spec.distillation.batch_size)
    rows = min(len(data), batch_size * (batches or job.spec.student.calibration_batches))
    index = torch.linspace(0, len(data) - 1, rows).round().long().unique()
    return [data.batch(chunk, device) for chunk in index.split(batch_size)]


@torch.no_grad()
def importance_scores(net: Net, data: Encoded, job: DistillationJob, device: torch.device) -> list[float]:
    """Mean block score per layer over calibration batches from the train split."""
    spec = job.spec.student
    net.to(device).eval()
    n_layers = net.num_layers()
    totals = torch.zeros(n_layers, dtype=torch.float64)
    count = 0
    for batch in calibration_batches(data, job, device):
        hs = net.outputs(batch, hidden_states=True).hidden_states
        mask = batch.get("attention_mask")
        for layer in range(n_layers):
            totals[layer] += extraction.block_scores(hs[layer], hs[layer + 1], mask, spec.importance_metric).sum().double().cpu()
        count += hs[0].shape[0]
    return [round(float(v) / max(count, 1), 6) for v in totals]


@torch.no_grad()
def ablation_selection(net: Net, data: Encoded, job: DistillationJob, device: torch.device,
                       k: int, memo: RankingMemo = NO_MEMO) -> tuple[list[int], list[float]]:
    """Greedy depth pruning by output change: drop, one at a time, the layer whose removal moves
    the model's outputs least from the full model's on calibration batches.

    Unlike block influence, which looks at each block's own input and output, this measures what
    the task sees (logits at the distillation temperature, or the embedding). Returns the kept
    layers and, as scores, each layer's divergence when removed alone from the full model.
    """
    protected = extraction.protected_layers(net.num_layers(), extraction.protects_ends(job.spec.student, causal=False))
    known = memo.removals()
    if known is not None and len(known.order) >= net.num_layers() - k:  # the path is known this far
        keep, scores, _ = extraction.greedy_removal(net.num_layers(), k, None, protected, known)
        return keep, scores
    net.to(device).eval()
    batches = calibration_batches(data, job, device)
    temperature = job.spec.distillation.temperature
    reference = [net.outputs(batch) for batch in batches]

    def divergence(keep: list[int]) -> float:
        with net.only_layers(keep):
            total = sum(extraction.output_divergence(ref, net.outputs(batch), temperature)
                        for ref, batch in zip(reference, batches, strict=True))
        return float(total) / max(1, len(batches))

    keep, scores, removals = extraction.greedy_removal(net.num_layers(), k, divergence, protected, known)
    memo.keep_removals(removals)
    return keep, scores


def select_layers(net: Net, data: Encoded, job: DistillationJob, device,
                  memo: RankingMemo = NO_MEMO) -> tuple[list[int], list[float]]:
    """The layers the student keeps and the scores behind the choice; measurements kept in `memo`
    (the layer-ranking cache) are reused rather than measured again."""
    spec = job.spec.student
    k = extraction.target_size(spec, net.num_layers())
    fixed = extraction.fixed_rule_layers(spec, list(net.layer_list()), k)
    if fixed is not None:
        return fixed
    protect = extraction.protects_ends(spec, causal=False)
    extraction.check_protected_size(k, net.num_layers(), protect)
    if spec.importance_metric == ImportanceMetric.ABLATION:
        return ablation_selection(net, data, job, device, k, memo)
    scores = memo.scores("scores", lambda: importance_scores(net, data, job, device))
    return extraction.keep_top_scored(scores, k, protect), scores


