"""Automatic student search on the BBC quality setup: trials, time and share of the true frontier.

The space (24 points): keepLayers 1..4 x method {importance (ablation), uniform, first} x int8
{off, on}; the targets are the quality benchmark's goal, >= 97% retention at >= 3.5x (batch 1);
the frontier's objectives are accuracy and latency. Everything runs through `distillery search`'s
own code (LocalSearch, the trainer's run_job) on the quality benchmark's data and fine-tuned teacher.

1. Ground truth: the exhaustive grid, every point a real trial.
2. A real NSGA-II search with a budget of --budget trials (seed 0): how many trials until a student
   meets the targets, how long, and the share of the true frontier it tried.
3. Replays over the grid's measurements (the sampler asks `next_params`, the answer is the grid's
   measured trial for that point): NSGA-II and TPE with 10 seeds and several budgets, so the share
   of the frontier found is an average, not one lucky run. Time = the sum of those trials' times.
4. Learning from past runs: a second search seeded with the first real search's frontier (as
   `learnFromRegistry` / `--learn-from` do), replayed against the same search without seeds: trials
   until the first search's frontier points have all been tried.
5. Sharing: one trial run with an empty cache and again with the teacher outputs and the layer
   ranking cached: the seconds a trial saves.

    python benchmarks/search_bbc.py            # quick data (400 train / 200 eval articles, 1 epoch)
    python benchmarks/search_bbc.py --full     # all 1781 / 444 articles, 128 tokens, 1 epoch (--epochs)
Writes benchmarks/results/search-bbc.md/.json (search-bbc-full.* with --full).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "trainer_image")]

from benchmarks.finetune_teacher import ensure_teacher  # noqa: E402
from benchmarks.quality import GOAL_RETENTION, GOAL_SPEEDUP, Config, benchmark_data, job_document  # noqa: E402

from benchmarks import bench_common as bc  # noqa: E402
from distillery.api.search import DistillationSearch, TrialParams  # noqa: E402
from distillery.search.local import run_local_search  # noqa: E402
from distillery.search.sampler import TrialRecord, next_params  # noqa: E402
from distillery.search.space import complete_point, point_key  # noqa: E402

SPACE = {"keepLayers": {"min": 1, "max": 4}, "method": ["importance", "uniform", "first"], "int8": [False, True]}
OBJECTIVES = ["accuracy", "latency"]
REPLAY_SEEDS = range(10)


def template(config: Config, teacher: Path, data: dict, out: Path) -> dict:
    spec = job_document("t", "importance-kd", 3, config, teacher, data, out, None, None)["spec"]
    spec["output"] = {"uri": str(out), "cacheUri": str(out / "cache")}
    return spec


def search_doc(name: str, spec: dict, algorithm: str, budget: int, seed: int = 0,
               space: dict | None = None) -> DistillationSearch:
    return DistillationSearch.model_validate({
        "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationSearch", "metadata": {"name": name},
        "spec": {"template": spec, "space": space or SPACE, "objectives": OBJECTIVES, "algorithm": algorithm,
                 "seed": seed, "budget": {"maxTrials": budget}}})


def seconds_of(result) -> float:
    return (datetime.fromisoformat(result.completion_time) - datetime.fromisoformat(result.start_time)).total_seconds()


def run_search(search: DistillationSearch, learn_from: Path | None = None):
    started = time.perf_counter()
    outcome = run_local_search(search, show_bar=False, learn_from=learn_from)
    return outcome, time.perf_counter() - started


def trial_table(search: DistillationSearch, outcome) -> dict[tuple, dict]:
    """point key -> what the trial measured (and how long it took)."""
    table = {}
    for t in outcome.status.trials:
        result = outcome.results.get(t.name)
        table[point_key(complete_point(search.spec, t.params))] = {
            "name": t.name, "params": t.params.to_wire(), "accuracy": t.accuracy, "latency_ms": t.latency_ms,
            "size_bytes": t.size_bytes, "variant": t.variant, "accepted": t.accepted, "on_frontier": t.on_frontier,
            "seconds": seconds_of(result) if result else None, "row": t}
    return table


def replay(search: DistillationSearch, grid: dict[tuple, dict], seeds: list[TrialParams]) -> list[dict]:
    """The trials a search would run, answered from the grid's measurements."""
    records, tried = [], []
    while len(tried) < search.spec.budget.max_trials:
        chosen = next_params(search.spec, records, seeds)
        if chosen is None:
            break
        key = point_key(complete_point(search.spec, chosen[0]))
        measured = grid[key]
        tried.append(measured)
        values = (measured["accuracy"], measured["latency_ms"]) if measured["accuracy"] is not None else None
        records.append(TrialRecord(chosen[0], values, True))
    return tried


