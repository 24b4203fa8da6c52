"""The teacher-output cache is keyed by content, so jobs that differ only in the student share it."""

import shutil

import torch

from distillery_trainer.encode import Encoded
from distillery_trainer.pipeline import run
from distillery_trainer.progress import Progress
from distillery_trainer.teacher_cache import content_key, encoded_digest, file_tree_digest


def test_content_key_follows_teacher_files_and_encoded_data(digits_job, digits_workspace, tmp_path):
    job, _ = digits_job()
    data = Encoded({"features": torch.arange(12.0).reshape(3, 4)}, torch.tensor([0, 1, 2]))
    same = Encoded({"features": torch.arange(12.0).reshape(3, 4)}, torch.tensor([0, 1, 2]))
    relabelled = Encoded({"features": torch.arange(12.0).reshape(3, 4)}, torch.tensor([0, 2, 1]))
    teacher = digits_workspace / "teacher"
    key = content_key(job.spec, teacher, data, data)
    assert key == content_key(job.spec, teacher, same, same)
    assert key != content_key(job.spec, teacher, data, relabelled)
    assert encoded_digest(data) != encoded_digest(relabelled)

    edited = tmp_path / "teacher"
    shutil.copytree(teacher, edited)
    assert file_tree_digest(edited) == file_tree_digest(teacher)
    (edited / "config.json").write_text((edited / "config.json").read_text() + " ")
    assert content_key(job.spec, edited, data, data) != key


def test_jobs_with_different_students_share_one_teacher_pass(digits_job, tmp_path):
    cache = tmp_path / "shared-cache"
    quick = {"epochs": 1}
    first, first_out = digits_job("a", distillation=quick, output={"cacheUri": f"file://{cache}"})
    run(first, progress=Progress(show_bar=False))
    entries = list(cache.glob("teacher-outputs-*.safetensors"))
    assert len(entries) == 1
    written = entries[0].stat()

    second, second_out = digits_job("b", distillation=quick, student={"method": "uniform", "keepLayers": 3},
                                    output={"cacheUri": f"file://{cache}"})
    result = run(second, progress=Progress(show_bar=False))
    assert result.layers_kept == [0, 2, 5]
    assert list(cache.glob("teacher-outputs-*.safetensors")) == entries
    again = entries[0].stat()
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns), "reused, not rewritten"
    assert not (first_out / "cache").exists() and not (second_out / "cache").exists()


def test_without_cache_uri_the_cache_lives_under_the_output(digits_job):
    job, out = digits_job(distillation={"epochs": 0})
    run(job, progress=Progress(show_bar=False))
    assert len(list((out / "cache").glob("teacher-outputs-*.safetensors"))) == 1
