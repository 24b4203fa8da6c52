"""Decode and prefill speed of causal LMs in torch, measured the same way for teacher and student.

A run times its exported ONNX graphs instead (onnx_decoder.py, which shares the prompts and the
percentile here); this torch measurement serves benchmarks/causal_lm, which times many cut models
without exporting each one.

Decode is batch 1 with a KV cache: a seeded random prompt is prefilled (untimed), then each greedy
step is one forward of one token with `past_key_values`, and each step is one timed sample. Prefill
is one forward over (prefill_batch, prompt_length) tokens without a cache, reported as tokens/s.
Both ask for the last position's logits only, as `generate` does: a serving prefill needs no
more, and the vocabulary projection at every position would blur the layers' share of the cost.
The models take turns every iteration so that a speedup is a ratio measured in one spell of
whatever else the machine is doing.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from distillery_trainer.errors import InputError

PROMPT_SEED = 0


@dataclass
class DecodeSpeed:
    ms_per_token_p50: float  # one greedy decode step with a KV cache, batch 1
    ms_per_token_p95: float
    prefill_tokens_per_second: float  # one forward without a cache over (prefill_batch, prompt_length)


def max_positions(model: nn.Module) -> int | None:
    """How many positions the model's position embeddings cover (None: no fixed limit known)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def seeded_prompt(vocab_size: int, batch: int, length: int, device: torch.device | str) -> torch.Tensor:
    """Random token ids, the same for every model of the same vocabulary."""
    gen = torch.Generator().manual_seed(PROMPT_SEED)
    return torch.randint(0, vocab_size, (batch, length), generator=gen).to(device)


def _synchronizer(device: torch.device | str) -> Callable[[], None]:
    """Waits for queued GPU work so a timer stops when the work is done, not when it was queued."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def greedy_decode(model: nn.Module, prompt: torch.Tensor, steps: int,
                  step_times_ms: list[float] | None = None) -> torch.Tensor:
    """Greedy continuation with a KV cache: the prompt's forward picks the first new token, then
    `steps` one-token forwards pick one more each; returns the steps + 1 new tokens (B, steps + 1).
    When `step_times_ms` is given, each one-token forward's wall time is appended to it."""
    sync = _synchronizer(prompt.device)
    with torch.inference_mode():
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [token]
        cache = out.cache
        for _ in range(steps):
            sync()
            start = time.perf_counter()
            out = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            sync()
            if step_times_ms is not None:
                step_times_ms.append((time.perf_counter() - start) * 1000.0)
            cache = out.cache
            tokens.append(token)
    return torch.cat(tokens, dim=1)


def _prefill_seconds(model: nn.Module, prompt: torch.Tensor) -> float:
    sync = _synchronizer(prompt.device)
    with torch.inference_mode():
        sync()
        start = time.perf_counter()
        model(input_ids=prompt, use_cache=False, logits_to_keep=1)
        sync()
    return time.perf_counter() - start


@contextmanager
def _threads(threads: int | None):
    """torch's intra-op thread count set for the measurement and restored afterwards."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _eval_mode(models: list[nn.Module]):
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


def percentile(sorted_values: list[float], share: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, math.ceil(share * len(sorted_values)) - 1)]


def measure_speeds(models: list[nn.Module], prompt_length: int, decode_tokens: int, prefill_batch: int,
                   warmup: int, iterations: int, device: torch.device | str,
                   threads: int | None) -> list[DecodeSpeed]:
    """Decode ms/token (p50, p95 over every timed step) and prefill tokens/s (from the median
    prefill time) of Hugging Face *ForCausalLM models, measured in turns. The models are moved to
    `device` (in place) and left there."""
    if prompt_length < 1 or decode_tokens < 1 or prefill_batch < 1 or iterations < 1 or warmup < 0:
        raise ValueError("prompt length, decode tokens, prefill batch and iterations must be positive")
    for model in models:
        limit = max_positions(model)
        if limit is not None and prompt_length + decode_tokens + 1 > limit:
            raise InputError("benchmark.decodeTokens: the prompt plus the decoded tokens exceed the "
                             "model's maximum positions")
    for model in models:
        model.to(device)
    decode_prompts = [seeded_prompt(m.config.vocab_size, 1, prompt_length, device) for m in models]
    prefill_prompts = [seeded_prompt(m.config.vocab_size, prefill_batch, prompt_length, device) for m in models]
    step_times: list[list[float]] = [[] for _ in models]
    prefill_times: list[list[float]] = [[] for _ in models]
    with _threads(threads), _eval_mode(models):
        for model, decode_prompt, prefill_prompt in zip(models, decode_prompts, prefill_prompts, strict=True):
            for _ in range(warmup):
                greedy_decode(model, decode_prompt, decode_tokens)
                _prefill_seconds(model, prefill_prompt)
        for _ in range(iterations):
            for i, model in enumerate(models):
                greedy_decode(model, decode_prompts[i], decode_tokens, step_times[i])
                prefill_times[i].append(_prefill_seconds(model, prefill_prompts[i]))
    speeds = []
    for steps, prefills in zip(step_times, prefill_times, strict=True):
        steps = sorted(steps)
        speeds.append(DecodeSpeed(
            ms_per_token_p50=statistics.median(steps),
            ms_per_token_p95=percentile(steps, 0.95),
            prefill_tokens_per_second=prefill_batch * prompt_length / statistics.median(prefills),
        ))
    return speeds
