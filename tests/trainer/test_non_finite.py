"""Non-finite values never pass (issue 10, part 5): a NaN loss stops training with a clear error
naming the epoch and step, NaN teacher outputs fail the run as invalid input, and no result.json
with NaN is ever written."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from distillery.api.job import Distillation, Task
from distillery.api.result import EXIT_INVALID
from distillery_trainer.builtin import BuiltinConfig, BuiltinNet
from distillery_trainer.checkpoint import Checkpoints, CheckpointState
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError, NonFiniteError
from distillery_trainer.nets import BuiltinWrapper
from distillery_trainer.progress import Progress
from distillery_trainer.teacher import TeacherOutputs
from distillery_trainer.training import TrainContext, epoch_order, train


class RecordingCheckpoints(Checkpoints):
    def __init__(self):
        super().__init__(store=None, fingerprint="test")
        self.saved: list[int] = []

    def save(self, state, student_state, optimizer_payload) -> None:
        self.saved.append(state.global_step)


def train_on(features: torch.Tensor, teacher_logits: torch.Tensor, **distillation):
    torch.manual_seed(0)
    net = BuiltinWrapper(BuiltinNet(BuiltinConfig(architecture="mlp", num_classes=3, hidden_size=8,
                                                  num_blocks=1, input_dim=4)), Task.TABULAR_CLASSIFICATION)
    data = Encoded({"features": features}, torch.randint(0, 3, (len(features),)))
    spec = Distillation(epochs=3, batch_size=8, **distillation)  # 5 steps per epoch over 40 rows
    checkpoints = RecordingCheckpoints()
    state = CheckpointState("test", [0], [], epoch=0, step_in_epoch=0, global_step=0)
    progress = Progress(show_bar=False)
    progress.stage("training")
    train(TrainContext(net, data, TeacherOutputs(teacher_logits, None), spec, Task.TABULAR_CLASSIFICATION,
                       torch.device("cpu"), checkpoints, state, progress))
    return checkpoints.saved


def test_a_nan_in_the_features_stops_training_at_the_step_it_reached():
    features = torch.randn(40, 4)
    features[17, 2] = float("nan")
    # Row 17 is trained on in the batch of epoch 1 that the seeded shuffle puts it in.
    position = int((epoch_order(40, 0, 0) == 17).nonzero())
    step = position // 8 + 1
    with pytest.raises(NonFiniteError) as caught:
        train_on(features, torch.randn(40, 3), seed=0, checkpointEverySteps=1)
    message = str(caught.value)
    assert message.startswith(f"training loss became NaN at epoch 1 step {step};")
    assert "learning rate" in message and "NaN/inf" in message
    assert isinstance(caught.value, InputError)  # the entry point maps it to exit 2


def test_no_checkpoint_is_written_after_the_loss_went_bad():
    features = torch.randn(40, 4)
    features[:, 0] = float("inf")  # every batch: the first step is already bad
    saved: list[int] = []
    with pytest.raises(NonFiniteError, match="at epoch 1 step 1;"):
        saved = train_on(features, torch.randn(40, 3), checkpointEverySteps=1)
    assert saved == []


def test_finite_training_is_untouched():
    assert train_on(torch.randn(40, 4), torch.randn(40, 3), checkpointEverySteps=5) == [5, 10, 15]


def test_a_teacher_with_nan_outputs_fails_as_invalid_input_without_a_result(digits_workspace, digits_job, tmp_path,
                                                                            capsys):
    from distillery_trainer.entrypoint import run_job

    teacher = tmp_path / "nan-teacher"
    shutil.copytree(digits_workspace / "teacher", teacher)
    tensors = load_file(teacher / "model.safetensors")
    # Finite weights (NaN weights are refused when loading) whose activations overflow to inf,
    # which the next LayerNorm turns into NaN.
    tensors["stem.0.weight"].fill_(1e38)
    save_file(tensors, teacher / "model.safetensors")
    job, out = digits_job(teacher={"uri": f"file://{teacher}"}, distillation={"epochs": 1})
    code, result = run_job(job, show_bar=False)
    err = capsys.readouterr().err
    assert code == EXIT_INVALID and result is None
    assert "the teacher's outputs on the train split are NaN or infinite (first at row 1)" in err
    assert not (out / "result.json").exists()
    assert not list(out.rglob("teacher-outputs-*")), "NaN outputs are not cached"
