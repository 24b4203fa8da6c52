"""Incremental distillation: the EWC term by hand, and a student continued on new digits classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillery.api import load_job
from distillery_trainer.builtin import BuiltinConfig, BuiltinNet
from distillery_trainer.incremental import EwcPenalty, fisher_diagonal
from distillery_trainer.nets import BuiltinWrapper
from distillery_trainer.pipeline import run
from distillery_trainer.progress import Progress
from tests.digits import digits_job_document


def quiet() -> Progress:
    return Progress(show_bar=False)


# ----------------------------------------------------------------------------- by hand


def test_the_ewc_term_matches_a_hand_computation():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.copy_(torch.tensor([0.5]))
    anchor = {"weight": torch.tensor([[0.0, 1.0]]), "bias": torch.tensor([0.5])}
    fisher = {"weight": torch.tensor([[2.0, 3.0]]), "bias": torch.tensor([7.0])}
    # lambda/2 * (2 * (1 - 0)^2 + 3 * (2 - 1)^2 + 7 * 0^2) = 10/2 * 5 = 25
    assert EwcPenalty(10.0, anchor, fisher, rows=1)(model).item() == pytest.approx(25.0)


def test_the_fisher_is_the_mean_squared_gradient_of_each_rows_log_likelihood():
    torch.manual_seed(0)
    net = BuiltinWrapper(BuiltinNet(BuiltinConfig(architecture="mlp", num_classes=3, hidden_size=4, num_blocks=1,
                                                  input_dim=2)), "tabular-classification")
    x, y = torch.randn(3, 2), torch.tensor([0, 2, 1])
    fisher, rows = fisher_diagonal(net, [{"features": x, "labels": y}])
    assert rows == 3
    expected = {name: torch.zeros_like(p) for name, p in net.named_parameters()}
    for i in range(3):  # by hand: one row at a time, through torch.func-free plain autograd
        net.zero_grad()
        torch.log_softmax(net.model(x[i:i + 1]), -1)[0, y[i]].backward()
        for name, p in net.named_parameters():
            expected[name] += p.grad ** 2 / 3
    for name in expected:
        assert torch.allclose(fisher[name], expected[name], atol=1e-7), name


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def class_split(digits_workspace, tmp_path_factory):
    """Digits 0-4 (the old task) and 5-9 (the new one), each with train and eval files."""
    root = tmp_path_factory.mktemp("class-split")
    paths = {}
    for split in ("train", "eval"):
        with np.load(digits_workspace / "data" / f"{split}.npz") as d:
            x, y = d["x"], d["y"]
        for part, keep in (("old", y < 5), ("new", y >= 5)):
            paths[f"{part}-{split}"] = root / f"{part}-{split}.npz"
            np.savez(paths[f"{part}-{split}"], x=x[keep], y=y[keep])
    return paths


@pytest.fixture(scope="module")
def old_student(digits_workspace, class_split, tmp_path_factory):
    """A 2-block student distilled on the old classes only: the model incremental runs continue."""
    out = tmp_path_factory.mktemp("old-student")
    result = run(load_job(digits_job_document(
        digits_workspace, out, dataset={"trainUri": str(class_split["old-train"]),
                                        "evalUri": str(class_split["old-eval"])})), progress=quiet())
    assert result.student.accuracy > 0.9
    return out / "model"


def incremental_job(digits_workspace, class_split, old_student, out, **incremental):
    ewc = incremental.pop("ewc", None)
    doc = digits_job_document(
        digits_workspace, out,
        dataset={"trainUri": str(class_split["new-train"]), "evalUri": str(class_split["new-eval"])},
        student={"base": {"uri": str(old_student), "format": "torch"}, "keepRatio": 1.0},
        incremental={"previousTrainUri": str(class_split["old-train"]),
                     "previousEvalUri": str(class_split["old-eval"]), **incremental},
        distillation={"alpha": 0.0, **({"ewc": ewc} if ewc else {})})  # hard labels: forgetting shows
    doc["spec"]["student"].pop("keepLayers")
    return load_job(doc)


@pytest.fixture(scope="module")
def continued(digits_workspace, class_split, old_student, tmp_path_factory):
    root = tmp_path_factory.mktemp("continued")
    runs = {}
    for name, settings in (("plain", {}), ("replay", {"replayShare": 0.5}),
                           ("ewc", {"ewc": {"lambda": 1.0e6, "fisherBatches": 4}})):
        runs[name] = run(incremental_job(digits_workspace, class_split, old_student, root / name, **settings),
                         progress=quiet())
    return runs


def test_an_incremental_run_reports_what_it_kept_of_the_old_task(continued, old_student):
    plain = continued["plain"].incremental
    assert plain.parent == str(old_student)
    assert plain.previous_accuracy_before > 0.9  # the old student knew the old classes
    # The three are rounded to 6 decimals each, so they agree to 1.5e-6.
    assert plain.forgetting == pytest.approx(plain.previous_accuracy_before - plain.previous_accuracy_after,
                                             abs=2e-6)
    assert plain.replayed_rows == 0 and plain.ewc_lambda is None and plain.fisher_rows is None
    assert continued["plain"].inputs.previous  # the old data's digests take part in "already finished"
    for name, result in continued.items():
        assert result.incremental.previous_accuracy_before == plain.previous_accuracy_before, name
        assert result.student.accuracy > 0.8, (name, result.student.accuracy)  # it learned the new classes


def test_replay_and_ewc_forget_less_than_plain_healing(continued, class_split):
    plain, replay, ewc = (continued[n].incremental for n in ("plain", "replay", "ewc"))
    print(f"old-eval accuracy after: plain {plain.previous_accuracy_after:.3f}, replay "
          f"{replay.previous_accuracy_after:.3f}, ewc {ewc.previous_accuracy_after:.3f} "
          f"(before {plain.previous_accuracy_before:.3f})")
    # Measured: plain 0.46, replay 0.99, EWC (lambda 1e6) 0.90 of the old classes kept, from 1.00.
    assert plain.forgetting > 0.3  # on hard labels of new classes only, the old ones are mostly lost
    with np.load(class_split["new-train"]) as d:
        assert replay.replayed_rows == round(0.5 * len(d["y"]))
    assert replay.forgetting < plain.forgetting - 0.2
    assert ewc.fisher_rows == 64 and ewc.ewc_lambda == 1.0e6
    assert ewc.forgetting < plain.forgetting - 0.2


def test_incremental_takes_student_base_whole(digits_workspace, class_split, old_student, tmp_path):
    from distillery.api.load import SpecError

    doc = incremental_job(digits_workspace, class_split, old_student, tmp_path / "out").model_dump(
        mode="json", by_alias=True, exclude_none=True)
    doc["spec"]["student"]["keepRatio"] = 0.5
    with pytest.raises(SpecError, match="incremental continues student.base whole"):
        load_job(doc)
    doc["spec"]["student"].update(keepRatio=1.0, vocabulary={"prune": True})
    with pytest.raises(SpecError, match="no student.width or student.vocabulary"):
        load_job(doc)


def test_a_student_model_named_as_base_is_read_from_what_the_operator_resolved(
        digits_workspace, class_split, old_student, tmp_path, monkeypatch):
    """In a cluster student.base.studentModel reaches the trainer as the StudentModel's weights URI
    (DISTILLERY_STUDENT_BASE_URI, set by the operator); without it the run is refused (exit 2)."""
    from distillery.api.job import STUDENT_BASE_URI_ENV
    from distillery_trainer.errors import InputError

    doc = incremental_job(digits_workspace, class_split, old_student, tmp_path / "out").model_dump(
        mode="json", by_alias=True, exclude_none=True)
    doc["spec"]["student"]["base"] = {"studentModel": "digits-old-g1", "format": "torch"}
    doc["spec"]["distillation"]["epochs"] = 1
    monkeypatch.delenv(STUDENT_BASE_URI_ENV, raising=False)
    with pytest.raises(InputError, match="student.base.studentModel: 'digits-old-g1' names a StudentModel"):
        run(load_job(doc), progress=quiet())
    monkeypatch.setenv(STUDENT_BASE_URI_ENV, str(old_student))
    result = run(load_job(doc), progress=quiet())
    assert result.incremental.parent == str(old_student)
    assert result.incremental.previous_accuracy_before > 0.9  # the parent's weights were loaded


def test_replayed_rows_stay_on_disk_and_come_after_the_new_ones(tmp_path):
    """Texts left in their JSONL files are read in turn (no copy in memory); features are copied a
    chunk at a time into a memory-mapped file."""
    import json

    from distillery_trainer.data import JoinedTextRows, Split, TextRows
    from distillery_trainer.loading import with_replay

    def text_split(name: str, texts: list[str]) -> Split:
        path = tmp_path / f"{name}.jsonl"
        lines = [json.dumps({"text": t}).encode() + b"\n" for t in texts]
        path.write_bytes(b"".join(lines))
        offsets = np.cumsum([0] + [len(line) for line in lines[:-1]]).astype(np.int64)
        return Split(name=name, text_rows=TextRows(path, offsets, "text"), raw_labels=list(range(len(texts))),
                     labels=np.arange(len(texts)))

    new, old = text_split("new", [f"new {i}" for i in range(5)]), text_split("old", [f"old {i}" for i in range(8)])
    joined, count = with_replay(new, old, 0.8, seed=3, work=tmp_path / "work")
    assert count == 4 and isinstance(joined.text_rows, JoinedTextRows) and joined.texts is None
    texts = [t for chunk in joined.text_chunks(3) for t in chunk]
    assert texts[:5] == [f"new {i}" for i in range(5)]
    picked = [int(t.split()[1]) for t in texts[5:]]
    assert len(texts) == 9 and picked == sorted(picked) and all(t.startswith("old ") for t in texts[5:])
    assert joined.labels.tolist() == list(range(5)) + picked  # each old row keeps its own label

    # A few rows read one at a time from either file (as the zero-shot prompts are chosen).
    by_row = joined.row_texts()
    assert len(by_row) == 9 and [by_row[i] for i in (0, 4, 5, 8, -1)] == [texts[i] for i in (0, 4, 5, 8, 8)]
    with pytest.raises(IndexError):
        by_row[9]
    with pytest.raises(TypeError):
        by_row[1:3]

    features = Split(name="new", features=np.arange(10.0).reshape(5, 2), raw_labels=[0] * 5, labels=np.zeros(5))
    olds = Split(name="old", features=-np.arange(16.0).reshape(8, 2), raw_labels=[1] * 8, labels=np.ones(8))
    joined, count = with_replay(features, olds, 0.4, seed=3, work=tmp_path / "work")
    assert isinstance(joined.features, np.memmap) and count == 2
    assert joined.features[:5].tolist() == features.features.tolist()
    assert all(row[0] <= 0 for row in joined.features[5:]) and joined.labels.tolist() == [0] * 5 + [1] * 2
