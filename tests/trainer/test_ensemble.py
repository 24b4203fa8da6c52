"""Multi-teacher ensembles: the mixture of soft labels, and runs on the digits teachers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillery.api import load_job
from distillery_trainer.builtin import BuiltinConfig, BuiltinNet, load_builtin, save_builtin
from distillery_trainer.ensemble import mix, mix_logits, mix_pooled
from distillery_trainer.errors import InputError
from distillery_trainer.outputs import TeacherOutputs
from distillery_trainer.pipeline import run
from distillery_trainer.progress import Progress
from tests.digits import digits_job_document, train_mlp_teacher

T = 4.0


def quiet() -> Progress:
    return Progress(show_bar=False)


# ----------------------------------------------------------------------------- the mixture


def test_two_identical_teachers_give_the_teachers_own_distribution():
    z = torch.randn(5, 7) * 3
    mixed = mix_logits([z, z.clone()], [1.0, 2.0], T)
    assert torch.allclose(torch.softmax(mixed / T, -1), torch.softmax(z / T, -1), atol=1e-6)


def test_the_mixture_is_the_weighted_average_of_the_distributions():
    z1, z2 = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[-1.0, 3.0, 0.5]])
    # By hand: p = 0.25 softmax(z1 / T) + 0.75 softmax(z2 / T).
    expected = 0.25 * torch.softmax(z1 / T, -1) + 0.75 * torch.softmax(z2 / T, -1)
    mixed = mix_logits([z1, z2], [1.0, 3.0], T)
    assert torch.allclose(torch.softmax(mixed / T, -1), expected, atol=1e-6)
    # Averaging the logits instead would give another distribution: the test tells them apart.
    assert not torch.allclose(torch.softmax((0.25 * z1 + 0.75 * z2) / T, -1), expected, atol=1e-3)


def test_embeddings_mix_by_direction_not_by_norm():
    a, b = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 0.1]])
    assert torch.allclose(mix_pooled([a, b], [1.0, 1.0]), torch.tensor([[0.5, 0.5]]))


def test_mix_keeps_the_rows_and_refuses_outputs_of_other_rows():
    one = TeacherOutputs(logits=torch.randn(4, 3), pooled=None)
    assert mix([one, one], [1.0, 1.0], T).logits.shape == (4, 3)
    with pytest.raises(ValueError, match="different rows"):
        mix([one, TeacherOutputs(logits=torch.randn(3, 3), pooled=None)], [1.0, 1.0], T)


def test_a_split_is_mixed_a_chunk_at_a_time_into_memory_mapped_files(tmp_path, monkeypatch):
    """Chunked (3 rows at a time over 10) and written to disk: the same mixture as all at once."""
    import distillery_trainer.ensemble as ensemble

    teachers = [TeacherOutputs(logits=torch.randn(10, 4), pooled=torch.randn(10, 6)) for _ in range(2)]
    whole = mix(teachers, [1.0, 3.0], T)
    monkeypatch.setattr(ensemble, "MIX_ROWS", 3)
    on_disk = mix(teachers, [1.0, 3.0], T, tmp_path / "mixture")
    assert torch.equal(on_disk.logits, whole.logits) and torch.equal(on_disk.pooled, whole.pooled)
    assert np.array_equal(np.load(tmp_path / "mixture" / "logits.npy", mmap_mode="r"), whole.logits.numpy())


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def weaker_teacher(digits_workspace, tmp_path_factory):
    """A second digits teacher: 3 blocks, 4 epochs, so measurably unlike the fixture's."""
    with np.load(digits_workspace / "data" / "train.npz") as d:
        net = train_mlp_teacher(d["x"], d["y"], blocks=3, epochs=4)
    path = tmp_path_factory.mktemp("weaker") / "teacher"
    save_builtin(net, path)
    with np.load(digits_workspace / "data" / "eval.npz") as d, torch.no_grad():
        accuracy = float((net(torch.from_numpy(d["x"])).argmax(1).numpy() == d["y"]).mean())
    return path, accuracy


def ensemble_of(*members) -> dict:
    return {"teacherWeight": 1.0, "teachers": [{"uri": f"file://{path}", "format": "torch", "weight": weight}
                                               for path, weight in members]}


def test_an_ensemble_of_the_teacher_with_itself_trains_the_same_student(digits_workspace, tmp_path):
    alone = run(load_job(digits_job_document(digits_workspace, tmp_path / "alone")), progress=quiet())
    twice = run(load_job(digits_job_document(digits_workspace, tmp_path / "twice",
                                             ensemble=ensemble_of((digits_workspace / "teacher", 1.0)))),
                progress=quiet())
    assert twice.student.accuracy == pytest.approx(alone.student.accuracy, abs=1 / 397)  # one eval row
    losses = [h["loss"] for h in alone.training.history]
    assert [h["loss"] for h in twice.training.history] == pytest.approx(losses, rel=1e-3)
    [first, second] = twice.ensemble.members
    assert first.accuracy == second.accuracy == twice.ensemble.accuracy == twice.teacher.accuracy
    assert first.weight == second.weight == 0.5


def test_an_ensemble_reports_each_teacher_and_the_mixture(digits_workspace, weaker_teacher, tmp_path):
    path, weaker_accuracy = weaker_teacher
    out = tmp_path / "out"
    result = run(load_job(digits_job_document(digits_workspace, out, ensemble=ensemble_of((path, 3.0)))),
                 progress=quiet())
    teacher, member = result.ensemble.members
    assert teacher.uri == f"file://{digits_workspace / 'teacher'}" and teacher.weight == 0.25
    assert member.uri == f"file://{path}" and member.weight == 0.75
    assert teacher.accuracy == result.teacher.accuracy  # the teacher alone stays the baseline
    assert member.accuracy == pytest.approx(weaker_accuracy, abs=1e-6)  # measured, as the test did
    # The mixture's accuracy, by hand: argmax of 0.25 softmax(z_teacher / T) + 0.75 softmax(z_member / T).
    with np.load(digits_workspace / "data" / "eval.npz") as d, torch.no_grad():
        x, y = torch.from_numpy(d["x"]), d["y"]
        p = 0.25 * torch.softmax(load_builtin(digits_workspace / "teacher")(x) / T, -1) \
            + 0.75 * torch.softmax(load_builtin(path)(x) / T, -1)
    assert result.ensemble.accuracy == pytest.approx(float((p.argmax(1).numpy() == y).mean()), abs=1e-6)
    assert len(result.inputs.ensemble) == 1  # the member's files take part in "already finished"
    assert len(list((out / "cache").glob("teacher-outputs-*.safetensors"))) == 2  # one entry per teacher
    card = (out / "README.md").read_text()
    assert "the mixture" in card and str(path) in card


def test_a_member_with_other_classes_is_refused_before_the_teacher_pass(digits_workspace, tmp_path):
    # Only its config matters here: the check reads it before any teacher runs.
    five = tmp_path / "five-classes"
    save_builtin(BuiltinNet(BuiltinConfig(architecture="mlp", num_classes=5, hidden_size=16, num_blocks=2,
                                          input_dim=64)), five)
    job = load_job(digits_job_document(digits_workspace, tmp_path / "out", ensemble=ensemble_of((five, 1.0))))
    with pytest.raises(InputError, match=r"ensemble\.teachers\[0\]\.uri: it predicts 5 classes"):
        run(job, progress=quiet())
    assert not (tmp_path / "out" / "cache").exists()  # refused before any teacher ran
