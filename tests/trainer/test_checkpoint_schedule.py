"""When the healing loop writes checkpoints: by wall time (default), every N steps, and at the end."""

import pytest
import torch

from distillery.api.job import Distillation, Task
from distillery_trainer.builtin import BuiltinConfig, BuiltinNet
from distillery_trainer.checkpoint import Checkpoints, CheckpointState
from distillery_trainer.encode import Encoded
from distillery_trainer.nets import BuiltinWrapper
from distillery_trainer.progress import Progress
from distillery_trainer.teacher import TeacherOutputs
from distillery_trainer.training import TrainContext, train


class CountingCheckpoints(Checkpoints):
    def __init__(self):
        super().__init__(store=None, fingerprint="test")
        self.steps: list[int] = []

    def save(self, state, student_state, optimizer_payload) -> None:
        self.steps.append(state.global_step)


def run_schedule(**distillation) -> list[int]:
    torch.manual_seed(0)
    net = BuiltinWrapper(BuiltinNet(BuiltinConfig(architecture="mlp", num_classes=3, hidden_size=8,
                                                  num_blocks=1, input_dim=4)), Task.TABULAR_CLASSIFICATION)
    data = Encoded({"features": torch.randn(40, 4)}, torch.randint(0, 3, (40,)))
    teacher = TeacherOutputs(torch.randn(40, 3), None)
    spec = Distillation(epochs=3, batch_size=8, **distillation)  # 5 steps per epoch
    checkpoints = CountingCheckpoints()
    state = CheckpointState("test", [0], [], epoch=0, step_in_epoch=0, global_step=0)
    progress = Progress(show_bar=False)
    progress.stage("training")  # as the pipeline does before train()
    train(TrainContext(net, data, teacher, spec, Task.TABULAR_CLASSIFICATION, torch.device("cpu"),
                       checkpoints, state, progress))
    return checkpoints.steps


def test_by_default_only_the_end_is_written_when_the_run_is_short():
    assert run_schedule() == [15]


def test_every_n_steps_and_the_end():
    assert run_schedule(checkpointEverySteps=4) == [4, 8, 12, 15]


def test_a_short_interval_writes_after_every_step_and_epoch():
    steps = run_schedule(checkpointEverySeconds=1e-9)
    assert steps == list(range(1, 16))


def test_interval_must_be_positive():
    with pytest.raises(ValueError):
        Distillation(checkpointEverySeconds=0)
