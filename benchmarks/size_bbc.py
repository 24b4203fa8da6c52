"""How small a BBC student can get: depth, width, vocabulary and int8, alone and together.

The quality benchmark's setup (the fine-tuned MiniLM-L6 classifier on BBC News, its data and
training recipe); each recipe is one real `distillery run` job, and every figure comes from that
job's result.json: parameters, ONNX file size, runtime memory of the onnxruntime session, batch-1
latency speedup and accuracy retention, for the fp32 and the int8 variant. The last table answers
issue 13's question: the smallest student (by file and by parameters) that keeps >= 97% of the
teacher's accuracy, and how far it is from 10x smaller and 4x faster.

Recipes (all heal by KD on the teacher's logits; names say what is cut):
  depth3            keep 3 of 6 layers (ablation importance), the quality benchmark's student
  depth3-width      + half the attention heads and half the FFN neurons (activation importance)
  depth3-vocab      + the vocabulary the train split uses
  depth3-all        + width and vocabulary
  depth2-all        keep 2 layers, + width and vocabulary
  depth2-narrow     keep 2 layers, a quarter of the FFN neurons, half the heads, the vocabulary

    python benchmarks/size_bbc.py [--quick] [--recipes depth3,depth3-all]
Writes benchmarks/results/size-bbc[-quick].md/.json. Takes about 10 min per recipe on 2 cores
(full data); run it on an otherwise idle machine, or the latencies say little.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "trainer_image")]

from benchmarks.finetune_teacher import ensure_teacher  # noqa: E402
from benchmarks.quality import (  # noqa: E402
    GOAL_RETENTION,
    Config,
    benchmark_data,
    job_document,
    run_job,
)

from benchmarks import bench_common as bc  # noqa: E402

VOCABULARY = {"prune": True}
RECIPES: dict[str, tuple[int, dict]] = {  # name -> (layers kept, student fields beyond the depth cut)
    "depth3": (3, {}),
    "depth3-width": (3, {"width": {"heads": 0.5, "ffn": 0.5}}),
    "depth3-vocab": (3, {"vocabulary": VOCABULARY}),
    "depth3-all": (3, {"width": {"heads": 0.5, "ffn": 0.5}, "vocabulary": VOCABULARY}),
    "depth2-all": (2, {"width": {"heads": 0.5, "ffn": 0.5}, "vocabulary": VOCABULARY}),
    "depth2-narrow": (2, {"width": {"heads": 0.5, "ffn": 0.25}, "vocabulary": VOCABULARY}),
}
GOAL_SMALLER = 10.0  # issue 13: >= 10x smaller file ...
GOAL_FASTER = 4.0  # ... and >= 4x faster, at >= 97% retention


def recipe_document(name: str, config: Config, teacher: Path, data: dict, out: Path, cache: Path) -> dict:
    layers, extra = RECIPES[name]
    doc = job_document(name, "importance-kd", layers, config, teacher, data, out, None, None, cache)
    doc["spec"]["student"].update(extra)
    return doc


def rows_of(name: str, result, seconds: float) -> list[dict]:
    """One row per variant (fp32, int8), every number from the result."""
    teacher = result.teacher
    rows = []
    for variant in result.variants:
        m = variant.metrics
        rows.append({
            "recipe": name, "variant": variant.name, "accuracy": m.accuracy,
            "retention": variant.accuracy_retention, "speedup": variant.speedup,
            "parameters": m.parameters, "size_bytes": m.size_bytes, "memory_bytes": m.memory_bytes,
            "smaller": teacher.size_bytes / m.size_bytes if m.size_bytes else None,
            "fewer_parameters": teacher.parameters / m.parameters if m.parameters else None,
            "less_memory": (teacher.memory_bytes / m.memory_bytes
                            if teacher.memory_bytes and m.memory_bytes else None),
            "width": None if result.width is None else result.width.summary(),
            "vocabulary": None if result.vocabulary is None else result.vocabulary.model_dump(mode="json"),
            "seconds": round(seconds, 1),
        })
    return rows


def smallest(rows: list[dict], key: str) -> dict | None:
    keeping = [r for r in rows if r["retention"] is not None and r["retention"] >= GOAL_RETENTION]
    return min(keeping, key=lambda r: (r[key], -r["retention"])) if keeping else None


def markdown(rows: list[dict], teacher: dict, config: Config, info: dict, wall: float) -> str:
    mb = 1e6
    lines = [f"# Student size on BBC News ({'quick' if config.quick else 'full'} setup)", "",
             f"Run {datetime.now().isoformat(timespec='minutes')}, {wall / 60:.1f} min. Teacher: accuracy "
             f"{teacher['accuracy']:.4f}, {teacher['parameters']:,} parameters, {teacher['size_bytes'] / mb:.1f} MB "
             f"ONNX, {(teacher['memory_bytes'] or 0) / mb:.1f} MB runtime memory.", "",
             bc.markdown_table(
                 ["recipe", "variant", "accuracy", "retention", "speedup", "parameters", "ONNX MB", "memory MB",
                  "x smaller", "x fewer params"],
                 [[r["recipe"], r["variant"], f"{r['accuracy']:.4f}", f"{r['retention']:.4f}", f"{r['speedup']:.2f}x",
                   f"{r['parameters']:,}", f"{r['size_bytes'] / mb:.1f}",
                   "-" if r["memory_bytes"] is None else f"{r['memory_bytes'] / mb:.1f}",
                   f"{r['smaller']:.2f}", f"{r['fewer_parameters']:.2f}"] for r in rows]), ""]
    for key, what in (("size_bytes", "file"), ("parameters", "parameters")):
        best = smallest(rows, key)
        if best is None:
            lines.append(f"- Smallest by {what} at >= {GOAL_RETENTION:.0%} retention: none kept it.")
            continue
        met = best["smaller"] >= GOAL_SMALLER and best["speedup"] >= GOAL_FASTER
        lines.append(f"- Smallest by {what} at >= {GOAL_RETENTION:.0%} retention: {best['recipe']} {best['variant']} "
                     f"({best['smaller']:.2f}x smaller file, {best['fewer_parameters']:.2f}x fewer parameters, "
                     f"{best['speedup']:.2f}x faster): the goal ({GOAL_SMALLER:g}x smaller and {GOAL_FASTER:g}x faster) "
                     f"is {'met' if met else 'not met'}.")
    lines += ["", "Machine:", "", bc.machine_markdown(info)]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="400 train / 200 eval articles, 1 epoch")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--cache-dir", type=Path, default=bc.DEFAULT_CACHE)
    args = parser.parse_args(argv)
    names = [n for n in args.recipes.split(",") if n]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: {', '.join(RECIPES)}")
    config = Config.make(args.quick)
    train_rows, eval_rows = benchmark_data(config)
    labels = bc.class_names(train_rows)
    data_dir = args.cache_dir / f"data-{bc.digest([config.train_rows, config.eval_rows, config.seed])}"
    data = {"train": bc.write_jsonl(data_dir / "train.jsonl", train_rows).resolve(),
            "eval": bc.write_jsonl(data_dir / "eval.jsonl", eval_rows).resolve()}
    teacher, _, _ = ensure_teacher(args.cache_dir, config.teacher, train_rows, eval_rows, labels)
    work = (args.cache_dir / "runs" / f"size-bbc{'-quick' if args.quick else ''}").resolve()
    started = time.perf_counter()
    rows, teacher_metrics = [], None
    for name in names:
        bc.log(f"{name}: running")
        doc = recipe_document(name, config, teacher, data, work / name, work / "cache")
        result, seconds = run_job(doc, work / name)
        teacher_metrics = result.teacher.model_dump()
        rows += rows_of(name, result, seconds)
        bc.log(f"{name}: done in {seconds:.0f} s: " + "; ".join(
            f"{r['variant']} {r['retention']:.3f} retention, {r['speedup']:.2f}x, {r['smaller']:.2f}x smaller"
            for r in rows if r["recipe"] == name))
    info = bc.machine()
    wall = time.perf_counter() - started
    name = f"size-bbc{'-quick' if args.quick else ''}"
    md, js = bc.write_results(name, markdown(rows, teacher_metrics, config, info, wall),
                              {"config": {"quick": config.quick, "recipes": {n: RECIPES[n] for n in names}},
                               "teacher": teacher_metrics, "rows": rows, "machine": info, "wall_seconds": wall})
    bc.log(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
