"""Peak memory of a run as the train split grows: 1x, 10x and 100x the BBC News train rows.

What grows is the data: the 1780 BBC train articles repeated (the issue allows synthetic
repetition for the memory figure), with the 445 eval articles unchanged. The teacher is a small
random BERT classifier (2 layers, 64 wide, MiniLM's tokenizer, 5 BBC classes): its size does not
change with rows, and a small one keeps the 100x run (178,000 rows) within minutes on 2 cores; its
accuracy is not what is measured. Each size is one fresh `distillery run` (sequence
classification, 64 tokens, 1 epoch, batch 64, 1-layer student, no int8, no cache from an earlier
size), watched from outside every 0.1 s:

  peak RSS          the kernel's high-water mark of the process's resident pages (VmHWM, the
                    last value read before it exits); it counts the pages of memory-mapped data
                    files the process has touched, which the kernel can drop and read again
                    (they are page cache)
  peak anonymous    the largest RssAnon seen: memory only the process holds (the heap: tensors,
                    Python objects, the model); what an out-of-memory kill counts first
  peak file-backed  the largest RssFile seen (mapped files: libraries and the data files)

    python benchmarks/memory_rows.py [--quick]   # --quick: 1x and 10x only
Writes benchmarks/results/memory-rows[-quick].md/.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_common as bc  # noqa: E402

MAX_LENGTH = 64


def make_teacher(folder: Path, classes: list[str]) -> Path:
    """A random 2-layer, 64-wide BERT classifier with MiniLM's tokenizer, saved as an HF directory."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(bc.minilm_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, num_labels=len(classes),
                        id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)})
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def job_document(teacher: Path, train: Path, evals: Path, out: Path) -> dict:
    return {
        "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "memory-rows"},
        "spec": {
            "teacher": {"uri": str(teacher), "format": "huggingface", "task": "sequence-classification"},
            "dataset": {"format": "jsonl", "trainUri": str(train), "evalUri": str(evals), "textField": "text",
                        "labelField": "label", "maxSequenceLength": MAX_LENGTH},
            "student": {"method": "uniform", "keepLayers": 1},
            "distillation": {"epochs": 1, "batchSize": 64, "learningRate": 1.0e-4, "seed": 0},
            "targets": {"hardware": "cpu"},
            "benchmark": {"batchSize": 8, "sequenceLength": MAX_LENGTH, "iterations": 10, "warmup": 2},
            "export": {"formats": ["onnx", "safetensors"], "int8": False},
            "output": {"uri": str(out)},
        },
    }


def status_kib(pid: int) -> dict[str, int]:
    """VmHWM, RssAnon and RssFile of a live process, in KiB (empty once it has exited)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmHWM", "RssAnon", "RssFile"):
                out[name] = int(value.split()[0])
    except (OSError, ValueError):
        return {}
    return out


def run_watched(job_file: Path) -> dict:
    """One `distillery run`, its memory sampled every 0.1 s."""
    command = [sys.executable, "-m", "distillery.cli", "run", str(job_file), "--json", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for name, value in status_kib(proc.pid).items():
                peaks[name] = max(peaks[name], value)
            time.sleep(0.1)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate()
    done.set()
    watcher.join()
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 3):
        raise SystemExit(f"the run failed ({proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads(stdout)
    return {"wall_s": round(wall, 1), "exit": proc.returncode,
            "peak_rss_mib": round(peaks["VmHWM"] / 1024, 1),
            "peak_anon_mib": round(peaks["RssAnon"] / 1024, 1), "peak_file_mib": round(peaks["RssFile"] / 1024, 1),
            "steps": result["training"]["steps"], "accuracy": result["student"]["accuracy"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    factors = (1, 10) if args.quick else (1, 10, 100)
    info = bc.machine()
    train_rows, eval_rows = bc.bbc_split()
    classes = bc.class_names(train_rows)
    measured = []
    with tempfile.TemporaryDirectory(prefix="memory-rows-") as tmp:
        work = Path(tmp)
        teacher = make_teacher(work / "teacher", classes)
        evals = bc.write_jsonl(work / "eval.jsonl", eval_rows)
        for factor in factors:
            train = bc.write_jsonl(work / f"train-{factor}x.jsonl", train_rows * factor)
            job_file = work / f"job-{factor}x.yaml"
            job_file.write_text(yaml.safe_dump(job_document(teacher, train, evals, work / f"out-{factor}x")))
            bc.log(f"{factor}x: {len(train_rows) * factor} train rows, {train.stat().st_size / 2**20:.0f} MiB of JSONL")
            row = {"factor": factor, "rows": len(train_rows) * factor,
                   "jsonl_mib": round(train.stat().st_size / 2**20, 1), **run_watched(job_file)}
            bc.log(f"{factor}x: peak RSS {row['peak_rss_mib']} MiB, peak anonymous {row['peak_anon_mib']} MiB, "
                   f"peak file-backed {row['peak_file_mib']} MiB ({row['wall_s']} s)")
            measured.append(row)
            train.unlink()
    first, last = measured[0], measured[-1]
    growth = (last["peak_anon_mib"] - first["peak_anon_mib"]) / (last["rows"] - first["rows"]) * 2**20
    document = {"machine": info, "max_length": MAX_LENGTH, "eval_rows": len(eval_rows), "runs": measured,
                "anonymous_bytes_per_added_row": round(growth, 1)}
    table = bc.markdown_table(
        ["train rows", "JSONL MiB", "peak RSS MiB", "peak anonymous MiB", "peak file-backed MiB", "wall s",
         "steps"],
        [[f"{r['rows']:,} ({r['factor']}x)", r["jsonl_mib"], r["peak_rss_mib"], r["peak_anon_mib"],
          r["peak_file_mib"], r["wall_s"], r["steps"]] for r in measured])
    markdown = f"""# Peak memory as the train split grows (benchmarks/memory_rows.py{' --quick' if args.quick else ''})

BBC News train articles repeated {', '.join(f'{f}x' for f in factors)} ({len(eval_rows)} eval rows
unchanged), a random 2-layer 64-wide BERT classifier as teacher, {MAX_LENGTH} tokens, 1 epoch, one
fresh `distillery run` per size, sampled every 0.1 s.

{bc.machine_markdown(info)}

{table}

- Anonymous memory per added train row, {first['rows']:,} to {last['rows']:,} rows:
  **{growth:.0f} bytes** (labels, line offsets and the epoch's order are the only per-row state
  held in memory; the texts, token ids and teacher outputs are read from disk a chunk or a batch
  at a time).
- Peak RSS counts the pages of the memory-mapped data files the run touched; they are page cache
  the kernel drops under pressure (file-backed), not memory the run holds.
"""
    md, js = bc.write_results("memory-rows-quick" if args.quick else "memory-rows", markdown, document)
    print(markdown)
    bc.log(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
