"""scikit-learn's digits and a real MLP teacher trained on them, shared by trainer and cluster tests."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from distillery_trainer.builtin import BuiltinConfig, BuiltinNet, save_builtin


def train_mlp_teacher(x: np.ndarray, y: np.ndarray, blocks: int = 6, epochs: int = 25) -> BuiltinNet:
    torch.manual_seed(0)
    net = BuiltinNet(BuiltinConfig(architecture="mlp", num_classes=10, hidden_size=64,
                                   num_blocks=blocks, input_dim=x.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), 64):
            idx = order[i:i + 64]
            loss = torch.nn.functional.cross_entropy(net(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="session")
def digits_workspace(tmp_path_factory) -> Path:
    """A folder with data/{train,eval}.npz and teacher/ (config.json + model.safetensors)."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, evals = order[:1400], order[1400:]
    (root / "data").mkdir()
    np.savez(root / "data" / "train.npz", x=x[train], y=y[train])
    np.savez(root / "data" / "eval.npz", x=x[evals], y=y[evals])
    teacher = train_mlp_teacher(x[train], y[train])
    with torch.no_grad():
        acc = (teacher(torch.from_numpy(x[evals])).argmax(1).numpy() == y[evals]).mean()
    assert acc > 0.9, f"the fixture teacher should be good, got {acc}"
    save_builtin(teacher, root / "teacher")
    return root


def digits_job_document(ws: Path, out: Path, **spec_overrides) -> dict:
    """A DistillationJob document for the digits teacher; overrides are merged per section."""
    doc = {
        "apiVersion": "distillery.io/v1alpha1",
        "kind": "DistillationJob",
        "metadata": {"name": "digits"},
        "spec": {
            "teacher": {"uri": f"file://{ws / 'teacher'}", "format": "torch", "task": "tabular-classification"},
            "dataset": {"format": "npz", "trainUri": str(ws / "data" / "train.npz"),
                        "evalUri": str(ws / "data" / "eval.npz"), "featuresField": "x", "labelField": "y"},
            "student": {"method": "importance", "keepLayers": 2},
            "distillation": {"epochs": 4, "learningRate": 3e-3, "batchSize": 64, "temperature": 4.0,
                             "alpha": 0.7, "checkpointEverySteps": 10},
            "benchmark": {"batchSize": 16, "iterations": 10, "warmup": 2, "threads": 1},
            "output": {"uri": f"file://{out}"},
        },
    }
    for section, values in spec_overrides.items():
        if isinstance(values, dict) and isinstance(doc["spec"].get(section), dict):
            doc["spec"][section] = {**doc["spec"][section], **values}
        else:
            doc["spec"][section] = values
    return copy.deepcopy(doc)
