"""Layer selection: sizes, the fixed methods, and importance on a model whose blocks we know."""

import pytest
import torch

from distillery.api.job import ImportanceMetric, Student
from distillery_trainer import extraction
from distillery_trainer.builtin import BuiltinConfig, BuiltinNet
from distillery_trainer.errors import InputError
from distillery_trainer.nets import BuiltinWrapper


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


@pytest.mark.parametrize("metric", list(ImportanceMetric))
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
