"""What a run reads back from a store is verified before it is believed (issue 10, parts 4 and 5):
a poisoned teacher-output cache entry, a forged result.json, swapped teacher weights or eval
labels at the same paths, and a damaged checkpoint each get caught."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from distillery.api.result import EXIT_REJECTED, TrainerResult
from distillery_trainer import teacher_cache
from distillery_trainer.pipeline import run
from distillery_trainer.progress import Progress


def quiet():
    return Progress(show_bar=False)


@pytest.fixture
def private_workspace(digits_workspace, tmp_path):
    """A copy of the digits teacher and data this test may change in place."""
    ws = tmp_path / "ws"
    shutil.copytree(digits_workspace, ws)
    return ws


def job_on(ws, out, **overrides):
    from distillery.api import load_job
    from tests.digits import digits_job_document

    return load_job(digits_job_document(ws, out, **overrides))


# ----------------------------------------------------------------------------- the cache


def rewrite_entry(path, change) -> None:
    """Rewrites a cache entry with changed tensors and a freshly computed, valid hash."""
    data = path.read_bytes()
    key = teacher_cache._metadata(data)["key"]
    train, evals = teacher_cache.decode_entry(data, key, *rows_of(data))
    path.write_bytes(teacher_cache.encode_entry(key, change(train), change(evals)))


def rows_of(data: bytes) -> tuple[int, int]:
    from safetensors.torch import load

    tensors = load(data)
    return tensors["train.logits"].shape[0], tensors["eval.logits"].shape[0]


def test_a_poisoned_cache_entry_with_a_valid_hash_is_caught_and_recomputed(digits_job, tmp_path, capsys):
    cache = tmp_path / "shared-cache"
    first, _ = digits_job("a", distillation={"epochs": 0}, output={"cacheUri": f"file://{cache}"})
    honest = run(first, progress=quiet())
    [entry] = cache.glob("teacher-outputs-*.safetensors")
    original = entry.read_bytes()

    from distillery_trainer.outputs import TeacherOutputs

    # Logits rolled by one class: every prediction names the next class.
    rewrite_entry(entry, lambda out: TeacherOutputs(torch.roll(out.logits, 1, dims=1), out.pooled))
    assert teacher_cache.decode_entry(entry.read_bytes(), teacher_cache._metadata(original)["key"],
                                      *rows_of(original)), "the poisoned entry passes the hash check"
    capsys.readouterr()

    second, _ = digits_job("b", distillation={"epochs": 0}, output={"cacheUri": f"file://{cache}"})
    result = run(second, progress=quiet())
    err = capsys.readouterr().err
    assert "ignoring cached teacher outputs" in err and "disagrees with the teacher" in err
    assert result.teacher.accuracy == honest.teacher.accuracy > 0.9
    # Overwritten with the teacher's real outputs (compared as tensors: safetensors does not keep
    # the metadata's order, so the bytes may differ).
    key, rows = teacher_cache._metadata(original)["key"], rows_of(original)
    rewritten, honest_outputs = (teacher_cache.decode_entry(blob, key, *rows) for blob in (entry.read_bytes(), original))
    for new, old in zip(rewritten, honest_outputs, strict=True):
        assert torch.equal(new.logits, old.logits) and torch.equal(new.pooled, old.pooled)


def test_cache_entries_are_checked_before_their_tensors_are_used():
    from distillery_trainer.outputs import TeacherOutputs

    good = TeacherOutputs(torch.randn(5, 3), torch.randn(5, 4))
    evals = TeacherOutputs(torch.randn(2, 3), torch.randn(2, 4))
    data = teacher_cache.encode_entry("k1", good, evals)
    train, _ = teacher_cache.decode_entry(data, "k1", 5, 2)
    assert torch.equal(train.logits, good.logits)

    def refused(blob, key="k1", rows=(5, 2)):
        with pytest.raises(teacher_cache.BadCacheEntry) as caught:
            teacher_cache.decode_entry(blob, key, *rows)
        return str(caught.value)

    assert "another format or key" in refused(data, key="k2")
    assert "row per train example" in refused(data, rows=(6, 2))
    tampered = bytearray(data)
    tampered[-1] ^= 0xFF  # one byte of the last tensor, hash left as it was
    assert "content hash" in refused(bytes(tampered))
    assert "not finite" in refused(teacher_cache.encode_entry(
        "k1", TeacherOutputs(torch.full((5, 3), float("nan")), None), evals))
    assert refused(b"not a safetensors file")


def test_the_spot_check_tolerates_rounding_but_not_a_shuffle():
    fresh = torch.randn(8, 10) * 5
    assert teacher_cache.rows_agree(fresh + 1e-3 * torch.randn(8, 10), fresh)
    assert teacher_cache.rows_agree(fresh.bfloat16().float(), fresh)  # what bf16 on a GPU gives
    assert not teacher_cache.rows_agree(torch.roll(fresh, 1, dims=1), fresh)
    assert not teacher_cache.rows_agree(fresh[:, :9], fresh)
    rows = teacher_cache.sample_rows(100)
    assert len(rows) == 8 == len(set(rows.tolist())) and int(rows.max()) < 100


# ----------------------------------------------------------------------------- result.json


def forge(out, **changes) -> dict:
    path = out / "result.json"
    doc = json.loads(path.read_text())
    for dotted, value in changes.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node[name]
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path.write_text(json.dumps(doc))
    return doc


def test_a_forged_result_with_the_right_spec_hash_is_not_reused(digits_job, capsys):
    job, out = digits_job(distillation={"epochs": 0})
    honest = run(job, progress=quiet())
    # What a forger who knows only the spec hash writes: 1000x, accepted, no input digests.
    forge(out, speedup=1000.0, paretoScore=1000.0, **{"decision.accepted": True, "student.latencyP50Ms": 0.001,
                                                      "inputs": None, "completionTime": "2000-01-01T00:00:00+00:00"})
    capsys.readouterr()
    again = run(job, progress=quiet())
    assert "not reusing" in capsys.readouterr().err
    assert again.completion_time != "2000-01-01T00:00:00+00:00", "the run was done again"
    assert again.speedup < 100 and again.student.accuracy == honest.student.accuracy
    stored = TrainerResult.model_validate(json.loads((out / "result.json").read_text()))
    assert stored.inputs == honest.inputs


def test_a_stored_verdict_is_recomputed_from_the_measured_numbers(digits_job, capsys):
    from distillery_trainer.entrypoint import run_job

    job, out = digits_job(distillation={"epochs": 0}, targets={"minAccuracy": 0.999})
    honest = run(job, progress=quiet())
    assert not honest.decision.accepted
    # Same spec, same input digests; only the decision says accepted.
    forge(out, **{"decision.accepted": True, "decision.reasons": ["all targets met"]})
    capsys.readouterr()
    code, reused = run_job(job, show_bar=False)
    err = capsys.readouterr().err
    assert "already finished" in err and "does not follow from its measured numbers" in err
    assert reused.completion_time == honest.completion_time, "reused, not rerun"
    assert code == EXIT_REJECTED and not reused.decision.accepted
    assert any("minAccuracy" in reason for reason in reused.decision.reasons)


def test_a_result_with_non_finite_numbers_is_refused_and_never_written():
    doc = {"job": "j", "task": "tabular-classification", "hardware": "cpu", "fingerprint": "f", "specHash": "s",
           "teacherUri": "file:///t", "teacher": {"accuracy": 0.9, "latencyP50Ms": 1.0},
           "student": {"accuracy": float("nan"), "latencyP50Ms": 0.5}, "speedup": 2.0, "accuracyRetention": 1.0,
           "compressionRatio": 2.0, "paretoScore": 2.0, "decision": {"accepted": True}, "artifacts": {},
           "startTime": "t", "completionTime": "t"}
    doc["variants"] = [{"name": "fp32", "metrics": doc["student"], "accepted": True}]
    with pytest.raises(ValueError, match="student.accuracy"):
        TrainerResult.model_validate(doc)
    doc["student"]["accuracy"] = 0.8
    doc["training"] = {"epochs": 1, "steps": 1, "seconds": 1.0, "device": "cpu", "history": [{"loss": float("inf")}]}
    with pytest.raises(ValueError, match="training.history"):
        TrainerResult.model_validate(doc)
    del doc["training"]
    text = TrainerResult.model_validate(doc).to_json()
    assert "NaN" not in text and json.loads(text)["student"]["accuracy"] == 0.8


# ----------------------------------------------------------------------------- changed inputs


def test_swapped_teacher_weights_at_the_same_path_run_again(private_workspace, tmp_path, capsys):
    out = tmp_path / "out"
    job = job_on(private_workspace, out, distillation={"epochs": 0})
    first = run(job, progress=quiet())
    weights = private_workspace / "teacher" / "model.safetensors"
    tensors = load_file(weights)
    save_file({name: torch.flip(t, dims=[0]) if t.dim() == 2 else t for name, t in tensors.items()}, weights)
    capsys.readouterr()
    second = run(job, progress=quiet())
    assert "computed from another teacher or other data" in capsys.readouterr().err
    assert second.completion_time != first.completion_time or second.inputs.teacher != first.inputs.teacher
    assert second.inputs.teacher != first.inputs.teacher
    assert second.teacher.accuracy < first.teacher.accuracy  # the new (scrambled) teacher was measured


def test_replaced_eval_labels_at_the_same_path_run_again(private_workspace, tmp_path):
    out = tmp_path / "out"
    job = job_on(private_workspace, out, distillation={"epochs": 0})
    first = run(job, progress=quiet())
    evals = private_workspace / "data" / "eval.npz"
    with np.load(evals) as data:
        x, y = data["x"], data["y"]
    np.savez(evals, x=x, y=(y + 1) % 10)
    second = run(job, progress=quiet())
    assert second.inputs.eval != first.inputs.eval and second.inputs.teacher == first.inputs.teacher
    assert second.teacher.accuracy < 0.2 < first.teacher.accuracy  # measured against the new labels


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("damage", ["garbage-weights", "wrong-shapes", "garbage-latest", "layers-out-of-range"])
def test_a_damaged_checkpoint_is_ignored_and_training_starts_over(digits_job, capsys, damage):
    job, out = digits_job(distillation={"epochs": 1})
    honest = run(job, progress=quiet())
    (out / "result.json").unlink()  # as if it had been interrupted after the last checkpoint
    latest = out / "checkpoints" / "latest.json"
    folder = out / json.loads(latest.read_text())["step"]
    if damage == "garbage-weights":
        (folder / "student.safetensors").write_bytes(b"\x00" * 64)
    elif damage == "wrong-shapes":
        tensors = load_file(folder / "student.safetensors")
        save_file({name: torch.zeros(3, *t.shape[1:]) for name, t in tensors.items()}, folder / "student.safetensors")
    elif damage == "garbage-latest":
        latest.write_text("{not json")
    else:
        doc = json.loads(latest.read_text())
        doc["state"]["layers"] = [0, 99]
        latest.write_text(json.dumps(doc))
    capsys.readouterr()
    again = run(job, progress=quiet())
    assert "training starts from scratch" in capsys.readouterr().err
    assert again.training.resumed_from_step is None
    assert again.student.accuracy == honest.student.accuracy  # seeded: the same student again


def test_a_checkpoint_trained_on_other_data_is_not_resumed(private_workspace, tmp_path, capsys):
    out = tmp_path / "out"
    job = job_on(private_workspace, out, distillation={"epochs": 1})
    run(job, progress=quiet())
    (out / "result.json").unlink()  # interrupted after its last checkpoint
    train_file = private_workspace / "data" / "train.npz"
    with np.load(train_file) as data:
        x, y = data["x"], data["y"]
    np.savez(train_file, x=x[::-1], y=y[::-1])  # same rows, another order: another encoded split
    capsys.readouterr()
    again = run(job, progress=quiet())
    assert "trained on another teacher or other data" in capsys.readouterr().err
    assert again.training.resumed_from_step is None
