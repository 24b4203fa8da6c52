"""What differs between tasks, in one strategy object per task, registered by the task's name.

The pipeline, the training loop, evaluation, the teacher and the nets ask the strategy instead of
checking the task themselves: which loss trains the student, which metric scores it, which output
is the model's answer (logits or the pooled embedding: what ONNX exports and what an int8 model is
scored on), whether labels are required, whether the head must match the label count, and whether
inputs are tokenized text (JSONL) or arrays (NPZ).

Published API (for loading and preflight): `for_task(task)` returns the `TaskStrategy`; its
attributes `text`, `predicts_classes`, `dataset_format`, `torch_format` and `check_head(...)`.
Adding a task means writing one strategy and calling `register`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from distillery.api.job import DatasetFormat, Distillation, HiddenLossType, Task, TeacherFormat
from distillery_trainer.errors import InputError
from distillery_trainer.evaluation import Quality, classification_quality, embedding_quality
from distillery_trainer.losses import hidden_loss, kd_loss
from distillery_trainer.outputs import TeacherOutputs

if TYPE_CHECKING:
    from distillery_trainer.nets import Outputs


class TaskStrategy:
    """Everything the trainer needs to know about one task."""

    task: Task
    text: bool  # inputs are tokenized text from JSONL (else arrays from NPZ)
    predicts_classes: bool  # the model ends in a classifier head: logits are its answer, labels required
    causal: bool = False  # a decoder language model: packed token blocks, next-token logits
    # Rows per forward pass when the teacher's outputs are computed and a model is evaluated.
    eval_batch: int = 64

    @property
    def name(self) -> str:
        return self.task.value

    @property
    def dataset_format(self) -> DatasetFormat:
        return DatasetFormat.JSONL if self.text else DatasetFormat.NPZ

    @property
    def torch_format(self) -> TeacherFormat:
        """The torch teacher format that carries this task (Hugging Face for text, built-in otherwise)."""
        return TeacherFormat.HUGGINGFACE if self.text else TeacherFormat.TORCH

    def check_head(self, num_labels: int | None, predicted: int | None, what: str) -> None:
        """A classifier head must predict as many classes as the dataset has labels."""

    def loss(self, student: Outputs, teacher: TeacherOutputs, labels: torch.Tensor | None,
             spec: Distillation, batch: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def teacher_targets(self, outputs: Outputs, spec: Distillation) -> TeacherOutputs:
        """What is kept of the teacher's outputs on one batch for the student to learn from."""
        return TeacherOutputs(None if outputs.logits is None else outputs.logits.float().cpu(),
                              outputs.pooled.float().cpu())

    def quality(self, outputs: TeacherOutputs, teacher: TeacherOutputs | None, eval_labels: torch.Tensor | None,
                train_outputs: TeacherOutputs | None = None, train_labels: torch.Tensor | None = None) -> Quality:
        """`outputs` are the measured model's eval outputs; `teacher` the teacher's (None for the teacher)."""
        raise NotImplementedError

    @property
    def quality_needs_train_outputs(self) -> bool:
        """Whether scoring a model needs its outputs on the train split too (kNN over embeddings)."""
        return False

    def answer(self, outputs: TeacherOutputs) -> torch.Tensor:
        """The one output an exported (ONNX) model returns."""
        raise NotImplementedError

    def from_answer(self, answer: torch.Tensor) -> TeacherOutputs:
        """Outputs from what an exported model returned (to score an int8 model)."""
        raise NotImplementedError

    def from_onnx_teacher(self, raw: torch.Tensor, batch: dict[str, torch.Tensor]) -> TeacherOutputs:
        """A black-box ONNX teacher's first output for one batch, as outputs the student learns from."""
        raise NotImplementedError


