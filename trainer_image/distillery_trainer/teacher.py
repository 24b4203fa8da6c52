"""Loading the teacher (Hugging Face, built-in torch, or ONNX) and computing its outputs once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distillery.api.job import Task, TeacherFormat
from distillery_trainer.builtin import load_builtin
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.nets import BuiltinWrapper, HFNet, Net, Outputs
from distillery_trainer.onnx_tools import require_provider
from distillery_trainer.outputs import OutputWriter, TeacherOutputs
from distillery_trainer.tasks import TEXT_TASKS, for_task

__all__ = ["TEXT_TASKS", "OnnxTeacher", "TeacherOutputs", "TeacherSide", "load_torch_model", "torch_outputs"]


def load_torch_model(path: Path, fmt: TeacherFormat, task: Task, num_labels: int | None) -> Net:
    """A torch Net from a Hugging Face directory or a built-in model directory."""
    text = for_task(task).text
    if fmt == TeacherFormat.HUGGINGFACE and task == Task.CAUSAL_LM:
        from distillery_trainer.lm.model import CausalLMNet

        return CausalLMNet.load(path)
    if fmt == TeacherFormat.HUGGINGFACE:
        if not text:
            raise InputError(f"teacher.format huggingface supports text tasks, not {task.value}")
        return HFNet.load(path, task, num_labels)
    if fmt == TeacherFormat.TORCH:
        if text:
            raise InputError(f"teacher.format torch (built-in mlp/cnn) does not support {task.value}")
        return BuiltinWrapper(load_builtin(path), task)
    raise InputError(f"format {fmt.value} is not a torch model")


@torch.no_grad()
def torch_outputs(net: Net, data: Encoded, batch_size: int, device: torch.device,
                  keep: Callable[[Outputs], TeacherOutputs] | None = None, into: Path | None = None) -> TeacherOutputs:
    """The net's outputs on every row; `keep` picks what is kept of each batch (default: logits
    and pooled vectors, on the CPU). With `into`, written there as memory-mapped files (a
    large split's outputs), else gathered in memory."""
    net.eval()
    keep = keep or (lambda out: TeacherOutputs(None if out.logits is None else out.logits.float().cpu(),
                                               out.pooled.float().cpu()))
    writer = OutputWriter(into, len(data)) if into is not None else None
    parts = []
    for batch in data.batches(batch_size, device):
        with autocast(device):
            part = keep(net.outputs(batch))
        if writer is not None:
            writer.add(part)
        else:
            parts.append(part)
    return writer.finish() if writer is not None else TeacherOutputs.concat(parts)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op on the CPU, where fp32 is both faster and reproducible."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


class OnnxTeacher:
    """A black-box teacher: we only see what onnxruntime returns for our inputs."""

    def __init__(self, path: Path, task: Task, providers: list[str]):
        import onnxruntime as ort

        if path.is_dir():
            candidates = sorted(path.glob("*.onnx"))
            if not candidates:
                raise InputError(f"teacher.uri: no .onnx file in {path}")
            path = candidates[0]
        if not path.is_file():
            raise InputError(f"teacher.uri: ONNX file not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise InputError(f"teacher.uri: {path} is not a loadable ONNX model: {err}") from None
        require_provider(self.session, providers, "the ONNX teacher")
        self.path = path
        self.task = task
        self.strategy = for_task(task)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}

    def _feed(self, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        feed = {}
        for name in self.input_names:
            if name in batch:
                value = batch[name].cpu().numpy()
            elif name == "token_type_ids" and "input_ids" in batch:
                value = np.zeros_like(batch["input_ids"].cpu().numpy())
            elif len(self.input_names) == 1 and "features" in batch:
                value = batch["features"].cpu().numpy()
            else:
                raise InputError(f"teacher ONNX input {name!r} cannot be fed from the dataset")
            if "int64" in self.input_types[name]:
                value = value.astype(np.int64)
            elif "float" in self.input_types[name]:
                value = value.astype(np.float32)
            feed[name] = value
        return feed

    def outputs(self, data: Encoded, batch_size: int, into: Path | None = None) -> TeacherOutputs:
        """The teacher's outputs on every row (written under `into` as torch_outputs does)."""
        writer = OutputWriter(into, len(data)) if into is not None else None
        parts = []
        for batch in data.batches(batch_size):
            raw = torch.from_numpy(np.asarray(self.session.run(None, self._feed(batch))[0])).float()
            part = self.strategy.from_onnx_teacher(raw, batch)
            if writer is not None:
                writer.add(part)
            else:
                parts.append(part)
        return writer.finish() if writer is not None else TeacherOutputs.concat(parts)


@dataclass
class TeacherSide:
    """The teacher as the rest of the run sees it: a torch model or an ONNX session, and its
    outputs on both splits (computed once)."""

    net: Net | None  # None for an ONNX teacher
    onnx: OnnxTeacher | None
    train: TeacherOutputs
    eval: TeacherOutputs
