"""Runtime memory of an ONNX model: the peak resident memory its onnxruntime session adds.

Measured in a fresh Python process per model, so nothing else of the run (torch, the teacher, the
data) is in the figure: the probe imports onnxruntime and numpy, reads its resident set size
(VmRSS), builds the session, runs the benchmark batch, and reads the high-water mark (VmHWM). The
difference is what serving this model costs over an idle onnxruntime process, the number a
`maxMemoryBytes` target is about; the baseline is reported beside it. Linux only (/proc); host
memory only (on a GPU, device memory is not counted).

    python -m distillery_trainer.memory_probe MODEL.onnx FEED.npz PROVIDER[,PROVIDER] [THREADS]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The batch runs a few times: onnxruntime's arena grows over the first runs, then stays.
RUNS = 3
PROBE_TIMEOUT_S = 600


@dataclass(frozen=True)
class MemoryUse:
    session_bytes: int  # peak RSS added by the session and its runs
    baseline_bytes: int  # RSS of the probe with onnxruntime imported, before the session


def _status_bytes(field: str) -> int:
    """A `kB` line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def probe(model: Path, feed_path: Path, providers: list[str], threads: int | None) -> dict:
    """Inside the probe process: baseline, session, runs, high-water mark."""
    import onnxruntime as ort

    with np.load(feed_path) as arrays:
        feed = {name: arrays[name] for name in arrays.files}
    baseline = _status_bytes("VmRSS")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), sess_options=options, providers=providers)
    for _ in range(RUNS):
        sess.run(None, feed)
    return {"baseline": baseline, "peak": _status_bytes("VmHWM")}


def measure_memory(model: Path, feed: dict[str, np.ndarray], providers: list[str],
                   threads: int | None) -> MemoryUse:
    """Run the probe on `model` with `feed` in a child process and return what it measured."""
    with tempfile.TemporaryDirectory(prefix="distillery-memory-") as tmp:
        feed_path = Path(tmp) / "feed.npz"
        np.savez(feed_path, **feed)
        cmd = [sys.executable, "-m", "distillery_trainer.memory_probe", str(model), str(feed_path),
               ",".join(providers), str(threads or 0)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the memory probe of {model.name} exited with {done.returncode}: {last}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return MemoryUse(session_bytes=max(0, figures["peak"] - figures["baseline"]), baseline_bytes=figures["baseline"])


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    model, feed_path, providers = Path(argv[0]), Path(argv[1]), argv[2].split(",")
    threads = int(argv[3]) if len(argv) == 4 else 0
    print(json.dumps(probe(model, feed_path, providers, threads or None)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
