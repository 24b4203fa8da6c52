"""Forgetting on text: incremental distillation on a class split of BBC News, replay and EWC on/off.

The quality benchmark's teacher (MiniLM-L6 fine-tuned on all 5 BBC topics) and recipe. A parent
student (3 of 6 layers, KD) learns the old topics only; then each remedy continues that parent on
the new topics only, with soft labels (KD, alpha 0.5) and with hard labels alone (alpha 0, the
hardest case, as in docs/incremental.md's digits table). Every figure comes from the continued
job's result.json: old-topic eval accuracy before and after (the forgetting) and new-topic eval
accuracy. Each is one real `distillery run` job.

Old topics: business, entertainment, politics; new: the other two (sports, tech).

    python benchmarks/forgetting_bbc.py [--quick] [--remedies "none,replay 0.5"] [--alphas 0.5]
Writes benchmarks/results/forgetting-bbc[-quick].md/.json. The quick setup (400 train / 200 eval
articles) takes about 4 minutes on 2 cores once the quick teacher is fine-tuned.
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
from benchmarks.quality import Config, benchmark_data, job_document, run_job  # noqa: E402

from benchmarks import bench_common as bc  # noqa: E402

OLD_TOPICS = ("business", "entertainment", "politics")
LAYERS = 3
# The continuation trains longer than the parent's recipe: forgetting needs steps on the new data.
CONTINUE_EPOCH_FACTOR = 2
REMEDIES: dict[str, dict] = {  # name -> (incremental, distillation) fields beyond the previous splits
    "none": {},
    "replay 0.25": {"incremental": {"replayShare": 0.25}},
    "replay 0.5": {"incremental": {"replayShare": 0.5}},
    "EWC 1e5": {"distillation": {"ewc": {"lambda": 1e5, "fisherBatches": 8}}},
    "EWC 1e6": {"distillation": {"ewc": {"lambda": 1e6, "fisherBatches": 8}}},
    "EWC 1e7": {"distillation": {"ewc": {"lambda": 1e7, "fisherBatches": 8}}},
    "replay 0.25 + EWC 1e6": {"incremental": {"replayShare": 0.25},
                              "distillation": {"ewc": {"lambda": 1e6, "fisherBatches": 8}}},
}
LABELS = {0.5: "KD (alpha 0.5)", 0.0: "hard labels (alpha 0)"}


def split_by_topic(rows: list[tuple[str, str]]) -> tuple[list, list]:
    old = [r for r in rows if r[1] in OLD_TOPICS]
    return old, [r for r in rows if r[1] not in OLD_TOPICS]


def quiet_benchmark(doc: dict) -> dict:
    """Latency is not this benchmark's question: a short measurement and no int8 export."""
    doc["spec"]["benchmark"].update(warmup=1, iterations=3)
    doc["spec"]["export"]["int8"] = False
    return doc


def parent_document(config: Config, teacher: Path, data: dict, out: Path, cache: Path) -> dict:
    doc = job_document("parent", "importance-kd", LAYERS, config, teacher,
                       {"train": data["old_train"], "eval": data["old_eval"]}, out, None, None, cache)
    doc["spec"]["targets"] = {"hardware": "cpu"}
    return quiet_benchmark(doc)


def continued_document(name: str, alpha: float, config: Config, teacher: Path, data: dict, parent: Path,
                       out: Path, cache: Path) -> dict:
    doc = job_document("continued", "importance-kd", LAYERS, config, teacher,
                       {"train": data["new_train"], "eval": data["new_eval"]}, out, None, None, cache)
    spec = doc["spec"]
    spec["student"] = {"base": {"uri": str(parent), "format": "huggingface"}, "keepRatio": 1}
    spec["distillation"].update(alpha=alpha, epochs=config.epochs * CONTINUE_EPOCH_FACTOR)
    spec["incremental"] = {"previousTrainUri": str(data["old_train"]), "previousEvalUri": str(data["old_eval"])}
    for section, fields in REMEDIES[name].items():
        spec[section].update(fields)
    spec["targets"] = {"hardware": "cpu"}
    return quiet_benchmark(doc)


