"""Loading the teacher (Hugging Face, built-in torch, or ONNX) and computing its outputs once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distillery.api.job import Task, TeacherFormat
from distillery_trainer.builtin import load_builtin
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.nets import BuiltinWrapper, HFNet, Net
from distillery_trainer.onnx_tools import require_provider

TEXT_TASKS = (Task.SEQUENCE_CLASSIFICATION, Task.SENTENCE_EMBEDDING)


@dataclass
class TeacherOutputs:
    """What the student learns from: logits (classification) and a pooled vector per example."""

    logits: torch.Tensor | None
    pooled: torch.Tensor | None

    def as_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        if self.logits is not None:
            out[f"{prefix}.logits"] = self.logits.contiguous()
        if self.pooled is not None:
            out[f"{prefix}.pooled"] = self.pooled.contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> TeacherOutputs:
        return cls(tensors.get(f"{prefix}.logits"), tensors.get(f"{prefix}.pooled"))


def load_torch_model(path: Path, fmt: TeacherFormat, task: Task, num_labels: int | None) -> Net:
    """A torch Net from a Hugging Face directory or a built-in model directory."""
    if fmt == TeacherFormat.HUGGINGFACE:
        if task not in TEXT_TASKS:
            raise InputError(f"teacher.format huggingface supports text tasks, not {task.value}")
        return HFNet.load(path, task, num_labels)
    if fmt == TeacherFormat.TORCH:
        if task in TEXT_TASKS:
            raise InputError(f"teacher.format torch (built-in mlp/cnn) does not support {task.value}")
        return BuiltinWrapper(load_builtin(path), task)
    raise InputError(f"format {fmt.value} is not a torch model")


@torch.no_grad()
def torch_outputs(net: Net, data: Encoded, batch_size: int, device: torch.device) -> TeacherOutputs:
    net.eval()
    logits, pooled = [], []
    for batch in data.batches(batch_size, device):
        with autocast(device):
            out = net.outputs(batch)
        if out.logits is not None:
            logits.append(out.logits.float().cpu())
        pooled.append(out.pooled.float().cpu())
    return TeacherOutputs(torch.cat(logits) if logits else None, torch.cat(pooled))


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

    def outputs(self, data: Encoded, batch_size: int) -> TeacherOutputs:
        logits, pooled = [], []
        for batch in data.batches(batch_size):
            out = torch.from_numpy(np.asarray(self.session.run(None, self._feed(batch))[0])).float()
            if self.task == Task.SENTENCE_EMBEDDING:
                if out.dim() == 3:  # token states: mean-pool over the real tokens
                    mask = batch["attention_mask"].unsqueeze(-1).float()
                    out = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-6)
                pooled.append(F.normalize(out, dim=-1))
            else:
                if out.dim() != 2:
                    raise InputError(f"teacher ONNX output has shape {tuple(out.shape)}; expected (batch, classes)")
                logits.append(out)
        return TeacherOutputs(torch.cat(logits) if logits else None, torch.cat(pooled) if pooled else None)


@dataclass
class TeacherSide:
    """The teacher as the rest of the run sees it: a torch model or an ONNX session, and its
    outputs on both splits (computed once)."""

    net: Net | None  # None for an ONNX teacher
    onnx: OnnxTeacher | None
    train: TeacherOutputs
    eval: TeacherOutputs
