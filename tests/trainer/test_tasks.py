"""One strategy object per task: what each task trains on, scores, exports and checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distillery.api.job import DatasetFormat, Distillation, Task, TeacherFormat
from distillery_trainer.errors import InputError
from distillery_trainer.losses import hidden_loss, kd_loss
from distillery_trainer.nets import Outputs
from distillery_trainer.outputs import TeacherOutputs
from distillery_trainer.tasks import TEXT_TASKS, for_task


def test_every_task_has_one_strategy_registered_by_name():
    for task in Task:
        strategy = for_task(task)
        assert strategy.task == task and for_task(task.value) is strategy
    with pytest.raises(InputError, match="teacher.task"):
        for_task("masked-lm")
    assert set(TEXT_TASKS) == {Task.SEQUENCE_CLASSIFICATION, Task.SENTENCE_EMBEDDING, Task.CAUSAL_LM}
    assert for_task(Task.CAUSAL_LM).causal and not for_task(Task.SEQUENCE_CLASSIFICATION).causal
    assert for_task(Task.IMAGE_CLASSIFICATION).dataset_format == DatasetFormat.NPZ
    assert for_task(Task.SENTENCE_EMBEDDING).torch_format == TeacherFormat.HUGGINGFACE


def test_classification_trains_on_logits_and_is_scored_by_accuracy():
    task = for_task(Task.TABULAR_CLASSIFICATION)
    student = Outputs(torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]), torch.zeros(3, 4))
    teacher = TeacherOutputs(torch.tensor([[3.0, 0.0], [0.0, 3.0], [0.0, 3.0]]), None)
    labels = torch.tensor([0, 1, 1])
    spec = Distillation(temperature=2.0, alpha=0.5)
    assert torch.allclose(task.loss(student, teacher, labels, spec), kd_loss(student.logits, teacher.logits, labels, 2.0, 0.5))
    q = task.quality(TeacherOutputs(student.logits, None), teacher, labels)
    assert (q.metric_name, q.accuracy, q.agreement) == ("accuracy", pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert torch.equal(task.answer(TeacherOutputs(student.logits, student.pooled)), student.logits)
    assert torch.equal(task.from_answer(student.logits).logits, student.logits)
    task.check_head(2, 2, "the teacher")
    task.check_head(None, 7, "the teacher")  # no labels: nothing to compare with
    with pytest.raises(InputError, match="dataset has 3 classes but the teacher predicts 2"):
        task.check_head(3, 2, "the teacher")
    with pytest.raises(InputError, match="expected \\(batch, classes\\)"):
        task.from_onnx_teacher(torch.zeros(2, 5, 3), {})


def test_sentence_embedding_trains_on_the_pooled_vector_and_is_scored_by_knn():
    task = for_task(Task.SENTENCE_EMBEDDING)
    assert not task.predicts_classes and task.quality_needs_train_outputs
    student = Outputs(None, torch.randn(4, 8))
    teacher = TeacherOutputs(None, F.normalize(torch.randn(4, 8), dim=-1))
    loss = task.loss(student, teacher, None, Distillation())  # hidden loss none: cosine is the objective
    assert torch.allclose(loss, hidden_loss(student.pooled, teacher.pooled, Distillation().hidden_loss.type.COSINE))
    train_emb = torch.eye(4)
    q = task.quality(TeacherOutputs(None, torch.eye(4)[[1, 0]]), None, torch.tensor([1, 0]),
                     TeacherOutputs(None, train_emb), torch.tensor([0, 1, 0, 1]))
    assert (q.metric_name, q.accuracy) == ("knn-accuracy", 1.0)
    task.check_head(3, None, "the teacher")  # no head to check
    tokens = torch.randn(2, 3, 8)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pooled = task.from_onnx_teacher(tokens, {"attention_mask": mask}).pooled
    assert torch.allclose(pooled[0], F.normalize(tokens[0, :2].mean(0), dim=-1), atol=1e-6)
    assert torch.equal(task.answer(TeacherOutputs(None, pooled)), pooled)
