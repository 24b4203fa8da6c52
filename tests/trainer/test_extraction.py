"""Layer selection: sizes, the fixed methods, and importance on a model whose blocks we know."""

import pytest
import torch

from distillery.api.job import DistillationJob, ImportanceMetric, Student, Task
from distillery.api.load import load_job
from distillery_trainer import extraction
from distillery_trainer.builtin import BuiltinConfig, BuiltinNet
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.nets import BuiltinWrapper
from distillery_trainer.student import ablation_selection, select_layers


def test_target_size_from_keep_layers_ratio_and_default():
    assert extraction.target_size(Student(keep_layers=3), 6) == 3
    assert extraction.target_size(Student(keep_ratio=0.5), 6) == 3
    assert extraction.target_size(Student(keep_ratio=0.01), 6) == 1
    assert extraction.target_size(Student(), 6) == 3
    with pytest.raises(InputError, match="keepLayers: 8 is larger than the teacher's 6 layers"):
        extraction.target_size(Student(keep_layers=8), 6)


def test_uniform_first_and_top_k():
    assert extraction.uniform_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert extraction.uniform_layers(6, 3) == [0, 2, 5] or extraction.uniform_layers(6, 3) == [0, 3, 5]
    assert extraction.uniform_layers(4, 1) == [3]
    assert extraction.first_layers(6, 2) == [0, 1]
    assert extraction.top_k_layers([0.1, 0.9, 0.5, 0.9], 2) == [1, 3]


def test_explicit_layers_are_checked_against_the_teacher():
    assert extraction.check_explicit([3, 1], 4) == [1, 3]
    with pytest.raises(InputError, match=r"student.layers: \[5\] out of range"):
        extraction.check_explicit([1, 5], 4)


def test_weight_range_keeps_layers_inside_and_caps_by_rms():
    rms = [0.1, 0.5, 0.3, 2.0]
    assert extraction.weight_range_layers(rms, 0.2, 1.0, None) == [1, 2]
    assert extraction.weight_range_layers(rms, 0.0, 10.0, 2) == [1, 3]
    with pytest.raises(InputError, match="no layer has weight RMS"):
        extraction.weight_range_layers(rms, 5.0, 6.0, None)


@pytest.mark.parametrize("metric", [ImportanceMetric.BLOCK_INFLUENCE, ImportanceMetric.ANGULAR_DISTANCE])
def test_importance_ranks_an_identity_block_lowest(metric):
    torch.manual_seed(0)
    net = BuiltinNet(BuiltinConfig(architecture="mlp", num_classes=3, hidden_size=16, num_blocks=4, input_dim=8))
    with torch.no_grad():  # block 2 adds act(0) = 0: its output equals its input
        net.blocks[2].fc.weight.zero_()
        net.blocks[2].fc.bias.zero_()
    wrapped = BuiltinWrapper(net, None)
    x = torch.randn(32, 8)
    with torch.no_grad():
        _, hs = net(x, output_hidden_states=True)
    scores = [float(extraction.block_scores(hs[i], hs[i + 1], None, metric).mean()) for i in range(4)]
    # arccos near 1 amplifies float32 rounding, so "zero" is looser for angular distance.
    assert scores[2] == pytest.approx(0.0, abs=1e-3)
    assert all(s > 10 * scores[2] + 1e-4 for i, s in enumerate(scores) if i != 2)
    assert 2 not in extraction.top_k_layers(scores, 3)
    assert wrapped.with_layers([0, 1, 3]).num_layers() == 3


def test_text_block_scores_ignore_padding():
    inputs = torch.randn(2, 5, 8)
    outputs = inputs.clone()
    outputs[:, 3:] = -inputs[:, 3:]  # only padding positions change
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    scores = extraction.block_scores(inputs, outputs, mask, ImportanceMetric.BLOCK_INFLUENCE)
    assert torch.allclose(scores, torch.zeros(2), atol=1e-6)


