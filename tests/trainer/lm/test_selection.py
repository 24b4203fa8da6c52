"""Decoder layer selection on tiny models whose answer is known: layers made into identities
(zeroed output projections) must be the ones dropped, and the ends stay protected."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from distillery.api.job import Student
from distillery_trainer import extraction
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.lm.model import CausalLMNet
from distillery_trainer.lm.selection import (
    allowed_starts,
    angular_distance,
    block_distances,
    calibration_batches,
    select_decoder_layers,
)
from tests.trainer.lm.conftest import save_decoder, tiny_gpt2, tiny_llama


def make_identity(net: CausalLMNet, layer: int) -> None:
    """Zero the projections that write into the residual stream: the block then passes its input on."""
    block = net.layer_list()[layer]
    with torch.no_grad():
        if net.model.config.model_type == "gpt2":
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        else:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()


def job(**student) -> SimpleNamespace:
    spec = Student.model_validate({"method": "importance", "calibrationBatches": 2, **student})
    return SimpleNamespace(spec=SimpleNamespace(
        student=spec, distillation=SimpleNamespace(batch_size=8, temperature=2.0, top_k=16)))


@pytest.fixture
def data() -> Encoded:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 128, (12, 16), generator=generator)
    return Encoded({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, None)


@pytest.fixture(params=["llama", "gpt2"])
def net(request, tmp_path) -> CausalLMNet:
    build = tiny_llama if request.param == "llama" else tiny_gpt2
    with torch.random.fork_rng():
        return CausalLMNet.load(save_decoder(build(), tmp_path / request.param))


def test_calibration_batches_are_small_and_spread(data):
    batches = calibration_batches(data, job(), "cpu")
    assert [b["input_ids"].shape for b in batches] == [(4, 16), (4, 16)]
    assert batches[0]["input_ids"][0].tolist() == data.tensors["input_ids"][0].tolist()
    assert batches[-1]["input_ids"][-1].tolist() == data.tensors["input_ids"][-1].tolist()


def test_block_influence_drops_identity_layers_first(net, data):
    make_identity(net, 2)
    make_identity(net, 4)
    keep, scores = select_decoder_layers(net, data, job(importanceMetric="block-influence", keepLayers=4), "cpu")
    assert keep == [0, 1, 3, 5]
    assert scores[2] == pytest.approx(0.0, abs=1e-6) and scores[4] == pytest.approx(0.0, abs=1e-6)
    assert min(scores[i] for i in (0, 1, 3, 5)) > 1e-3


def test_block_influence_protects_the_ends_unless_told_not_to(net, data):
    make_identity(net, 0)
    make_identity(net, 5)
    keep, _ = select_decoder_layers(net, data, job(importanceMetric="block-influence", keepLayers=4), "cpu")
    assert keep[0] == 0 and keep[-1] == 5
    keep, _ = select_decoder_layers(
        net, data, job(importanceMetric="block-influence", keepLayers=4, keepFirstAndLast=False), "cpu")
    assert keep == [1, 2, 3, 4]


def test_angular_distance_drops_the_identity_block(net, data):
    make_identity(net, 2)
    make_identity(net, 3)
    keep, distances = select_decoder_layers(net, data, job(importanceMetric="angular-distance", keepLayers=4), "cpu")
    assert keep == [0, 1, 4, 5]
    assert len(distances) == 5  # one per start of a 2-layer block in 6 layers
    assert distances[2] == pytest.approx(0.0, abs=1e-3)


def test_angular_block_never_covers_the_ends(net, data):
    make_identity(net, 0)
    make_identity(net, 1)
    keep, distances = select_decoder_layers(net, data, job(importanceMetric="angular-distance", keepLayers=4), "cpu")
    assert distances[0] == pytest.approx(0.0, abs=1e-3)
    assert keep[0] == 0 and keep[-1] == 5 and len(keep) == 4
    keep, _ = select_decoder_layers(
        net, data, job(importanceMetric="angular-distance", keepLayers=4, keepFirstAndLast=False), "cpu")
    assert keep == [2, 3, 4, 5]


def test_block_distances_match_a_hand_computation(data):
    torch.manual_seed(0)
    net = CausalLMNet(tiny_llama(), None)
    batches = calibration_batches(data, job(), "cpu")
    distances = block_distances(net, batches, 3)
    with torch.no_grad():
        hs = [net.outputs(b, hidden_states=True).hidden_states for b in batches]
    expected = []
    for start in range(4):
        values = []
        for h in hs:
            cos = torch.nn.functional.cosine_similarity(h[start], h[start + 3], dim=-1).flatten()
            values += [math.acos(max(-1.0, min(1.0, float(c)))) / math.pi for c in cos]
        expected.append(sum(values) / len(values))
    assert distances == pytest.approx(expected, abs=1e-5)


def test_ablation_drops_identity_layers_first(net, data):
    make_identity(net, 1)
    make_identity(net, 3)
    keep, scores = select_decoder_layers(net, data, job(importanceMetric="ablation", keepLayers=4), "cpu")
    assert keep == [0, 2, 4, 5]
    assert len(scores) == 6
    assert scores[1] == pytest.approx(0.0, abs=1e-5) and scores[3] == pytest.approx(0.0, abs=1e-5)
    assert net.num_layers() == 6  # scoring ran on the net itself and restored it


def test_ablation_protects_the_ends(net, data):
    make_identity(net, 0)
    keep, scores = select_decoder_layers(net, data, job(importanceMetric="ablation", keepLayers=5), "cpu")
    assert scores[0] == pytest.approx(0.0, abs=1e-5)
    assert keep[0] == 0 and len(keep) == 5
    keep, _ = select_decoder_layers(net, data, job(importanceMetric="ablation", keepLayers=5, keepFirstAndLast=False), "cpu")
    assert keep == [1, 2, 3, 4, 5]


def test_fixed_rules(net, data):
    assert select_decoder_layers(net, data, job(method="uniform", keepLayers=3), "cpu") == ([0, 2, 5], [])
    assert select_decoder_layers(net, data, job(method="first", keepLayers=2), "cpu") == ([0, 1], [])
    assert select_decoder_layers(net, data, job(method="explicit", layers=[4, 1]), "cpu") == ([1, 4], [])
    keep, rms = select_decoder_layers(net, data, job(method="weight-range", weightRange={"min": 0, "max": 10}, keepLayers=2), "cpu")
    assert len(keep) == 2 and len(rms) == 6


def test_keeping_one_layer_with_the_ends_protected_is_an_input_error(net, data):
    with pytest.raises(InputError, match="student.keepLayers.*student.keepFirstAndLast"):
        select_decoder_layers(net, data, job(importanceMetric="block-influence", keepLayers=1), "cpu")
    keep, _ = select_decoder_layers(net, data, job(importanceMetric="block-influence", keepLayers=1,
                                                   keepFirstAndLast=False), "cpu")
    assert len(keep) == 1


def test_explicit_out_of_range_is_an_input_error(net, data):
    with pytest.raises(InputError, match="student.layers"):
        select_decoder_layers(net, data, job(method="explicit", layers=[0, 9]), "cpu")


def test_pure_helpers():
    assert extraction.keep_top_scored([0.0, 0.5, 0.1, 0.9, 0.2, 0.0], 4, protect=True) == [0, 1, 3, 5]
    assert extraction.keep_top_scored([0.0, 0.5, 0.1, 0.9, 0.2, 0.0], 2, protect=False) == [1, 3]
    assert list(allowed_starts(6, 2, protect=True)) == [1, 2, 3]
    assert list(allowed_starts(6, 2, protect=False)) == [0, 1, 2, 3, 4]
    same = torch.ones(1, 2, 4)
    assert angular_distance(same, -same).tolist() == [[1.0, 1.0]]
