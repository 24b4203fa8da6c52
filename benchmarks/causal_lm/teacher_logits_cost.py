"""What the teacher's soft labels cost per KD training step on SmolLM2: run the teacher on every
batch ("online", full-vocabulary KL) or compute its top-k next-token log-probabilities once and
read them back ("top-k" cache). Prints seconds per step, bytes per token and the break-even
number of epochs for the cache, for a few batch shapes and k values.

The KD losses and top-k extraction are the trainer's own (distillery_trainer.lm.logits); the
student is the teacher with every third layer removed (20 of 30 kept), trained with AdamW.

Usage: python benchmarks/causal_lm/teacher_logits_cost.py [--shapes 2x128 4x128] [--ks 16 64 256]
Needs examples/causal-lm/prepare.py to have run. Writes results/teacher-logits-cost.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import TRAIN_TEXT, load_teacher, machine_line, publish_result, set_layers, text_blocks

from distillery_trainer.lm.logits import lm_distillation_loss, top_k_targets

TEMPERATURE = 2.0
ALPHA = 0.5
CACHE_BLOCKS = 64  # blocks in the on-disk cache the read timing samples from


class TopK:
    def __init__(self, logprobs: torch.Tensor, ids: torch.Tensor):
        self.topk_logprobs, self.topk_ids = logprobs, ids


def median_seconds(action, repeats: int) -> float:
    action()  # warm-up: allocator and kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def student_of(teacher) -> torch.nn.Module:
    student = copy.deepcopy(teacher)
    layers = student.model.layers
    set_layers(student, [i for i in range(len(layers)) if i % 3 != 1], layers)
    return student.train()


def training_step(student, optimizer, ids: torch.Tensor, target) -> None:
    optimizer.zero_grad(set_to_none=True)
    logits = student(input_ids=ids, use_cache=False).logits
    lm_distillation_loss(logits, target, ids, TEMPERATURE, ALPHA).backward()
    optimizer.step()


def write_cache(directory: Path, logprobs: torch.Tensor, ids: torch.Tensor) -> tuple[np.memmap, np.memmap]:
    """A CACHE_BLOCKS-block cache on disk built by repeating one batch's targets (the read cost
    does not depend on the values)."""
    reps = -(-CACHE_BLOCKS // logprobs.shape[0])
    lp = np.concatenate([logprobs.numpy()] * reps)[:CACHE_BLOCKS]
    ii = np.concatenate([ids.numpy()] * reps)[:CACHE_BLOCKS]
    directory.mkdir(parents=True, exist_ok=True)
    lp_file, ii_file = directory / "logprobs.f32", directory / "ids.i32"
    lp.tofile(lp_file)
    ii.tofile(ii_file)
    return (np.memmap(lp_file, dtype=np.float32, mode="r", shape=lp.shape),
            np.memmap(ii_file, dtype=np.int32, mode="r", shape=ii.shape))


def loss_seconds(student_logits: torch.Tensor, ids: torch.Tensor, target, repeats: int) -> float:
    """Forward + backward of the KD loss alone on fixed student logits (the part that differs
    between the two strategies inside a student step)."""
    def run():
        leaf = student_logits.detach().requires_grad_(True)
        lm_distillation_loss(leaf, target, ids, TEMPERATURE, ALPHA).backward()
    return median_seconds(run, repeats)


def measure_shape(teacher, student, optimizer, blocks: torch.Tensor, ks: list[int], repeats: int) -> dict:
    """Every variant's step is timed once per round, rounds repeated, so that load from other
    processes on the shared machine falls on all variants alike; medians are reported."""
    batch = blocks.shape[0]
    rng = np.random.default_rng(0)
    with torch.no_grad():
        teacher_logits = teacher(input_ids=blocks, use_cache=False).logits
        student_logits = student(input_ids=blocks, use_cache=False).logits
    targets = {k: TopK(*top_k_targets(teacher_logits, k, TEMPERATURE)) for k in ks}
    row = {"loss_full": loss_seconds(student_logits, blocks, teacher_logits, repeats),
           "loss_topk": {k: loss_seconds(student_logits, blocks, targets[k], repeats) for k in ks},
           "topk": {k: median_seconds(lambda k=k: top_k_targets(teacher_logits, k, TEMPERATURE), repeats) for k in ks}}
    with tempfile.TemporaryDirectory() as tmp:
        maps = {k: write_cache(Path(tmp) / str(k), targets[k].topk_logprobs, targets[k].topk_ids) for k in ks}

        def online():
            with torch.no_grad():
                logits = teacher(input_ids=blocks, use_cache=False).logits
            training_step(student, optimizer, blocks, logits)

        def read(k):
            rows = np.sort(rng.choice(CACHE_BLOCKS, size=batch, replace=False))
            lp_map, ii_map = maps[k]
            return torch.from_numpy(np.ascontiguousarray(lp_map[rows])), torch.from_numpy(np.ascontiguousarray(ii_map[rows]))

        def cached(k):
            read(k)  # the cache holds other blocks' targets; the step trains on this batch's (same shapes)
            training_step(student, optimizer, blocks, targets[k])

        row["read"] = {k: median_seconds(lambda k=k: read(k), repeats) for k in ks}
        variants = {"teacher": lambda: teacher(input_ids=blocks, use_cache=False), "online": online}
        variants.update({f"cached-{k}": (lambda k=k: cached(k)) for k in ks})
        for action in variants.values():
            action()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, action in variants.items():
                began = time.perf_counter()
                with torch.no_grad() if name == "teacher" else contextlib.nullcontext():
                    action()
                times[name].append(time.perf_counter() - began)
    row["teacher"] = statistics.median(times["teacher"])
    row["online"] = statistics.median(times["online"])
    row["cached"] = {k: statistics.median(times[f"cached-{k}"]) for k in ks}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["2x128", "4x128"])
    parser.add_argument("--ks", nargs="+", type=int, default=[16, 64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    teacher, tokenizer = load_teacher()
    vocab = teacher.config.vocab_size
    student = student_of(teacher)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    started = time.monotonic()
    results = {}
    for shape in args.shapes:
        batch, length = (int(x) for x in shape.split("x"))
        blocks = text_blocks(TRAIN_TEXT, tokenizer, batch, length)
        results[shape] = measure_shape(teacher, student, optimizer, blocks, args.ks, args.repeats)
        print(f"{shape}: {results[shape]} ({time.monotonic() - started:.0f} s)", flush=True)

    lines = [
        "# Teacher logits for KD on SmolLM2-135M: online vs a top-k cache",
        "",
        f"{machine_line(args.threads)}. Each round times every variant once, in turn, so other "
        f"processes' load falls on all alike; medians of {args.repeats} rounds after a warm-up; "
        f"{time.monotonic() - started:.0f} s in all. Produced by `benchmarks/causal_lm/teacher_logits_cost.py`.",
        "",
        f"Student: the 30-layer teacher with every third layer removed (20 kept), AdamW, loss = {ALPHA} x "
        f"KL(T={TEMPERATURE}) + {1 - ALPHA:g} x cross-entropy, the trainer's own loss functions. *Online step* "
        "= the teacher's forward on the batch plus a student step against the full-vocabulary KL. "
        "*Cached step* = reading the batch's top-k targets from a memory-mapped file plus a student step "
        "against the top-k KL (k tokens + one bucket for the rest). *Build* = the once-only cost per "
        "batch: the teacher's forward plus the top-k extraction. *Loss* = forward + backward of the KD "
        "loss alone on fixed logits. Break-even = epochs after which build once + cached steps beats "
        "online steps: build / (online - cached).",
        "",
        "| batch x tokens | k | teacher forward s | online step s | cached step s | cached / online "
        "| build s (once) | read ms | loss full / top-k s | break-even epochs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shape, r in results.items():
        for k in args.ks:
            build = r["teacher"] + r["topk"][k]
            cached = r["read"][k] + r["cached"][k]
            saving = r["online"] - cached
            even = f"{build / saving:.2f}" if saving > 0 else "never"
            lines.append(f"| {shape} | {k} | {r['teacher']:.2f} | {r['online']:.2f} | {cached:.2f} | "
                         f"{cached / r['online']:.2f} | {build:.2f} | {r['read'][k] * 1000:.2f} | "
                         f"{r['loss_full']:.3f} / {r['loss_topk'][k]:.3f} | {even} |")
    lines += [
        "",
        "Storage per token (float32 log-probabilities + int32 ids, as the cache stores them):",
        "",
        "| k | bytes / token | 1M tokens |",
        "|---:|---:|---:|",
    ]
    for k in args.ks + [vocab]:
        per_token = k * 8 if k < vocab else vocab * 4
        label = f"{k} (full vocabulary, logits only)" if k >= vocab else str(k)
        lines.append(f"| {label} | {per_token:,} | {per_token * 1e6 / 2**30:.2f} GiB |")
    publish_result("teacher-logits-cost.md", lines)


if __name__ == "__main__":
    main()
