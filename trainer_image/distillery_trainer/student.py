"""Building the student: the model to cut, the layers to keep (and why), the cut itself."""

from __future__ import annotations

import torch

from distillery.api.job import DistillationJob, ExtractionMethod
from distillery_trainer import extraction
from distillery_trainer.builtin import BuiltinConfig, BuiltinNet
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.loading import Inputs
from distillery_trainer.nets import BuiltinWrapper, Net
from distillery_trainer.teacher import TEXT_TASKS, TeacherSide, load_torch_model


def student_source(job: DistillationJob, inputs: Inputs, teacher: TeacherSide, train_data: Encoded) -> Net:
    """The model whose layers are extracted: the teacher itself, student.base, or a fresh net."""
    spec = job.spec
    num_labels = len(inputs.labels) if inputs.labels is not None else None
    if teacher.net is not None and spec.student.base is None and spec.student.architecture is None:
        return teacher.net
    if spec.student.base is not None:
        return load_torch_model(inputs.base_path, spec.student.base.format, spec.teacher.task, num_labels)
    arch = spec.student.architecture
    if spec.teacher.task in TEXT_TASKS:
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


@torch.no_grad()
def importance_scores(net: Net, data: Encoded, job: DistillationJob, device: torch.device) -> list[float]:
    """Mean block score per layer over calibration batches from the train split."""
    spec = job.spec.student
    net.to(device).eval()
    n_layers = net.num_layers()
    totals = torch.zeros(n_layers, dtype=torch.float64)
    count = 0
    batch_size = min(32, job.spec.distillation.batch_size)
    for i, batch in enumerate(data.batches(batch_size, device)):
        if i >= spec.calibration_batches:
            break
        hs = net.outputs(batch, hidden_states=True).hidden_states
        mask = batch.get("attention_mask")
        for layer in range(n_layers):
            totals[layer] += extraction.block_scores(hs[layer], hs[layer + 1], mask, spec.importance_metric).sum().double().cpu()
        count += hs[0].shape[0]
    return [round(float(v) / max(count, 1), 6) for v in totals]


def select_layers(net: Net, data: Encoded, job: DistillationJob, device) -> tuple[list[int], list[float]]:
    spec = job.spec.student
    n = net.num_layers()
    k = extraction.target_size(spec, n)
    method = spec.method
    if method == ExtractionMethod.EXPLICIT:
        return extraction.check_explicit(spec.layers, n), []
    if method == ExtractionMethod.UNIFORM:
        return extraction.uniform_layers(n, k), []
    if method == ExtractionMethod.FIRST:
        return extraction.first_layers(n, k), []
    if method == ExtractionMethod.WEIGHT_RANGE:
        rms = [round(extraction.weight_rms(layer), 6) for layer in net.layer_list()]
        cap = spec.keep_layers if spec.keep_layers is not None else (k if spec.keep_ratio is not None else None)
        return extraction.weight_range_layers(rms, spec.weight_range.min, spec.weight_range.max, cap), rms
    scores = importance_scores(net, data, job, device)
    return extraction.top_k_layers(scores, k), scores