def first_accepted(trials: list[dict]) -> int | None:
    return next((i + 1 for i, t in enumerate(trials) if t["accepted"]), None)


def share_found(trials: list[dict], true_frontier: set[str]) -> float:
    return len({t["name"] for t in trials} & true_frontier) / len(true_frontier)


def trials_to_cover(trials: list[dict], names: set[str]) -> int | None:
    seen = set()
    for i, t in enumerate(trials):
        seen.add(t["name"])
        if names <= seen:
            return i + 1
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=8, help="the real NSGA-II search's maxTrials")
    parser.add_argument("--cache-dir", type=Path, default=bc.DEFAULT_CACHE)
    parser.add_argument("--out-dir", type=Path, default=bc.RESULTS)
    parser.add_argument("--full", action="store_true", help="all BBC articles at 128 tokens (the full quality setup)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="healing epochs per trial (1: the grid's 24 trials fit about an hour on full data)")
    args = parser.parse_args(argv)
    wall0 = time.perf_counter()
    info = bc.machine()
    config = replace(Config.make(not args.full), epochs=args.epochs)
    train_rows, eval_rows = benchmark_data(config)
    labels = bc.class_names(train_rows)
    data_dir = args.cache_dir / f"data-{bc.digest([config.train_rows, config.eval_rows, config.seed])}"
    data = {"train": bc.write_jsonl(data_dir / "train.jsonl", train_rows).resolve(),
            "eval": bc.write_jsonl(data_dir / "eval.jsonl", eval_rows).resolve()}
    teacher, record, _ = ensure_teacher(args.cache_dir, config.teacher, train_rows, eval_rows, labels)
    teacher = teacher.resolve()
    bc.log(f"teacher: eval accuracy {record['eval_accuracy']:.4f}; {len(train_rows)} train / {len(eval_rows)} eval")
    work = (args.cache_dir / "runs" / ("search-bbc-full" if args.full else "search-bbc")).resolve()
    shutil.rmtree(work, ignore_errors=True)

    # 5 first, on an empty cache: the same trial cold, then warm.
    spec = template(config, teacher, data, work / "sharing")
    one = search_doc("cold", spec, "grid", 1, space={"keepLayers": {"min": 2, "max": 2}})
    cold, _ = run_search(one)
    shutil.rmtree(work / "sharing" / "trials")
    (work / "sharing" / "search.json").unlink()
    warm, _ = run_search(one)
    cold_s, warm_s = (seconds_of(next(iter(o.results.values()))) for o in (cold, warm))
    bc.log(f"sharing: one trial {cold_s:.0f} s cold, {warm_s:.0f} s with the teacher outputs and ranking cached")

    # 1. the ground truth
    grid_search = search_doc("grid", template(config, teacher, data, work / "grid"), "grid", 24)
    grid_outcome, grid_wall = run_search(grid_search)
    grid = trial_table(grid_search, grid_outcome)
    true_frontier = set(grid_outcome.status.frontier)
    meeting = [t for t in grid.values() if t["accepted"]]
    bc.log(f"grid: {len(grid)} trials in {grid_wall / 60:.1f} min; frontier {sorted(true_frontier)}; "
           f"{len(meeting)} meet the targets")

    # 2. a real NSGA-II search
    nsga = search_doc("nsga", template(config, teacher, data, work / "nsga"), "nsga2", args.budget)
    nsga_outcome, nsga_wall = run_search(nsga)
    nsga_trials = sorted(trial_table(nsga, nsga_outcome).values(), key=lambda t: t["row"].index)
    # Its trials matched to the grid's by their settings (the measurements differ by noise only).
    nsga_as_grid = [grid[point_key(complete_point(nsga.spec, t["row"].params))] for t in nsga_trials]
    real = {"trials": len(nsga_trials), "minutes": nsga_wall / 60,
            "first_accepted": first_accepted(nsga_trials),
            "minutes_to_first_accepted": (sum(t["seconds"] or 0 for t in nsga_trials[:first_accepted(nsga_trials)])
                                          / 60 if first_accepted(nsga_trials) else None),
            "frontier_share": share_found(nsga_as_grid, true_frontier), "best": nsga_outcome.status.best_trial,
            "params": [t["params"] for t in nsga_trials]}
    bc.log(f"nsga2 (real, budget {args.budget}): {json.dumps({k: v for k, v in real.items() if k != 'params'})}")

    # 3. replays
    replays = {}
    for algorithm in ("nsga2", "tpe"):
        for budget in (4, 6, 8, 12):
            runs = [replay(search_doc("r", grid_search.spec.template.to_wire(), algorithm, budget, seed), grid, [])
                    for seed in REPLAY_SEEDS]
            firsts = [first_accepted(r) for r in runs]
            replays[f"{algorithm}/{budget}"] = {
                "found_target_student": sum(f is not None for f in firsts),
                "median_trials_to_first": statistics.median([f for f in firsts if f]) if any(firsts) else None,
                "frontier_share_mean": statistics.fmean(share_found(r, true_frontier) for r in runs),
                "minutes_mean": statistics.fmean(sum(t["seconds"] or 0 for t in r) for r in runs) / 60}
    # The grid itself, in its fixed order, as a baseline with the same budgets.
    order = sorted(grid.values(), key=lambda t: t["row"].index)
    for budget in (4, 6, 8, 12):
        replays[f"grid order/{budget}"] = {
            "found_target_student": int(first_accepted(order[:budget]) is not None),
            "median_trials_to_first": first_accepted(order[:budget]),
            "frontier_share_mean": share_found(order[:budget], true_frontier),
            "minutes_mean": sum(t["seconds"] or 0 for t in order[:budget]) / 60}

    # 4. learning from the real search's frontier
    first_frontier = {grid[point_key(complete_point(nsga.spec, t["row"].params))]["name"]
                      for t in nsga_trials if t["on_frontier"]}
    seeds = [t["row"].params for t in nsga_trials if t["on_frontier"]]
    learn = {"first_frontier": sorted(first_frontier), "with_seeds": [], "without": []}
    for seed in REPLAY_SEEDS:
        base = search_doc("second", grid_search.spec.template.to_wire(), "nsga2", 24, seed + 100)
        learn["with_seeds"].append(trials_to_cover(replay(base, grid, seeds), first_frontier))
        learn["without"].append(trials_to_cover(replay(base, grid, []), first_frontier))

    doc = {"machine": info, "space": SPACE, "objectives": OBJECTIVES,
           "setup": {"full": args.full, "epochs": config.epochs, "max_length": config.max_length,
                     "train_rows": len(train_rows), "eval_rows": len(eval_rows)},
           "targets": {"retention": GOAL_RETENTION, "speedup": GOAL_SPEEDUP},
           "sharing": {"cold_s": cold_s, "warm_s": warm_s},
           "grid": {"minutes": grid_wall / 60, "frontier": sorted(true_frontier),
                    "trials": [{k: v for k, v in t.items() if k != "row"} for t in order]},
           "nsga2_real": real, "replays": replays, "learn": learn,
           "wall_minutes": (time.perf_counter() - wall0) / 60}
    name = "search-bbc-full" if args.full else "search-bbc"
    bc.write_results(name, markdown(doc, config, len(train_rows), len(eval_rows)), doc, args.out_dir)
    return 0


def markdown(doc: dict, config: Config, n_train: int, n_eval: int) -> str:
    trials = doc["grid"]["trials"]
    frontier = set(doc["grid"]["frontier"])
    rows = [[t["name"], json.dumps(t["params"]), t["variant"], f"{t['accuracy']:.4f}" if t["accuracy"] else "-",
             f"{t['latency_ms']:.2f}" if t["latency_ms"] else "-", f"{(t['size_bytes'] or 0) / 1e6:.1f}",
             "yes" if t["accepted"] else "no", "*" if t["name"] in frontier else "", f"{t['seconds']:.0f}"]
            for t in trials]
    r = doc["nsga2_real"]
    replay_rows = [[k, f"{v['found_target_student']}/{len(REPLAY_SEEDS) if not k.startswith('grid') else 1}",
                    v["median_trials_to_first"] if v["median_trials_to_first"] is not None else "-",
                    f"{v['frontier_share_mean']:.0%}", f"{v['minutes_mean']:.1f}"] for k, v in doc["replays"].items()]
    learn = doc["learn"]

    def med(values):
        done = [v for v in values if v is not None]
        return f"{statistics.median(done):.0f} (covered in {len(done)}/{len(values)})" if done else "never"

    return "\n".join([
        "# Automatic student search on BBC (DistillationSearch, local)", "",
        bc.machine_markdown(doc["machine"]), "",
        f"Setup: the quality benchmark's {'quick' if config.quick else 'full'} data "
        f"({n_train} train / {n_eval} eval BBC articles, "
        f"{config.max_length} tokens) and its fine-tuned MiniLM teacher (6 layers); students healed "
        f"{config.epochs} epoch(s), lr {config.learning_rate:g}, T={config.temperature:g}, alpha={config.alpha:g}. "
        f"Targets: >= {doc['targets']['retention']:.0%} retention and >= {doc['targets']['speedup']}x (batch 1, "
        "measured in each trial, teacher and student in turns). Space: keepLayers 1..4 x method "
        "{importance (ablation), uniform, first} x int8 {off, on} = 24 points; objectives accuracy and "
        "latency; each trial's student is its best variant by paretoScore among those meeting the targets.",
        "",
        "## Ground truth: the exhaustive grid", "",
        f"{len(trials)} trials, {doc['grid']['minutes']:.1f} min. Frontier (*): {', '.join(sorted(frontier))}.", "",
        bc.markdown_table(["trial", "params", "variant", "accuracy", "p50 ms", "MB", "meets targets",
                           "frontier", "s"], rows), "",
        "## A real NSGA-II search", "",
        f"Budget {r['trials']} trials, seed 0: {r['minutes']:.1f} min in all; first student meeting the targets at "
        f"trial {r['first_accepted'] or 'none'}"
        + (f" after {r['minutes_to_first_accepted']:.1f} min" if r["minutes_to_first_accepted"] else "")
        + f"; it tried {r['frontier_share']:.0%} of the grid's frontier points; best trial {r['best']}.", "",
        "## Replays over the grid's measurements (10 seeds each)", "",
        "Each sampler asks for its next point and gets the grid's measurement of it, so a budget's outcome "
        "is averaged over seeds at no extra training. 'Grid order' is the exhaustive grid cut at the "
        "budget (its fixed order).", "",
        bc.markdown_table(["algorithm/budget", "runs finding a target student", "median trials to the first",
                           "share of the true frontier tried", "mean minutes"], replay_rows), "",
        "## Learning from past runs", "",
        f"The real search's frontier ({', '.join(learn['first_frontier'])}) as seeds for a second NSGA-II search "
        f"(10 seeds): trials until every one of those points was tried: with seeds {med(learn['with_seeds'])}, "
        f"without {med(learn['without'])}.", "",
        "## Sharing the teacher outputs and the layer ranking", "",
        f"One trial (keepLayers 2): {doc['sharing']['cold_s']:.0f} s with an empty cache, "
        f"{doc['sharing']['warm_s']:.0f} s with the teacher's outputs and the layer ranking cached "
        f"({1 - doc['sharing']['warm_s'] / doc['sharing']['cold_s']:.0%} of the trial saved).", "",
        f"Wall time of this benchmark: {doc['wall_minutes']:.0f} min. Produced by `benchmarks/search_bbc.py`.", "",
    ])


if __name__ == "__main__":
    sys.exit(main())