def markdown(rows: list[dict], parent: dict, teacher: dict, config: Config, info: dict, wall: float,
             counts: dict) -> str:
    lines = [f"# Forgetting on BBC News ({'quick' if config.quick else 'full'} setup)", "",
             f"Run {datetime.now().isoformat(timespec='minutes')}, {wall / 60:.1f} min. Old topics "
             f"{', '.join(OLD_TOPICS)} ({counts['old_train']} train / {counts['old_eval']} eval articles); new topics "
             f"{', '.join(counts['new_topics'])} ({counts['new_train']} / {counts['new_eval']}). Teacher (all 5 topics): accuracy "
             f"{teacher['accuracy']:.4f} on the new-topic eval. Parent: {LAYERS} of 6 layers distilled on the old "
             f"topics, {config.epochs} epoch(s), old-topic eval accuracy {parent['accuracy']:.4f}. Each row continues "
             f"the parent on the new topics only for {config.epochs * CONTINUE_EPOCH_FACTOR} epoch(s). One old eval "
             f"article is {1 / counts['old_eval']:.4f} of its accuracy.", "",
             bc.markdown_table(
                 ["labels", "remedy", "old topics before", "old topics after", "forgetting", "new topics",
                  "replayed rows", "minutes"],
                 [[LABELS[r["alpha"]], r["remedy"], f"{r['before']:.4f}", f"{r['after']:.4f}", f"{r['forgetting']:+.4f}",
                   f"{r['new']:.4f}", str(r["replayed"]), f"{r['seconds'] / 60:.1f}"] for r in rows]), ""]
    lines += ["Old-topic accuracy is over the 5 topics: an old article predicted as a new topic counts as "
              "wrong. `forgetting` = before - after.", "", "Machine:", "", bc.machine_markdown(info)]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="400 train / 200 eval articles")
    parser.add_argument("--remedies", default=",".join(REMEDIES), help="a comma-separated subset of the remedies")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in LABELS),
                        help="0.5 (KD), 0 (hard labels) or both")
    parser.add_argument("--cache-dir", type=Path, default=bc.DEFAULT_CACHE)
    args = parser.parse_args(argv)
    remedies = [r.strip() for r in args.remedies.split(",") if r.strip()]
    alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    unknown = sorted(set(remedies) - set(REMEDIES)) + [f"{a:g}" for a in alphas if a not in LABELS]
    if unknown:
        parser.error(f"unknown remedies or alphas {unknown}; remedies: {', '.join(REMEDIES)}; alphas: 0.5, 0")
    config = Config.make(args.quick)
    train_rows, eval_rows = benchmark_data(config)
    labels = bc.class_names(train_rows)
    teacher, _, _ = ensure_teacher(args.cache_dir, config.teacher, train_rows, eval_rows, labels)
    old_train, new_train = split_by_topic(train_rows)
    old_eval, new_eval = split_by_topic(eval_rows)
    data_dir = args.cache_dir / f"forgetting-{bc.digest([config.train_rows, config.eval_rows, config.seed])}"
    data = {name: bc.write_jsonl(data_dir / f"{name}.jsonl", rows).resolve() for name, rows in
            (("old_train", old_train), ("old_eval", old_eval), ("new_train", new_train), ("new_eval", new_eval))}
    counts = {"old_train": len(old_train), "old_eval": len(old_eval), "new_train": len(new_train),
              "new_eval": len(new_eval), "new_topics": sorted({label for _, label in new_train})}
    work = (args.cache_dir / "runs" / f"forgetting-bbc{'-quick' if args.quick else ''}").resolve()
    started = time.perf_counter()
    bc.log("parent: distilling the old topics")
    parent, seconds = run_job(parent_document(config, teacher, data, work / "parent", work / "cache"), work / "parent")
    bc.log(f"parent: old-topic accuracy {parent.student.accuracy:.4f} in {seconds:.0f} s")
    rows, teacher_metrics = [], None
    for alpha in alphas:
        for remedy in remedies:
            out = work / f"alpha{alpha:g}-{remedy.replace(' ', '').replace('+', '-')}"
            result, seconds = run_job(continued_document(remedy, alpha, config, teacher, data, work / "parent" / "model",
                                                         out, work / "cache"), out)
            inc = result.incremental
            teacher_metrics = result.teacher.model_dump()
            rows.append({"alpha": alpha, "remedy": remedy, "before": inc.previous_accuracy_before,
                         "after": inc.previous_accuracy_after, "forgetting": inc.forgetting,
                         "new": result.student.accuracy, "replayed": inc.replayed_rows, "ewc_lambda": inc.ewc_lambda,
                         "fisher_rows": inc.fisher_rows, "seconds": round(seconds, 1)})
            bc.log(f"{LABELS[alpha]}, {remedy}: old {inc.previous_accuracy_before:.4f} -> "
                   f"{inc.previous_accuracy_after:.4f}, new {result.student.accuracy:.4f} ({seconds:.0f} s)")
    info = bc.machine()
    wall = time.perf_counter() - started
    name = f"forgetting-bbc{'-quick' if args.quick else ''}"
    md, js = bc.write_results(name, markdown(rows, parent.student.model_dump(), teacher_metrics, config, info, wall,
                                             counts),
                              {"config": {"quick": config.quick, "old_topics": OLD_TOPICS, "layers": LAYERS,
                                          "continue_epochs": config.epochs * CONTINUE_EPOCH_FACTOR,
                                          "remedies": {r: REMEDIES[r] for r in remedies}, "alphas": alphas},
                               "counts": counts, "parent": parent.student.model_dump(), "teacher": teacher_metrics,
                               "rows": rows, "machine": info, "wall_seconds": wall})
    bc.log(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
