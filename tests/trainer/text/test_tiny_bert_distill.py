"""End to end on text: a tiny fine-tuned 4-layer BERT teacher distilled into 2-layer students."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillery.api import load_job
from distillery.api.result import TrainerResult
from distillery_trainer.pipeline import run

from .conftest import MAX_LENGTH, TOKENIZER_FILES, read_jsonl


def run_into(text_job, out: Path, **spec) -> TrainerResult:
    return run(load_job(text_job(out.as_uri(), **spec)))


@pytest.fixture(scope="module")
def importance_run(text_job, tmp_path_factory) -> tuple[Path, TrainerResult]:
    out = tmp_path_factory.mktemp("importance")
    return out, run_into(text_job, out)


@pytest.fixture(scope="module")
def untrained_run(text_job, tmp_path_factory) -> tuple[Path, TrainerResult]:
    """The same job without the healing step: the extracted student as it comes out."""
    out = tmp_path_factory.mktemp("untrained")
    return out, run_into(text_job, out, distillation={"epochs": 0})


def test_distilled_student_beats_the_untrained_one(importance_run, untrained_run, tiny_teacher):
    _, result = importance_run
    _, untrained = untrained_run

    assert isinstance(result.student.accuracy, float)
    assert result.student.metric_name == "accuracy"
    assert 0.0 <= result.student.accuracy <= 1.0
    assert isinstance(result.student.agreement, float)
    # The teacher is measured on the same eval split the fixture measured it on.
    assert result.teacher.accuracy == pytest.approx(tiny_teacher.eval_accuracy, abs=0.02)

    assert result.training.steps > 0 and len(result.training.history) == 3
    assert untrained.training.steps == 0 and untrained.training.history == []
    assert untrained.layers_kept == result.layers_kept  # the same extracted shape
    assert untrained.student.parameters == result.student.parameters
    assert result.student.accuracy > untrained.student.accuracy, (
        f"distilled {result.student.accuracy} vs untrained {untrained.student.accuracy}")


def test_importance_selection_and_shape(importance_run):
    _, result = importance_run
    assert len(result.layers_kept) == 2
    assert result.layers_kept == sorted(result.layers_kept)
    assert all(0 <= i < 4 for i in result.layers_kept)
    assert len(result.layer_scores) == 4
    assert all(s > 0 for s in result.layer_scores)
    # ablation (the default) removes first the layer whose removal alone changed the outputs least
    first_dropped = min(range(4), key=lambda i: (result.layer_scores[i], -i))
    assert first_dropped not in result.layers_kept
    assert result.teacher_layers == 4
    assert result.teacher.num_layers == 4 and result.student.num_layers == 2
    assert result.student.parameters < result.teacher.parameters
    assert result.compression_ratio > 1


def test_latency_and_onnx_round_trip(importance_run):
    _, result = importance_run
    for m in (result.teacher, result.student):
        assert m.latency_p50_ms > 0
        assert m.latency_p95_ms >= m.latency_p50_ms
        assert m.size_bytes > 0
    assert result.speedup > 0  # > 1 is expected, but not asserted on a loaded machine
    assert result.onnx_max_abs_diff is not None and result.onnx_max_abs_diff < 1e-3
    assert isinstance(result.decision.accepted, bool)


def test_artifacts_are_written(importance_run):
    out, result = importance_run
    expected = ["model/config.json", "model/model.safetensors", "model.onnx", "metrics.json",
                "result.json", "README.md"]
    expected += [f"model/{name}" for name in TOKENIZER_FILES]
    missing = [p for p in expected if not (out / p).is_file()]
    assert not missing, f"missing artifacts in {out}: {missing}"
    assert not list(out.rglob("*.distillery-tmp")), "temporary files left behind"

    stored = TrainerResult.model_validate(json.loads((out / "result.json").read_text()))
    assert stored.student.accuracy == result.student.accuracy
    assert stored.layers_kept == result.layers_kept
    assert result.artifacts.onnx.endswith("model.onnx")
    assert result.artifacts.result.endswith("result.json")
    json.loads((out / "metrics.json").read_text())
    assert (out / "README.md").read_text().strip()


def test_saved_student_loads_and_reproduces_its_accuracy(importance_run, bbc_data):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, result = importance_run
    model_dir = out / "model"
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    assert model.config.num_hidden_layers == 2
    assert len(model.bert.encoder.layer) == 2
    assert model.config.id2label == {i: n for i, n in enumerate(bbc_data.classes)}

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    rows = read_jsonl(bbc_data.eval)
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=MAX_LENGTH,
                    padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.argmax(1)
    labels = torch.tensor([bbc_data.classes.index(r["label"]) for r in rows])
    accuracy = float((pred == labels).float().mean())
    assert accuracy == pytest.approx(result.student.accuracy, abs=0.02)


def test_finished_job_is_not_run_again(importance_run, text_job):
    out, result = importance_run
    again = run_into(text_job, out)  # same spec, same output: the stored result comes back
    assert again.completion_time == result.completion_time
    assert again.student.accuracy == result.student.accuracy


@pytest.mark.parametrize(("method", "expected"), [("uniform", [0, 3]), ("first", [0, 1])])
def test_fixed_layer_methods(method, expected, text_job, tmp_path):
    result = run_into(text_job, tmp_path, name=f"tiny-bert-{method}",
                      student={"method": method, "keepLayers": 2}, distillation={"epochs": 1})
    assert result.layers_kept == expected
    assert result.layer_scores == []  # only importance (and weight-range) score layers
    assert result.student.num_layers == 2 and result.teacher_layers == 4
    assert isinstance(result.student.accuracy, float)
    assert len(result.training.history) == 1
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
