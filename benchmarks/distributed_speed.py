"""Data-parallel healing on CPUs: throughput at one and two processes, and whether they agree.

The quickstart's job (MiniLM-L6 sentence encoder cut to 3 layers, healed on BBC News with the
cosine loss on the teacher's embeddings), run three ways, each a fresh `distillery run`:

  1 proc x 1 thread     one process, one torch thread (OMP_NUM_THREADS=1)
  1 proc x 2 threads    one process, two torch threads
  2 procs x 1 thread    torchrun --nproc-per-node 2 (gloo, DDP), one thread each

Throughput is training rows per second of the training stage (result.json's training.seconds:
the teacher pass, evaluation, export and benchmarks are not in it; the teacher outputs come from a
shared cache after the first run). Scaling efficiency = throughput(2 procs) / (2 x throughput(1 proc
x 1 thread)). The loss histories of the 1- and 2-process runs are compared too (the batch rule in
distillery_trainer/distributed.py says they match up to float summation order).

    python benchmarks/distributed_speed.py [--quick]   # --quick: 640 train rows; else all 1780, 1 epoch
Writes benchmarks/results/distributed-speed[-quick].md/.json. On a 2-core machine two processes
share the same cores one process can already use with two threads: the figure then measures
DDP's overhead more than its gain (the write-up says so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import bench_common as bc  # noqa: E402

QUICKSTART = ROOT / "examples" / "quickstart"
VARIANTS = {  # name -> (processes, threads per process)
    "1 proc x 1 thread": (1, 1),
    "1 proc x 2 threads": (1, 2),
    "2 procs x 1 thread": (2, 1),
}


def job_document(store: Path, out: Path, cache: Path, rows: int | None, epochs: int) -> dict:
    doc = yaml.safe_load((QUICKSTART / "job.yaml").read_text())
    spec = doc["spec"]
    spec["teacher"]["uri"] = str(store / "teachers" / "all-MiniLM-L6-v2")
    train = store / "data" / "bbc-train.jsonl"
    if rows is not None:
        lines = train.read_text().splitlines()[:rows]
        train = cache.parent / f"bbc-train-{rows}.jsonl"
        train.write_text("\n".join(lines) + "\n")
    spec["dataset"].update(trainUri=str(train), evalUri=str(store / "data" / "bbc-eval.jsonl"))
    spec["distillation"]["epochs"] = epochs
    spec["benchmark"].update(iterations=10, warmup=2)  # latency is not what this measures
    spec["export"]["int8"] = False
    spec["output"] = {"uri": str(out), "cacheUri": str(cache)}
    return doc


def run_variant(name: str, job_file: Path) -> dict:
    processes, threads = VARIANTS[name]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    tail = ["-m", "distillery.cli", "run", str(job_file), "--json", "--no-progress"]
    if processes == 1:
        command = [sys.executable, *tail]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   *tail]
    bc.log(f"{name}: {' '.join(command[1:])}")
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 3):
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    return {"name": name, "processes": processes, "threads": threads, "wall_s": round(wall, 1),
            "train_s": result["training"]["seconds"], "steps": result["training"]["steps"],
            "world_size": result["training"].get("worldSize", 1), "history": result["training"]["history"],
            "accuracy": result["student"]["accuracy"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rows, epochs = (640, 1) if args.quick else (None, 1)
    info = bc.machine()
    store = QUICKSTART / "store"
    if not (store / "data" / "bbc-train.jsonl").exists():
        subprocess.run([sys.executable, str(QUICKSTART / "prepare.py")], check=True)
    train_rows = rows or sum(1 for _ in (store / "data" / "bbc-train.jsonl").open())
    measured = []
    with tempfile.TemporaryDirectory(prefix="distributed-speed-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        # The first run fills the teacher-output cache; it is run again so every variant reads it.
        order = ["1 proc x 1 thread", *VARIANTS]
        for i, name in enumerate(order):
            job_file = work / f"job-{i}.yaml"
            job_file.write_text(yaml.safe_dump(job_document(store, work / f"out-{i}", cache, rows, epochs)))
            row = run_variant(name, job_file)
            if i == 0:
                bc.log(f"warm-up run (fills the cache): {row['train_s']} s training")
                continue
            row["rows_per_s"] = round(train_rows * epochs / row["train_s"], 2)
            bc.log(f"{name}: {row['rows_per_s']} rows/s ({row['train_s']} s for {row['steps']} steps)")
            measured.append(row)
    by = {row["name"]: row for row in measured}
    one, two = by["1 proc x 1 thread"], by["2 procs x 1 thread"]
    efficiency = two["rows_per_s"] / (2 * one["rows_per_s"])
    versus_threads = two["rows_per_s"] / by["1 proc x 2 threads"]["rows_per_s"]
    loss_gap = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(one["history"], two["history"],
                                                                               strict=True))
    document = {"machine": info, "train_rows": train_rows, "epochs": epochs, "batch_size": 32, "runs": measured,
                "scaling_efficiency": round(efficiency, 3), "two_procs_vs_two_threads": round(versus_threads, 3),
                "loss_max_relative_gap_1_vs_2_procs": loss_gap}
    table = bc.markdown_table(
        ["variant", "world size", "steps", "training s", "train rows/s", "student accuracy", "loss per epoch"],
        [[r["name"], r["world_size"], r["steps"], r["train_s"], r["rows_per_s"], r["accuracy"],
          ", ".join(f"{h['loss']:.6f}" for h in r["history"])] for r in measured])
    markdown = f"""# Data-parallel healing on CPUs (benchmarks/distributed_speed.py{' --quick' if args.quick else ''})

The quickstart job (MiniLM-L6 -> 3 layers, BBC News, cosine loss on the teacher's embeddings),
{train_rows} train rows, {epochs} epoch, global batch 32, run as one process and as two (torchrun, gloo).

{bc.machine_markdown(info)}

{table}

- Scaling efficiency, 2 processes against 2 x one single-threaded process: **{efficiency:.2f}**.
- 2 processes x 1 thread against 1 process x 2 threads (the same two cores): **{versus_threads:.2f}x**.
- Loss per epoch, 1 against 2 processes: largest relative gap {loss_gap:.2e} (same global batch and
  seed; the quickstart's recipe keeps dropout on, and each process draws its own masks, so the
  curves agree on average rather than to float rounding as they do with dropout off).

Two cores are the whole machine: the two processes compete with each other and with the
system, and one process can already use both cores with two threads. So this measures the
cost of DDP's gradient exchange (gloo over loopback, once per step) more than a gain; a
machine with more cores, or GPUs with NCCL, is where data parallelism pays. Not measured here:
GPUs (no GPU machine was at hand for this run).
"""
    md, js = bc.write_results(f"distributed-speed{'-quick' if args.quick else ''}", markdown, document)
    print(markdown)
    bc.log(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