class Classification(TaskStrategy):
    """Classes from text or arrays: KD on softened logits (+ hard labels), scored by accuracy."""

    predicts_classes = True

    def __init__(self, task: Task, *, text: bool):
        self.task, self.text = task, text

    def check_head(self, num_labels: int | None, predicted: int | None, what: str) -> None:
        if num_labels is not None and predicted is not None and predicted != num_labels:
            raise InputError(f"dataset has {num_labels} classes but {what} predicts {predicted}")

    def loss(self, student: Outputs, teacher: TeacherOutputs, labels: torch.Tensor | None,
             spec: Distillation, batch: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        loss = kd_loss(student.logits.float(), teacher.logits, labels, spec.temperature, spec.alpha)
        # The hidden-state term needs matching widths (an ONNX teacher or a narrower student has none).
        kind = spec.hidden_loss.type
        if (kind != HiddenLossType.NONE and teacher.pooled is not None
                and student.pooled.shape[-1] == teacher.pooled.shape[-1]):
            loss = loss + spec.hidden_loss.weight * hidden_loss(student.pooled.float(), teacher.pooled, kind)
        return loss

    def quality(self, outputs, teacher, eval_labels, train_outputs=None, train_labels=None) -> Quality:
        return classification_quality(outputs.logits, eval_labels, None if teacher is None else teacher.logits)

    def answer(self, outputs: TeacherOutputs) -> torch.Tensor:
        return outputs.logits

    def from_answer(self, answer: torch.Tensor) -> TeacherOutputs:
        return TeacherOutputs(answer, None)

    def from_onnx_teacher(self, raw, batch) -> TeacherOutputs:
        if raw.dim() != 2:
            raise InputError(f"teacher ONNX output has shape {tuple(raw.shape)}; expected (batch, classes)")
        return TeacherOutputs(raw, None)


class SentenceEmbedding(TaskStrategy):
    """A sentence encoder: the pooled embedding is the answer; matching it is the loss; scored by
    kNN accuracy when labels exist, else by cosine fidelity to the teacher."""

    task = Task.SENTENCE_EMBEDDING
    text = True
    predicts_classes = False

    def loss(self, student: Outputs, teacher: TeacherOutputs, labels: torch.Tensor | None,
             spec: Distillation, batch: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        # For embeddings the representation is the output: matching it is the main loss.
        kind = spec.hidden_loss.type if spec.hidden_loss.type != HiddenLossType.NONE else HiddenLossType.COSINE
        return hidden_loss(student.pooled.float(), teacher.pooled, kind)

    def quality(self, outputs, teacher, eval_labels, train_outputs=None, train_labels=None) -> Quality:
        return embedding_quality(
            outputs.pooled, None if teacher is None else teacher.pooled,
            None if train_outputs is None else train_outputs.pooled, train_labels, eval_labels)

    @property
    def quality_needs_train_outputs(self) -> bool:
        return True

    def answer(self, outputs: TeacherOutputs) -> torch.Tensor:
        return outputs.pooled

    def from_answer(self, answer: torch.Tensor) -> TeacherOutputs:
        return TeacherOutputs(None, answer)

    def from_onnx_teacher(self, raw, batch) -> TeacherOutputs:
        if raw.dim() == 3:  # token states: mean-pool over the real tokens
            mask = batch["attention_mask"].unsqueeze(-1).float()
            raw = (raw * mask).sum(1) / mask.sum(1).clamp(min=1e-6)
        return TeacherOutputs(None, torch.nn.functional.normalize(raw, dim=-1))


class CausalLM(TaskStrategy):
    """A decoder language model on packed text: KD on next-token distributions (+ cross-entropy on
    the text). Its evaluation, export and speed measurement are streaming and live in lm/stages.py;
    the methods here serve the shared stages (teacher pass, training)."""

    task = Task.CAUSAL_LM
    text = True
    predicts_classes = False
    causal = True
    # (B, L, V) logits of a 50k vocabulary are 25 MB per 128-token row: a few rows per pass.
    eval_batch = 4

    def teacher_targets(self, outputs: Outputs, spec: Distillation) -> TeacherOutputs:
        from distillery_trainer.lm.logits import top_k_targets

        logprobs, ids = top_k_targets(outputs.logits.float(), spec.top_k, spec.temperature)
        return TeacherOutputs(None, None, logprobs.cpu(), ids.cpu())

    def loss(self, student: Outputs, teacher: TeacherOutputs, labels: torch.Tensor | None,
             spec: Distillation, batch: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        from distillery_trainer.lm.logits import lm_distillation_loss

        # Online mode hands over the teacher's full logits; the cache, its top-k.
        target = teacher.logits if teacher.logits is not None else teacher
        return lm_distillation_loss(student.logits.float(), target, batch["input_ids"], spec.temperature, spec.alpha)


_REGISTRY: dict[str, TaskStrategy] = {}


def register(strategy: TaskStrategy) -> TaskStrategy:
    _REGISTRY[strategy.name] = strategy
    return strategy


def for_task(task: Task | str) -> TaskStrategy:
    try:
        return _REGISTRY[Task(task).value]
    except (ValueError, KeyError):
        raise InputError("teacher.task: not a task the trainer supports") from None


register(Classification(Task.SEQUENCE_CLASSIFICATION, text=True))
register(Classification(Task.IMAGE_CLASSIFICATION, text=False))
register(Classification(Task.TABULAR_CLASSIFICATION, text=False))
register(SentenceEmbedding())
register(CausalLM())

TEXT_TASKS = tuple(Task(name) for name, strategy in _REGISTRY.items() if strategy.text)
