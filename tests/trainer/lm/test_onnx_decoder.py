"""The decoder as one ONNX graph with a KV cache (lm/onnx_decoder.py): it scores, prefills and
decodes like torch, greedy decoding through it equals `generate`, and its speed is measured."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distillery.api.job import Hardware
from distillery_trainer.lm.model import CausalLMNet
from distillery_trainer.lm.onnx_decoder import DecoderSession, export_decoder, measure_onnx_speeds
from distillery_trainer.lm.speed import seeded_prompt
from distillery_trainer.onnx_tools import quantize_int8
from tests.trainer.lm.conftest import save_decoder, tiny_llama

KEEP = [0, 2, 5]


@pytest.fixture
def cut_graph(decoder_dir, tmp_path):
    student = CausalLMNet.load(decoder_dir).with_layers(KEEP)
    return student, DecoderSession(export_decoder(student, tmp_path / "model.onnx", 17), Hardware.CPU, 1)


def test_names_follow_the_text_generation_convention(cut_graph):
    _, decoder = cut_graph
    assert [i.name for i in decoder.sess.get_inputs()][:2] == ["input_ids", "attention_mask"]
    assert decoder.past_names == [f"past_key_values.{i}.{kind}" for i in range(3) for kind in ("key", "value")]
    assert decoder.present_names == [f"present.{i}.{kind}" for i in range(3) for kind in ("key", "value")]


def test_prefill_and_each_cached_step_match_a_full_torch_forward(cut_graph):
    """Traced on a one-token decode step, the graph must also prefill (a past of length 0) and
    continue one token at a time, matching torch at every position."""
    student, decoder = cut_graph
    sequence = torch.randint(4, 128, (1, 10))
    with torch.no_grad():
        expected = student.model(input_ids=sequence).logits[0].numpy()
    past = list(decoder.empty_past(1).values())
    got, seen = [], 0
    for chunk in (sequence[:, :6], *sequence[:, 6:].split(1, dim=1)):
        seen += chunk.shape[1]
        logits, *past = decoder.sess.run(None, {"input_ids": chunk.numpy(), "attention_mask": np.ones((1, seen), np.int64),
                                                **dict(zip(decoder.past_names, past, strict=True))})
        got.append(logits[0])
    assert np.abs(np.concatenate(got) - expected).max() < 1e-4


def test_right_padded_batches_score_like_torch_at_the_real_positions(cut_graph):
    """Scoring (perplexity, zero-shot) feeds right-padded batches through an empty cache."""
    student, decoder = cut_graph
    ids = torch.randint(4, 128, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        expected = student.model(input_ids=ids, attention_mask=mask).logits.numpy()
    got = decoder.logits(ids.numpy(), mask.numpy())
    assert got.shape == expected.shape
    assert np.abs(got - expected)[0].max() < 1e-4 and np.abs(got - expected)[1, :7].max() < 1e-4


def test_greedy_decoding_through_the_graph_equals_generate(cut_graph):
    student, decoder = cut_graph
    prompt = seeded_prompt(128, 1, 9, "cpu")
    times: list[float] = []
    ours = decoder.greedy_decode(prompt.numpy(), steps=6, step_times_ms=times)
    with torch.no_grad():
        theirs = student.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=7,
                                        min_new_tokens=7, do_sample=False, pad_token_id=0)
    assert np.array_equal(ours, theirs[:, 9:].numpy())
    assert len(times) == 6 and all(t > 0 for t in times)


def test_a_graph_without_a_cache_is_refused(tmp_path):
    model = torch.nn.Linear(4, 2)
    path = tmp_path / "plain.onnx"
    torch.onnx.export(model, (torch.zeros(1, 4),), str(path), dynamo=False, input_names=["features"])
    with pytest.raises(ValueError, match="not a decoder graph with a KV cache"):
        DecoderSession(path, Hardware.CPU, 1)


def test_speeds_are_measured_for_fp32_and_int8_graphs_in_turns(tmp_path):
    """Half the layers at the same width decode faster (about half the work per token, far
    beyond a loaded machine's noise, measured in turns); the int8 graph decodes and is timed."""
    wide = dict(num_hidden_layers=12, hidden_size=256, intermediate_size=512)
    full = CausalLMNet.load(save_decoder(tiny_llama(**wide), tmp_path / "full"))
    full_path = export_decoder(full, tmp_path / "full.onnx", 17)
    cut_path = export_decoder(full.with_layers(list(range(0, 12, 2))), tmp_path / "cut.onnx", 17)
    int8_path = quantize_int8(cut_path, tmp_path / "cut.int8.onnx")
    speeds = measure_onnx_speeds([full_path, cut_path, int8_path], prompt_length=32, decode_tokens=8,
                                 prefill_batch=2, warmup=1, iterations=3, hardware=Hardware.CPU, threads=1)
    for speed in speeds:
        for value in (speed.ms_per_token_p50, speed.ms_per_token_p95, speed.prefill_tokens_per_second):
            assert value > 0 and math.isfinite(value)
        assert speed.ms_per_token_p95 >= speed.ms_per_token_p50
    assert speeds[1].ms_per_token_p50 < speeds[0].ms_per_token_p50
    assert speeds[1].prefill_tokens_per_second > speeds[0].prefill_tokens_per_second
