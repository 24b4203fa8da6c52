"""The output folder's ownership rules, on a local folder and on S3 (MinIO): the marker lists
what Distillery wrote, deletes touch only those keys, a folder that is not ours is refused, and a
local folder is locked while a run uses it."""

from __future__ import annotations

import json

import pytest

from distillery.api import load_job
from distillery.store import open_store
from distillery_trainer.errors import InputError
from distillery_trainer.output_dir import LOCK, MARKER, open_output


def job_with_output(uri: str):
    return load_job({"apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "o"},
                     "spec": {"teacher": {"uri": "/t"}, "dataset": {"trainUri": "/a", "evalUri": "/b"},
                              "output": {"uri": uri}}})


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.minio)])
def output_uri(request, tmp_path):
    if request.param == "file":
        return str(tmp_path / "out")
    bucket = request.getfixturevalue("s3_env")
    return f"s3://{bucket}/runs/out"


def marker_files(store) -> set[str]:
    return set(json.loads(store.read_bytes(MARKER))["files"])


def test_writes_are_listed_and_deletes_touch_only_our_files(output_uri):
    job = job_with_output(output_uri)
    with open_output(job) as store:
        store.write_json("checkpoints/latest.json", {"step": 1})
        store.write_bytes("checkpoints/step-00000001/student.safetensors", b"ours")
        store.write_bytes("cache/teacher-outputs-x.safetensors", b"ours")
        store.write_text("progress.json", "{}")
    raw = open_store(output_uri)
    assert marker_files(raw) == {"checkpoints/latest.json", "checkpoints/step-00000001/student.safetensors",
                                 "cache/teacher-outputs-x.safetensors", "progress.json"}
    raw.write_text("checkpoints/user-notes.txt", "the user's")
    raw.write_text("cache/user-file.bin", "the user's")

    with open_output(job) as store:  # ours: reopening is fine, user files beside ours included
        store.delete_prefix("checkpoints/")
        store.delete_prefix("cache/")
        store.delete("checkpoints/user-notes.txt")
    assert raw.read_text("checkpoints/user-notes.txt") == "the user's"
    assert raw.read_text("cache/user-file.bin") == "the user's"
    assert not raw.exists("checkpoints/latest.json") and not raw.exists("cache/teacher-outputs-x.safetensors")
    assert raw.list_keys("checkpoints/step-00000001") == []
    assert marker_files(raw) == {"progress.json"}
    folder = raw.local_path("")
    if folder is not None:  # local: the emptied folders of ours are gone, a user's folder stays
        assert not (folder / "checkpoints").exists() or (folder / "checkpoints" / "user-notes.txt").exists()
        assert sorted(p.name for p in folder.iterdir()) == sorted([".distillery-output.json", ".distillery-output.lock",
                                                                  "cache", "checkpoints", "progress.json"])


def test_a_new_result_removes_our_stale_student_files_only(output_uri):
    job = job_with_output(output_uri)
    with open_output(job) as store:
        for key in ("model/config.json", "model/model.safetensors", "model.onnx", "model.int8.onnx", "result.json"):
            store.write_text(key, "first run")
    raw = open_store(output_uri)
    with open_output(job) as store:
        store.write_text("model/config.json", "second run")
        store.write_text("model.onnx", "second run")
        store.write_text("result.json", "second run")
    assert raw.read_text("model/config.json") == "second run"
    assert not raw.exists("model/model.safetensors") and not raw.exists("model.int8.onnx")
    assert marker_files(raw) == {"model/config.json", "model.onnx", "result.json"}
    # The student folder is Distillery's: a user's file put inside it is refused, not mixed in.
    raw.write_text("model/user-notes.md", "the user's")
    with pytest.raises(InputError, match="holds model/user-notes.md not written by Distillery"):
        open_output(job)
    assert raw.read_text("model/user-notes.md") == "the user's"


def test_a_folder_that_is_not_ours_is_refused_unless_allowed(output_uri):
    raw = open_store(output_uri)
    raw.write_text("data/notes.txt", "the user's")
    job = job_with_output(output_uri)
    with pytest.raises(InputError, match="not empty and was not created by Distillery"):
        open_output(job)
    assert raw.list_keys("") == ["data/notes.txt"], "a refused folder is left as it was"
    with open_output(job, allow_nonempty=True) as store:
        store.write_text("result.json", "{}")
    assert marker_files(raw) == {"result.json"}
    assert raw.read_text("data/notes.txt") == "the user's"


def test_a_users_file_at_one_of_our_names_is_refused_even_when_allowed(output_uri):
    raw = open_store(output_uri)
    raw.write_text("README.md", "the user's")
    with pytest.raises(InputError, match="holds README.md not written by Distillery"):
        open_output(job_with_output(output_uri), allow_nonempty=True)
    assert raw.read_text("README.md") == "the user's"


def test_a_local_output_is_locked_while_a_run_uses_it(tmp_path):
    import os

    job = job_with_output(str(tmp_path / "out"))
    with open_output(job):
        assert (tmp_path / "out" / LOCK).read_text().strip() == str(os.getpid())
        with pytest.raises(InputError, match=rf"is in use by another run \(pid {os.getpid()}\)"):
            open_output(job)
    with open_output(job):  # released when the first run ended
        pass


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(InputError, match="is a file, not a folder"):
        open_output(job_with_output(str(tmp_path / "out")))
