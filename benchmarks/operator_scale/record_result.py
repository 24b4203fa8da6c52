"""Records the result.json the fake trainer replays: one real `distillery run` of the digits job.

    python -m benchmarks.operator_scale.record_result   # from the repo root; needs torch + sklearn

It builds the tests' digits workspace (tests/digits.py: sklearn digits, a 6-block MLP teacher),
runs the real trainer locally on the same job the cluster tests use (2 epochs, keep 2 layers,
maxAccuracyDrop 0.5 so the student is accepted) and saves its result.json, with the local
paths replaced by placeholders, as recorded-result.json next to this file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
RECORDED = HERE / "recorded-result.json"


def build_workspace(root: Path) -> Path:
    """What the `digits_workspace` fixture builds, outside pytest."""
    import torch
    from sklearn.datasets import load_digits
    from tests.digits import train_mlp_teacher

    from distillery_trainer.builtin import save_builtin

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, evals = order[:1400], order[1400:]
    (root / "data").mkdir(parents=True)
    np.savez(root / "data" / "train.npz", x=x[train], y=y[train])
    np.savez(root / "data" / "eval.npz", x=x[evals], y=y[evals])
    teacher = train_mlp_teacher(x[train], y[train])
    with torch.no_grad():
        acc = (teacher(torch.from_numpy(x[evals])).argmax(1).numpy() == y[evals]).mean()
    assert acc > 0.9, acc
    save_builtin(teacher, root / "teacher")
    return root


def main() -> int:
    from tests.digits import digits_job_document

    with tempfile.TemporaryDirectory(prefix="distillery-record-") as tmp:
        ws = build_workspace(Path(tmp) / "ws")
        out = Path(tmp) / "out"
        doc = digits_job_document(ws, out, distillation={"epochs": 2}, targets={"maxAccuracyDrop": 0.5})
        spec_file = Path(tmp) / "job.json"  # JSON is YAML; it keeps the label field "y" a string
        spec_file.write_text(json.dumps(doc))
        subprocess.run([sys.executable, "-m", "distillery.cli", "run", "--no-progress", str(spec_file)],
                       check=True, cwd=REPO_ROOT)
        text = (out / "result.json").read_text()
        text = text.replace(f"file://{ws}", "file:///RECORDED/ws").replace(str(ws), "/RECORDED/ws")
        text = text.replace(f"file://{out}", "file:///RECORDED/out").replace(str(out), "/RECORDED/out")
        result = json.loads(text)
        result.get("training", {}).pop("history", None)  # per-step losses: not needed, keeps it small
        RECORDED.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {RECORDED} ({RECORDED.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
