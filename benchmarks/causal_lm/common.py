"""Shared pieces of the causal-LM benchmarks: the prepared SmolLM2 teacher and BBC eval text
(from examples/causal-lm/prepare.py), packed eval blocks, layer removal and the result file."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "trainer_image"))

from distillery_trainer.lm.text_blocks import pack_blocks  # noqa: E402

STORE = ROOT / "examples" / "causal-lm" / "store"
TEACHER = STORE / "teachers" / "smollm2-135m"
EVAL_TEXT = STORE / "data" / "bbc-eval.jsonl"
TRAIN_TEXT = STORE / "data" / "bbc-train.jsonl"
RESULTS = Path(__file__).resolve().parent / "results"


def load_teacher():
    """The prepared teacher in fp32 eval mode and its tokenizer; exits with a hint when missing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (TEACHER / "config.json").is_file():
        raise SystemExit(f"error: no teacher at {TEACHER}; run examples/causal-lm/prepare.py first")
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    model = AutoModelForCausalLM.from_pretrained(TEACHER, use_safetensors=True, dtype=torch.float32)
    return model.eval(), tokenizer


def text_blocks(path: Path, tokenizer, count: int, length: int) -> torch.Tensor:
    """`count` packed blocks of `length` tokens spread evenly over the file's text."""
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    blocks = pack_blocks([texts], tokenizer, length).tensors["input_ids"]
    picks = torch.linspace(0, blocks.shape[0] - 1, count).round().long()
    return blocks[picks]


def set_layers(model: nn.Module, keep: list[int], all_layers: nn.ModuleList) -> None:
    """Make `model` run only the decoder layers `keep` (indices into `all_layers`), renumbering
    each attention's layer_idx so the KV cache slots stay dense."""
    chosen = nn.ModuleList(all_layers[i] for i in keep)
    for new_index, layer in enumerate(chosen):
        layer.self_attn.layer_idx = new_index
    model.model.layers = chosen
    model.config.num_hidden_layers = len(chosen)
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = [model.config.layer_types[0]] * len(chosen)


@torch.no_grad()
def perplexity(model: nn.Module, blocks: torch.Tensor, batch: int = 4) -> float:
    """exp of the mean next-token negative log-likelihood over all blocks (equal lengths)."""
    total = 0.0
    for start in range(0, blocks.shape[0], batch):
        ids = blocks[start:start + batch]
        out = model(input_ids=ids, labels=ids, use_cache=False)
        total += float(out.loss) * ids.shape[0]
    return float(torch.exp(torch.tensor(total / blocks.shape[0])))


def machine_line(threads: int) -> str:
    return (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {threads} thread(s); "
            f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on a 2-core machine shared "
            "with other running work, so absolute times are inflated and noisy; compare within a table")


def publish_result(name: str, lines: list[str]) -> Path:
    """Print the result's markdown and write it to results/<name>."""
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return path
