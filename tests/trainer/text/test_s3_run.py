"""A whole text run against MinIO: teacher, data and artifacts all behind s3:// URIs."""

from __future__ import annotations

import re
import tempfile

import pytest

from distillery.api import load_job
from distillery.api.result import TrainerResult
from distillery.store import open_store
from distillery_trainer.pipeline import run

from .conftest import TOKENIZER_FILES

pytestmark = pytest.mark.minio


def test_run_with_s3_teacher_data_and_output(s3_env, tiny_teacher, bbc_data, text_job, tmp_path, monkeypatch):
    bucket = s3_env
    store = open_store(f"s3://{bucket}")
    teacher_keys = store.upload_tree(tiny_teacher.path, "teachers/tiny-bert")
    store.upload_file(bbc_data.train, "data/bbc-train.jsonl")
    store.upload_file(bbc_data.eval, "data/bbc-eval.jsonl")
    inputs = set(teacher_keys) | {"data/bbc-train.jsonl", "data/bbc-eval.jsonl"}

    # The run's local work folder (downloads, exports) must be gone afterwards.
    work_root = tmp_path / "tmp"
    work_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work_root))

    doc = text_job(f"s3://{bucket}/runs/tiny", name="tiny-bert-s3",
                   teacher={"uri": f"s3://{bucket}/teachers/tiny-bert"},
                   dataset={"trainUri": f"s3://{bucket}/data/bbc-train.jsonl",
                            "evalUri": f"s3://{bucket}/data/bbc-eval.jsonl", "maxTrainRows": 120},
                   student={"method": "first", "keepLayers": 2}, distillation={"epochs": 1})
    result = run(load_job(doc))

    assert isinstance(result.student.accuracy, float)
    assert result.layers_kept == [0, 1]
    assert result.artifacts.result == f"s3://{bucket}/runs/tiny/result.json"
    assert result.artifacts.onnx == f"s3://{bucket}/runs/tiny/model.onnx"
    assert list(work_root.iterdir()) == []

    out = open_store(f"s3://{bucket}/runs/tiny")
    keys = out.list_keys()
    for key in ["result.json", "metrics.json", "README.md", "model.onnx", "model/config.json",
                "model/model.safetensors", *(f"model/{n}" for n in TOKENIZER_FILES)]:
        assert key in keys, f"{key} missing from {keys}"
    stored = TrainerResult.model_validate(out.read_json("result.json"))
    assert stored.student.accuracy == result.student.accuracy
    assert stored.teacher_uri == f"s3://{bucket}/teachers/tiny-bert"

    # Nothing partial or temporary: every key is an artifact, the progress file, the teacher
    # output cache, or the one complete checkpoint a finished run keeps.
    allowed = re.compile(
        r"(result\.json|metrics\.json|README\.md|progress\.json|model\.onnx|model/[^/]+|\.distillery-output\.json"
        r"|cache/teacher-outputs-[0-9a-f]+\.safetensors|checkpoints/latest\.json"
        r"|checkpoints/step-\d{8}/(student\.safetensors|optimizer\.pt))")
    unexpected = [k for k in keys if not allowed.fullmatch(k)]
    assert not unexpected, f"unexpected objects under runs/tiny: {unexpected}"
    assert not [k for k in keys if "tmp" in k.lower() or k.endswith("/")]
    steps = {k.split("/")[1] for k in keys if k.startswith("checkpoints/step-")}
    assert len(steps) == 1, f"more than one checkpoint left: {sorted(steps)}"
    assert out.read_json("progress.json")["stage"] == "done"

    # The inputs are untouched and the bucket holds nothing outside inputs and runs/tiny.
    everything = set(store.list_keys())
    assert everything == inputs | {f"runs/tiny/{k}" for k in keys}
