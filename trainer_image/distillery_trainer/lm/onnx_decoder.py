"""A decoder as one ONNX graph with its KV cache, and its decode and prefill speed in onnxruntime.

One graph serves the prefill (a past of length 0) and every decode step (new tokens plus the past
keys and values of every layer, returning the grown ones), with the input and output names that
Optimum and transformers.js use for text generation (`past_key_values.N.key`, `present.N.key`).
Speed is measured the way a server would run it: the cache stays in onnxruntime's memory (on the
device for CUDA) between steps through I/O binding, and only one token's logits come back.
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from distillery.api.job import Hardware
from distillery_trainer.lm.model import CausalLMNet, cache_io_names
from distillery_trainer.lm.speed import DecodeSpeed, percentile, seeded_prompt
from distillery_trainer.onnx_tools import session

# The traced example: a decode step (one new token after a short past) at batch 2, so that
# batch, new-token and past lengths are all seen as dimensions, not constants.
_EXAMPLE_BATCH, _EXAMPLE_PAST = 2, 3


def export_decoder(net: CausalLMNet, path: Path, opset: int) -> Path:
    """Write `net` as one graph (input_ids, attention_mask, past...) -> (logits, present...)."""
    past_names, present_names = cache_io_names(net.num_layers())
    past = [torch.zeros(net.cache_shape(_EXAMPLE_BATCH, _EXAMPLE_PAST)) for _ in past_names]
    ids = torch.full((_EXAMPLE_BATCH, 1), 1, dtype=torch.long)
    mask = torch.ones(_EXAMPLE_BATCH, _EXAMPLE_PAST + 1, dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "logits": {0: "batch", 1: "new"}}
    axes.update({name: {0: "batch", 2: "past"} for name in past_names})
    axes.update({name: {0: "batch", 2: "total"} for name in present_names})
    path.parent.mkdir(parents=True, exist_ok=True)
    module = net.export_module_with_cache().cpu().eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns about every traced shape branch
        torch.onnx.export(module, (ids, mask, *past), str(path), dynamo=False, opset_version=opset,
                          input_names=["input_ids", "attention_mask", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes)
    return path


class DecoderSession:
    """An onnxruntime session of an exported decoder graph: scoring, prefill and greedy decoding."""

    def __init__(self, path: Path, hardware: Hardware, threads: int | None):
        self.sess = session(path, hardware, threads)
        inputs = self.sess.get_inputs()
        self.past_names = [i.name for i in inputs if i.name.startswith("past_key_values.")]
        self.present_names = [o.name for o in self.sess.get_outputs() if o.name.startswith("present.")]
        if not self.past_names or len(self.past_names) != len(self.present_names):
            raise ValueError(f"{path.name} is not a decoder graph with a KV cache")
        # (batch, kv heads, past, head size): heads and head size are fixed in the graph.
        shape = next(i.shape for i in inputs if i.name == self.past_names[0])
        self.heads, self.head_size = int(shape[1]), int(shape[3])
        self.vocab_size = int(self.sess.get_outputs()[0].shape[2])
        self.device = "cuda" if hardware == Hardware.CUDA else "cpu"

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        empty = np.zeros((batch, self.heads, 0, self.head_size), dtype=np.float32)
        return dict.fromkeys(self.past_names, empty)

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits at every position of whole sequences (a prefill with an empty past)."""
        feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64),
                **self.empty_past(input_ids.shape[0])}
        return self.sess.run(["logits"], feed)[0]

    def _step(self, ids: np.ndarray, total: int, past: list) -> tuple[np.ndarray, list]:
        """One forward with the past bound in place; returns the last position's logits (copied
        to the host) and the present keys and values (left where onnxruntime put them)."""
        binding = self.sess.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", np.ones((ids.shape[0], total), dtype=np.int64))
        for name, value in zip(self.past_names, past, strict=True):
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, self.device)
        self.sess.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy()[:, -1], present

    def greedy_decode(self, prompt: np.ndarray, steps: int, step_times_ms: list[float] | None = None) -> np.ndarray:
        """Greedy continuation of a (1, L) prompt: the prefill picks the first new token, then
        `steps` one-token forwards pick one more each; returns the steps + 1 new token ids. When
        `step_times_ms` is given, each one-token forward's wall time is appended to it."""
        prompt = prompt.astype(np.int64)
        logits, past = self._step(prompt, prompt.shape[1], list(self.empty_past(prompt.shape[0]).values()))
        tokens = [logits.argmax(-1)]
        for _ in range(steps):
            start = time.perf_counter()
            logits, past = self._step(tokens[-1][:, None], prompt.shape[1] + len(tokens), past)
            tokens.append(logits.argmax(-1))
            if step_times_ms is not None:
                step_times_ms.append((time.perf_counter() - start) * 1000.0)
        return np.stack(tokens, axis=1)

    def prefill_seconds(self, prompt: np.ndarray) -> float:
        start = time.perf_counter()
        self._step(prompt.astype(np.int64), prompt.shape[1], list(self.empty_past(prompt.shape[0]).values()))
        return time.perf_counter() - start


def measure_onnx_speeds(paths: list[Path], prompt_length: int, decode_tokens: int, prefill_batch: int,
                        warmup: int, iterations: int, hardware: Hardware, threads: int | None) -> list[DecodeSpeed]:
    """Decode ms/token (p50, p95 over every timed step) and prefill tokens/s (median prefill) of
    exported decoder graphs, in turns: each iteration decodes and prefills with every model once,
    so that a speedup is a ratio from one spell of the machine."""
    if prompt_length < 1 or decode_tokens < 1 or prefill_batch < 1 or iterations < 1 or warmup < 0:
        raise ValueError("prompt length, decode tokens, prefill batch and iterations must be positive")
    sessions = [DecoderSession(path, hardware, threads) for path in paths]
    decode_prompts = [seeded_prompt(s.vocab_size, 1, prompt_length, "cpu").numpy() for s in sessions]
    prefill_prompts = [seeded_prompt(s.vocab_size, prefill_batch, prompt_length, "cpu").numpy() for s in sessions]
    for sess, decode_prompt, prefill_prompt in zip(sessions, decode_prompts, prefill_prompts, strict=True):
        for _ in range(warmup):
            sess.greedy_decode(decode_prompt, decode_tokens)
            sess.prefill_seconds(prefill_prompt)
    step_times: list[list[float]] = [[] for _ in sessions]
    prefill_times: list[list[float]] = [[] for _ in sessions]
    for _ in range(iterations):
        for i, sess in enumerate(sessions):
            sess.greedy_decode(decode_prompts[i], decode_tokens, step_times[i])
            prefill_times[i].append(sess.prefill_seconds(prefill_prompts[i]))
    return [DecodeSpeed(ms_per_token_p50=statistics.median(steps), ms_per_token_p95=percentile(sorted(steps), 0.95),
                        prefill_tokens_per_second=prefill_batch * prompt_length / statistics.median(prefills))
            for steps, prefills in zip(step_times, prefill_times, strict=True)]
