"""Runtime memory: the probe measures what a model's onnxruntime session adds, in a fresh process."""

from __future__ import annotations

import numpy as np
import torch

from distillery.api.job import Hardware
from distillery_trainer.memory_probe import measure_memory
from distillery_trainer.onnx_tools import feed_for_file, providers_for

MIB = 2**20


def _mlp_onnx(path, width: int):
    """A 2-layer MLP of about 4 * width**2 bytes of fp32 weights, exported to ONNX."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                              torch.nn.ReLU(), torch.nn.Linear(width, 4)).eval()
    torch.onnx.export(net, (torch.randn(8, 64),), str(path), input_names=["features"], output_names=["logits"],
                      dynamic_axes={"features": {0: "batch"}}, dynamo=False)
    return path


def test_a_larger_model_costs_more_memory_by_about_its_weights(tmp_path):
    example = (torch.randn(8, 64),)
    providers = providers_for(Hardware.CPU)
    small = _mlp_onnx(tmp_path / "small.onnx", 64)  # ~20 KB of weights
    large = _mlp_onnx(tmp_path / "large.onnx", 4096)  # ~64 MiB of weights
    small_use = measure_memory(small, feed_for_file(small, example), providers, 1)
    large_use = measure_memory(large, feed_for_file(large, example), providers, 1)
    weights = (4096 * 4096 + 64 * 4096) * 4
    assert small_use.baseline_bytes > 10 * MIB  # a Python process with onnxruntime imported
    assert small_use.session_bytes < 32 * MIB
    # The session holds the weights at least once (onnxruntime may keep a second, prepacked copy).
    assert large_use.session_bytes - small_use.session_bytes > 0.8 * weights
    assert large_use.session_bytes < 4 * weights + 64 * MIB


def test_the_feed_is_built_from_the_files_inputs(tmp_path):
    model = _mlp_onnx(tmp_path / "m.onnx", 16)
    feed = feed_for_file(model, (torch.ones(2, 64),))
    assert list(feed) == ["features"]
    assert feed["features"].dtype.name == "float32" and feed["features"].shape == (2, 64)


def test_a_probe_that_fails_says_why(tmp_path):
    import pytest

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match="the memory probe of broken.onnx exited with 1"):
        measure_memory(broken, {"features": np.zeros((1, 4), dtype=np.float32)}, providers_for(Hardware.CPU), 1)
