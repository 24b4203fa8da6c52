"""Decode/prefill speed measurement on tiny random decoders (lm/speed.py)."""

import math

import pytest
import torch

from distillery_trainer.errors import InputError
from distillery_trainer.lm.speed import greedy_decode, measure_speeds, seeded_prompt
from tests.trainer.lm.conftest import tiny_gpt2, tiny_llama


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_cached_greedy_decode_equals_generate(make):
    model = make()
    prompt = seeded_prompt(128, 1, 10, "cpu")
    ours = greedy_decode(model, prompt, steps=7)
    theirs = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                            do_sample=False, min_new_tokens=8, pad_token_id=0)
    assert torch.equal(ours, theirs[:, 10:])


def test_step_times_are_recorded_per_decoded_token():
    times = []
    greedy_decode(tiny_llama(), seeded_prompt(128, 1, 5, "cpu"), steps=4, step_times_ms=times)
    assert len(times) == 4 and all(t > 0 for t in times)


def test_speeds_are_positive_and_finite_and_restore_threads_and_mode():
    model = tiny_llama()
    model.train()
    threads_before = torch.get_num_threads()
    [speed] = measure_speeds([model], prompt_length=8, decode_tokens=4, prefill_batch=2,
                             warmup=1, iterations=2, device="cpu", threads=1)
    for value in (speed.ms_per_token_p50, speed.ms_per_token_p95, speed.prefill_tokens_per_second):
        assert value > 0 and math.isfinite(value)
    assert speed.ms_per_token_p95 >= speed.ms_per_token_p50
    assert torch.get_num_threads() == threads_before
    assert model.training


def wide_llama(layers):
    return tiny_llama(num_hidden_layers=layers, hidden_size=256, intermediate_size=512)


def test_half_the_layers_decode_faster():
    """Same width, half the layers: the gap (about 2x in work per token) is far wider than the noise
    of a shared 2-core machine, and both are measured in turns within the same spell."""
    full, cut = wide_llama(layers=12), wide_llama(layers=6)
    full_speed, cut_speed = measure_speeds([full, cut], prompt_length=32, decode_tokens=8, prefill_batch=2,
                                           warmup=1, iterations=3, device="cpu", threads=1)
    assert cut_speed.ms_per_token_p50 < full_speed.ms_per_token_p50
    assert cut_speed.prefill_tokens_per_second > full_speed.prefill_tokens_per_second


def test_prompt_plus_decode_beyond_the_position_limit_is_an_input_error():
    with pytest.raises(InputError, match="benchmark.decodeTokens"):
        measure_speeds([tiny_gpt2()], prompt_length=120, decode_tokens=16, prefill_batch=1,
                       warmup=0, iterations=1, device="cpu", threads=1)
