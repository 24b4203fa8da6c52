"""A latency labelled with a provider is measured on that provider, or the run says why not.

onnxruntime only logs a line when a requested provider cannot be used and runs the session on the
next one; here the CPU build of onnxruntime stands in for a GPU build whose CUDA provider failed to
load (the same fallback, seen with onnxruntime-gpu on a machine without CUDA libraries).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from distillery_trainer.errors import InputError
from distillery_trainer.onnx_tools import require_provider


def _tiny_onnx(path):
    torch.onnx.export(torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),), str(path), input_names=["x"],
                      output_names=["y"], dynamo=False)
    return path


def test_a_session_that_fell_back_to_the_cpu_is_refused(tmp_path):
    import onnxruntime as ort

    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sess = ort.InferenceSession(str(_tiny_onnx(tmp_path / "m.onnx")), providers=wanted)
    if sess.get_providers()[0] == "CUDAExecutionProvider":
        pytest.skip("this machine's onnxruntime really runs on CUDA")
    with pytest.raises(InputError, match="CUDAExecutionProvider.*CPUExecutionProvider"):
        require_provider(sess, wanted, "the test session")


def test_a_session_on_the_requested_provider_passes(tmp_path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(_tiny_onnx(tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    assert require_provider(sess, ["CPUExecutionProvider"], "the test session") is sess