def mlp_with_identity_block(identity: int, blocks: int = 5) -> BuiltinWrapper:
    torch.manual_seed(0)
    net = BuiltinNet(BuiltinConfig(architecture="mlp", num_classes=3, hidden_size=16, num_blocks=blocks, input_dim=8))
    with torch.no_grad():  # the block adds act(0) = 0: removing it changes nothing downstream
        net.blocks[identity].fc.weight.zero_()
        net.blocks[identity].fc.bias.zero_()
    return BuiltinWrapper(net, Task.TABULAR_CLASSIFICATION)


def small_job(**student) -> DistillationJob:
    return load_job({
        "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "t"},
        "spec": {"teacher": {"uri": "/t", "format": "torch", "task": "tabular-classification"},
                 "dataset": {"format": "npz", "trainUri": "/d.npz", "evalUri": "/e.npz"},
                 "student": {"method": "importance", **student},
                 "distillation": {"batchSize": 16}, "output": {"uri": "/o"}},
    })


def test_ablation_drops_the_block_whose_removal_changes_nothing_first():
    wrapped = mlp_with_identity_block(identity=1)
    data = Encoded({"features": torch.randn(64, 8)}, torch.randint(0, 3, (64,)))
    job = small_job(keepLayers=4)
    assert job.spec.student.importance_metric == ImportanceMetric.ABLATION  # the default
    kept, scores = select_layers(wrapped, data, job, torch.device("cpu"))
    assert kept == [0, 2, 3, 4]
    assert scores[1] == pytest.approx(0.0, abs=1e-6)
    assert all(s > 1e-4 for i, s in enumerate(scores) if i != 1)
    # Scoring runs on the net itself and must leave it whole.
    assert wrapped.num_layers() == 5 and wrapped.model.config.num_blocks == 5


def test_ablation_is_greedy_and_stops_at_the_target_size():
    wrapped = mlp_with_identity_block(identity=3)
    data = Encoded({"features": torch.randn(40, 8)}, None)
    kept, scores = ablation_selection(wrapped, data, small_job(keepLayers=2), torch.device("cpu"), 2)
    assert len(kept) == 2 and 3 not in kept and kept == sorted(kept)
    assert len(scores) == 5


def test_keep_first_and_last_holds_for_an_encoder_too():
    # Block 0 is a no-op, so ablation drops it first unless the ends are protected.
    wrapped = mlp_with_identity_block(identity=0)
    data = Encoded({"features": torch.randn(64, 8)}, torch.randint(0, 3, (64,)))
    free, _ = select_layers(wrapped, data, small_job(keepLayers=3), torch.device("cpu"))
    anchored, scores = select_layers(wrapped, data, small_job(keepLayers=3, keepFirstAndLast=True), torch.device("cpu"))
    assert 0 not in free
    assert anchored[0] == 0 and anchored[-1] == 4 and len(anchored) == 3
    assert scores[0] == pytest.approx(0.0, abs=1e-6)  # scored like the others, only never dropped
    influence, _ = select_layers(wrapped, data, small_job(keepLayers=3, keepFirstAndLast=True,
                                                          importanceMetric="block-influence"), torch.device("cpu"))
    assert influence[0] == 0 and influence[-1] == 4


def test_keep_first_and_last_needs_two_layers():
    wrapped = mlp_with_identity_block(identity=0)
    data = Encoded({"features": torch.randn(16, 8)}, None)
    with pytest.raises(InputError, match="student.keepLayers.*keepFirstAndLast"):
        select_layers(wrapped, data, small_job(keepLayers=1, keepFirstAndLast=True), torch.device("cpu"))
    assert select_layers(wrapped, data, small_job(keepLayers=1), torch.device("cpu"))[0] != [0]


def test_only_layers_runs_a_subset_and_restores_the_net():
    wrapped = mlp_with_identity_block(identity=2)
    x = {"features": torch.randn(4, 8)}
    with torch.no_grad():
        full = wrapped.outputs(x).logits
        with wrapped.only_layers([0, 1, 3, 4]) as cut:
            assert cut.num_layers() == 4
            without_identity = cut.outputs(x).logits
        with wrapped.only_layers([0]):
            assert not torch.allclose(wrapped.outputs(x).logits, full)
        assert torch.allclose(without_identity, full, atol=1e-6)  # block 2 was a no-op
        assert torch.equal(wrapped.outputs(x).logits, full)
    assert wrapped.num_layers() == 5
