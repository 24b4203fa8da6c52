"""A black-box ONNX text teacher: soft labels from onnxruntime, layers and tokenizer from student.base."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from distillery.api import SpecError, load_job
from distillery.api.job import Task
from distillery_trainer.entrypoint import run_job
from distillery_trainer.nets import HFNet
from distillery_trainer.onnx_tools import example_inputs, export_onnx
from distillery_trainer.pipeline import onnx_parameter_count, run

from .conftest import TOKENIZER_FILES


@pytest.fixture(scope="module")
def teacher_onnx(tiny_teacher, tmp_path_factory) -> Path:
    """The tiny teacher exported to one .onnx file (inputs input_ids, attention_mask), nothing else."""
    net = HFNet.load(tiny_teacher.path, Task.SEQUENCE_CLASSIFICATION)
    path = tmp_path_factory.mktemp("onnx-teacher") / "teacher.onnx"
    export_onnx(net, path, example_inputs(net, 2, 16, ()), 17)
    assert not any(p.name != "teacher.onnx" for p in path.parent.iterdir())  # no tokenizer beside it
    return path


def onnx_job(text_job, out: Path, teacher: Path, base: Path) -> dict:
    doc = text_job(out.as_uri(), name="tiny-bert-onnx",
                   student={"method": "first", "keepLayers": 2,
                            "base": {"uri": base.as_uri(), "format": "huggingface"}},
                   distillation={"epochs": 1})
    doc["spec"]["teacher"] = {"uri": teacher.as_uri(), "format": "onnx", "task": "sequence-classification"}
    return doc


def test_onnx_teacher_with_student_base(teacher_onnx, tiny_teacher, text_job, tmp_path):
    import onnxruntime as ort

    inputs = [i.name for i in ort.InferenceSession(str(teacher_onnx)).get_inputs()]
    assert inputs == ["input_ids", "attention_mask"]

    out = tmp_path / "out"
    result = run(load_job(onnx_job(text_job, out, teacher_onnx, tiny_teacher.path)))

    assert isinstance(result.student.accuracy, float)
    assert result.layers_kept == [0, 1]
    assert result.student.num_layers == 2
    # The teacher is known only through its ONNX file: measured there, not as a torch model.
    assert result.teacher_layers is None and result.teacher.num_layers is None
    assert result.teacher_uri == teacher_onnx.as_uri()
    assert result.teacher.parameters == onnx_parameter_count(teacher_onnx)
    assert result.teacher.size_bytes == teacher_onnx.stat().st_size
    assert result.teacher.latency_p50_ms > 0
    assert result.teacher.latency_p95_ms >= result.teacher.latency_p50_ms
    # onnxruntime's logits give the same predictions as the torch teacher did
    assert result.teacher.accuracy == pytest.approx(tiny_teacher.eval_accuracy, abs=0.02)
    assert result.onnx_max_abs_diff < 1e-3
    # The tokenizer (from student.base) travels with the student.
    assert (out / "model" / "tokenizer.json").is_file() and (out / "model" / "vocab.txt").is_file()
    assert (out / "model.onnx").is_file() and (out / "result.json").is_file()


def test_onnx_teacher_base_without_tokenizer_is_invalid(teacher_onnx, tiny_teacher, text_job, tmp_path, capsys):
    """The tokenizer of an ONNX text teacher comes from student.base: without one there, exit 2."""
    base = tmp_path / "base-no-tokenizer"
    base.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(tiny_teacher.path / name, base / name)
    code, result = run_job(load_job(onnx_job(text_job, tmp_path / "out", teacher_onnx, base)))
    assert (code, result) == (2, None)
    err = capsys.readouterr().err
    assert "tokenizer" in err.lower()


def test_onnx_teacher_needs_student_base_or_architecture(text_job, tmp_path):
    doc = text_job((tmp_path / "out").as_uri())
    doc["spec"]["teacher"] = {"uri": (tmp_path / "t.onnx").as_uri(), "format": "onnx",
                              "task": "sequence-classification"}
    with pytest.raises(SpecError) as info:
        load_job(doc)
    message = str(info.value)
    assert "student.base or student.architecture is required" in message
    assert "onnx" in message



@pytest.fixture(scope="module")
def reordered_teacher(tiny_teacher, tmp_path_factory) -> Path:
    """The same teacher with its classes in reverse alphabetical order (head rows permuted to match)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_teacher.path))
    old = model.config.id2label
    order = sorted(old, reverse=True)  # new index j holds old class order[j]
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[order].clone())
        model.classifier.bias.copy_(model.classifier.bias[order].clone())
    model.config.id2label = {j: old[i] for j, i in enumerate(order)}
    model.config.label2id = {name: j for j, name in model.config.id2label.items()}
    out = tmp_path_factory.mktemp("reordered") / "tiny-bert-reversed"
    model.save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        shutil.copy2(tiny_teacher.path / name, out / name)
    return out


def test_huggingface_teacher_label_order_comes_from_its_config(reordered_teacher, tiny_teacher, text_job, tmp_path):
    doc = text_job((tmp_path / "out").as_uri(), student={"method": "first", "keepLayers": 2},
                   distillation={"epochs": 0})
    doc["spec"]["teacher"]["uri"] = reordered_teacher.as_uri()
    result = run(load_job(doc))
    assert result.teacher.accuracy == pytest.approx(tiny_teacher.eval_accuracy, abs=0.02)


def test_onnx_teacher_label_order_follows_student_base(reordered_teacher, tiny_teacher, text_job, tmp_path):
    net = HFNet.load(reordered_teacher, Task.SEQUENCE_CLASSIFICATION)
    onnx_path = tmp_path / "reversed.onnx"
    export_onnx(net, onnx_path, example_inputs(net, 2, 16, ()), 17)
    doc = onnx_job(text_job, tmp_path / "out", onnx_path, reordered_teacher)
    doc["spec"]["distillation"]["epochs"] = 0
    result = run(load_job(doc))
    assert result.teacher.accuracy == pytest.approx(tiny_teacher.eval_accuracy, abs=0.02)
