"""Width pruning end to end on the tiny fine-tuned BERT: a run that prunes half the heads and half
the FFN neurons of the 2 kept layers, heals, reports, saves a loadable model; a resumed run; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillery.api import load_job
from distillery.api.result import EXIT_INVALID, TrainerResult
from distillery_trainer.entrypoint import run_job
from distillery_trainer.pipeline import run
from distillery_trainer.progress import Progress

from .conftest import MAX_LENGTH, read_jsonl

WIDTH = {"heads": 0.5, "ffn": 0.5}


def run_into(text_job, out: Path, progress: Progress | None = None, **spec) -> TrainerResult:
    return run(load_job(text_job(out.as_uri(), **spec)), progress=progress or Progress(show_bar=False))


@pytest.fixture(scope="module")
def width_run(text_job, tmp_path_factory) -> tuple[Path, TrainerResult]:
    out = tmp_path_factory.mktemp("width")
    return out, run_into(text_job, out, student={"width": WIDTH})


@pytest.fixture(scope="module")
def depth_only(text_job, tmp_path_factory) -> TrainerResult:
    """The same layer cut without width pruning (no healing: only its size is compared)."""
    out = tmp_path_factory.mktemp("depth-only")
    return run_into(text_job, out, distillation={"epochs": 0})


def test_width_run_reports_the_kept_structure_and_is_smaller(width_run, depth_only, tiny_teacher):
    _, result = width_run
    w = result.width
    assert w is not None
    assert (w.heads, w.heads_kept, w.ffn, w.ffn_kept) == (4, 2, 128, 64)
    assert w.calibration_rows == 128  # 8 calibration batches of 16 train rows
    assert [entry.layer for entry in w.layers] == result.layers_kept == depth_only.layers_kept
    for entry in w.layers:
        assert len(entry.heads_kept) == 2 and entry.heads_kept == sorted(entry.heads_kept)
        assert len(entry.head_scores) == 4 and all(s > 0 for s in entry.head_scores)
        # the kept heads are the two best-scoring ones
        best = sorted(range(4), key=lambda h: -entry.head_scores[h])[:2]
        assert entry.heads_kept == sorted(best)
        assert entry.ffn_kept == 64 and 0.5 < entry.ffn_importance_kept <= 1
    # what the report says before/after is what was measured, and what depth alone gives
    assert w.parameters_before == depth_only.student.parameters
    assert w.parameters_after == result.student.parameters < depth_only.student.parameters
    assert result.student.size_bytes < depth_only.student.size_bytes
    assert result.onnx_max_abs_diff < 1e-3
    # healed: well above chance (0.2 with five classes)
    assert result.student.accuracy > 0.4, result.student.accuracy
    assert result.teacher.accuracy == pytest.approx(tiny_teacher.eval_accuracy, abs=0.02)


def test_width_block_is_written_to_result_metrics_and_card(width_run):
    out, result = width_run
    stored = json.loads((out / "result.json").read_text())
    assert stored["width"] == result.width.to_wire()
    assert json.loads((out / "metrics.json").read_text())["width"]["headsKept"] == 2
    card = (out / "README.md").read_text()
    assert "Width pruning (activation importance on 128 train rows)" in card
    assert "heads 2/4, FFN neurons 64/128 per layer" in card


def test_saved_model_loads_with_from_pretrained_and_matches_the_onnx_student(width_run, bbc_data):
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, _ = width_run
    model_dir = out / "model"
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    assert model.config.intermediate_size == 64
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    rows = [row["text"] for row in read_jsonl(bbc_data.eval)[:8]]
    enc = tokenizer(rows, truncation=True, max_length=MAX_LENGTH, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        from_hf = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: enc[i.name].numpy() for i in session.get_inputs()}
    from_onnx = session.run(None, feed)[0]
    assert abs(from_hf - from_onnx).max() < 1e-3


class StopAfter(Progress):
    """Progress that interrupts training after `steps` steps, as a killed pod would."""

    def __init__(self, steps: int):
        super().__init__(show_bar=False)
        self.steps_left = steps

    def tick(self, n: int = 1, **postfix) -> None:
        self.steps_left -= n
        if self.steps_left <= 0:
            raise KeyboardInterrupt("stopped by the test")


def test_interrupted_width_run_resumes_with_the_same_structure(width_run, text_job, tmp_path, capsys):
    out = tmp_path / "out"
    spec = {"student": {"width": WIDTH}, "distillation": {"checkpointEverySteps": 5}}
    with pytest.raises(KeyboardInterrupt):
        run_into(text_job, out, StopAfter(12), **spec)
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert latest["state"]["global_step"] == 10
    assert len(latest["state"]["width"]["plan"]["heads"]) == 2
    capsys.readouterr()

    resumed = run_into(text_job, out, **spec)

    err = capsys.readouterr().err
    assert "resuming from step 10" in err and "ignoring the checkpoint" not in err
    assert resumed.training.resumed_from_step == 10
    assert resumed.training.steps == 3 * 19  # 300 rows in batches of 16, 3 epochs: none lost, none repeated
    # the structure and its report come back from the checkpoint, the same as an uninterrupted run's
    _, uninterrupted = width_run
    assert resumed.width == uninterrupted.width
    assert resumed.student.parameters == uninterrupted.student.parameters


def test_a_parameter_budget_picks_the_structure_that_fits(width_run, text_job, tmp_path):
    _, by_ratio = width_run
    budget = by_ratio.width.parameters_after  # what heads 0.5, ffn 0.5 gives
    result = run_into(text_job, tmp_path / "out", student={"width": {"maxParameters": budget}},
                      distillation={"epochs": 0})
    w = result.width
    assert w.max_parameters == budget and w.parameters_after == budget == result.student.parameters
    assert (w.heads_kept, w.ffn_kept) == (2, 64)  # 65 neurons (still 2 heads) would not fit
    assert [e.heads_kept for e in w.layers] == [e.heads_kept for e in by_ratio.width.layers]


def test_a_ratio_that_keeps_no_head_is_invalid_before_the_teacher_pass(text_job, tmp_path, capsys):
    out = tmp_path / "out"
    code, result = run_job(load_job(text_job(out.as_uri(), student={"width": {"heads": 0.1}})))
    assert (code, result) == (EXIT_INVALID, None)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "student.width.heads: 0.1 of 4 attention heads keeps none" in errors[0]
    assert not (out / "cache").exists()  # no teacher outputs were computed


def test_depth_width_vocabulary_and_int8_compose(width_run, text_job, tmp_path, bbc_data):
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "out"
    result = run_into(text_job, out, student={"width": WIDTH, "vocabulary": {}}, export={"int8": True})

    w, v = result.width, result.vocabulary
    assert w is not None and v is not None
    _, width_only = width_run
    assert w == width_only.width  # vocabulary pruning comes after width and does not change it
    # each step's saving adds up to the measured student
    assert result.student.parameters == w.parameters_after - v.embedding_parameters_removed
    assert {x.name for x in result.variants} == {"fp32", "int8"}
    int8 = result.metrics_of("int8")
    assert int8.size_bytes < result.metrics_of("fp32").size_bytes
    # the saved directory (pruned tokenizer, zero heads, compact FFN) loads and matches model.onnx
    model = AutoModelForSequenceClassification.from_pretrained(str(out / "model")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out / "model"))
    rows = [row["text"] for row in read_jsonl(bbc_data.eval)[:8]]
    enc = tokenizer(rows, truncation=True, max_length=MAX_LENGTH, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        from_hf = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    from_onnx = session.run(None, {i.name: enc[i.name].numpy() for i in session.get_inputs()})[0]
    assert abs(from_hf - from_onnx).max() < 1e-3
