"""ONNX export, int8 quantization and latency measurement with onnxruntime."""

from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distillery.api.job import Benchmark, Hardware, Task
from distillery_trainer.errors import InputError
from distillery_trainer.nets import Net


@dataclass
class Latency:
    p50_ms: float
    p95_ms: float
    mean_ms: float
    iterations: int


def providers_for(hardware: Hardware) -> list[str]:
    import onnxruntime as ort

    if hardware == Hardware.CUDA:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InputError(
                "targets.hardware is cuda but onnxruntime has no CUDAExecutionProvider here "
                "(install onnxruntime-gpu on a machine with a GPU, or use hardware: cpu)"
            )
        # onnxruntime-gpu finds the CUDA libraries of the nvidia-* wheels (cuRAND among them, which
        # torch does not load) only when asked; without them its CUDA provider silently falls back.
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def require_provider(sess, providers: list[str], what: str):
    """onnxruntime only logs a line when the requested provider fails to load and runs on the next
    one; a latency labelled cuda must not be a CPU figure, so the session's own providers decide."""
    used = sess.get_providers()
    if used and providers and used[0] != providers[0]:
        raise InputError(
            f"targets.hardware asks for {providers[0]} but onnxruntime gave {what} {used[0]} "
            "(its CUDA provider did not load: check the NVIDIA driver and the CUDA libraries)"
        )
    return sess


def example_inputs(net: Net, batch_size: int, seq_len: int, feature_shape: tuple[int, ...]) -> tuple:
    if "input_ids" in net.input_names:
        ids = torch.full((batch_size, seq_len), 100, dtype=torch.long)
        return ids, torch.ones(batch_size, seq_len, dtype=torch.long)
    return (torch.zeros(batch_size, *feature_shape, dtype=torch.float32),)


def export_onnx(net: Net, path: Path, example: tuple, opset: int) -> Path:
    """Export with dynamic batch (and sequence) axes. The TorchScript exporter is fast and quiet;
    the dynamo exporter is the fallback for models it cannot trace."""
    module = net.export_module().cpu().eval()
    names = list(net.input_names)
    dynamic = {n: {0: "batch", 1: "sequence"} if n != "features" else {0: "batch"} for n in names}
    # A decoder returns logits per token (batch, sequence, vocabulary); a classifier one row per example.
    dynamic["output"] = {0: "batch", 1: "sequence"} if net.task == Task.CAUSAL_LM else {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, example, str(path), input_names=names, output_names=["output"],
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False)
        except Exception as legacy_error:  # noqa: BLE001 - fall back to the other exporter
            logging.getLogger(__name__).info("TorchScript export failed (%s); trying dynamo", legacy_error)
            dims = {n: {axis: torch.export.Dim.AUTO for axis in axes} for n, axes in dynamic.items() if n in names}
            torch.onnx.export(module, example, str(path), input_names=names, output_names=["output"],
                              dynamic_shapes=dims, opset_version=max(opset, 18), dynamo=True)
    return path


def quantize_int8(source: Path, dest: Path) -> Path:
    """Dynamic int8 quantization of the weights (activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs a generic pre-processing hint on every call
    try:
        quantize_dynamic(str(source), str(dest), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return dest


def session(path: Path, hardware: Hardware, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = providers_for(hardware)
    sess = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    return require_provider(sess, providers, f"the session for {path.name}")


def feed_for(sess, example: tuple) -> dict[str, np.ndarray]:
    """Feed the benchmark batch to a model by its own input names (token_type_ids as zeros)."""
    return feed_for_inputs([(inp.name, "int64" in inp.type) for inp in sess.get_inputs()], example)


def feed_for_file(path: Path, example: tuple) -> dict[str, np.ndarray]:
    """feed_for, with the input names read from the ONNX file (no session needed)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [(i.name, i.type.tensor_type.elem_type == onnx.TensorProto.INT64)
              for i in graph.input if i.name not in initializers]
    return feed_for_inputs(inputs, example)


def feed_for_inputs(inputs: list[tuple[str, bool]], example: tuple) -> dict[str, np.ndarray]:
    """The benchmark batch for inputs given as (name, is int64) pairs."""
    feed = {}
    by_name = {"input_ids": example[0], "attention_mask": example[-1], "features": example[0]}
    for name, is_int64 in inputs:
        if name in by_name:
            value = by_name[name].numpy()
        elif name == "token_type_ids":
            value = np.zeros_like(example[0].numpy())
        elif len(inputs) == 1:
            value = example[0].numpy()
        else:
            raise InputError(f"cannot feed ONNX input {name!r} for the latency benchmark")
        feed[name] = value.astype(np.int64) if is_int64 else value.astype(np.float32)
    return feed


# Models take turns in this many blocks of runs, so a slow spell of the machine (other
# processes, a noisy VM neighbour) falls on every model instead of on whichever ran then.
LATENCY_ROUNDS = 3


def measure_latencies(paths: list[Path], example: tuple, bench: Benchmark, hardware: Hardware,
                      rounds: int = LATENCY_ROUNDS) -> list[Latency]:
    """Latency of several models on the same batch: each is warmed up, then they take turns in
    `rounds` blocks that add up to `iterations` timed runs each (a block per model per round, not
    one run each: alternating single runs makes onnxruntime's spinning thread pools compete)."""
    sessions = [session(path, hardware, bench.threads) for path in paths]
    feeds = [feed_for(sess, example) for sess in sessions]
    for sess, feed in zip(sessions, feeds, strict=True):
        for _ in range(bench.warmup):
            sess.run(None, feed)
    rounds = max(1, min(rounds, bench.iterations))
    blocks = [bench.iterations // rounds + (1 if r < bench.iterations % rounds else 0) for r in range(rounds)]
    times: list[list[float]] = [[] for _ in paths]
    for block in blocks:
        for sess, feed, out in zip(sessions, feeds, times, strict=True):
            for _ in range(block):
                start = time.perf_counter()
                sess.run(None, feed)
                out.append((time.perf_counter() - start) * 1000.0)
    return [_latency(sorted(t)) for t in times]


def _latency(times: list[float]) -> Latency:
    p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
    return Latency(statistics.median(times), p95, statistics.fmean(times), len(times))


def onnx_batch_outputs(path: Path, batches, hardware: Hardware) -> Iterator[torch.Tensor]:
    """An exported model's first output on each batch, one session for all of them."""
    sess = session(path, hardware, None)
    for batch in batches:
        example = tuple(batch[n] for n in ("input_ids", "attention_mask") if n in batch) or (batch["features"],)
        yield torch.from_numpy(sess.run(None, feed_for(sess, tuple(t.cpu() for t in example)))[0]).float()


def onnx_outputs(path: Path, batches, hardware: Hardware) -> torch.Tensor:
    """Run an exported model over a few batches, gathered in memory (the round-trip check)."""
    return torch.cat(list(onnx_batch_outputs(path, batches, hardware)))

