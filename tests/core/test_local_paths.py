"""Relative paths in a job file are resolved against its folder; s3:// and absolute paths stay."""

from pathlib import Path

from distillery.api import load_job
from distillery.local_paths import resolve_local_uris


def test_relative_paths_resolve_against_the_job_folder(tmp_path: Path):
    job = load_job({
        "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "x"},
        "spec": {"teacher": {"uri": "file://store/teacher"},
                 "dataset": {"trainUri": "data/train.jsonl", "evalUri": "s3://bucket/eval.jsonl"},
                 "output": {"uri": "file:///abs/out", "cacheUri": "cache"}},
    })
    spec = resolve_local_uris(job, tmp_path).spec
    assert spec.teacher.uri == f"file://{tmp_path / 'store' / 'teacher'}"
    assert spec.dataset.train_uri == f"file://{tmp_path / 'data' / 'train.jsonl'}"
    assert spec.dataset.eval_uri == "s3://bucket/eval.jsonl"
    assert spec.output.uri == "file:///abs/out"
    assert spec.output.cache_uri == f"file://{tmp_path / 'cache'}"
    assert job.spec.output.cache_uri == "cache", "the loaded job itself is not changed"


def test_tilde_is_the_home_folder_not_a_folder_named_tilde(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    job = load_job({
        "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "x"},
        "spec": {"teacher": {"uri": "~/models/teacher"},
                 "dataset": {"trainUri": "file://~/data/train.jsonl", "evalUri": "data/eval.jsonl"},
                 "output": {"uri": "~/out"}},
    })
    spec = resolve_local_uris(job, tmp_path / "jobs").spec
    assert spec.teacher.uri == f"file://{tmp_path / 'home' / 'models' / 'teacher'}"
    assert spec.dataset.train_uri == f"file://{tmp_path / 'home' / 'data' / 'train.jsonl'}"
    assert spec.dataset.eval_uri == f"file://{tmp_path / 'jobs' / 'data' / 'eval.jsonl'}"
    assert spec.output.uri == f"file://{tmp_path / 'home' / 'out'}"
    assert "~" not in spec.output.uri
