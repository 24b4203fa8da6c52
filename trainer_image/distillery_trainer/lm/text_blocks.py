"""Text for decoders: documents packed into fixed-length token blocks, and labelled rows turned
into zero-shot classification prompts (prompt ids + one continuation per label)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer itself starts an encoded text with its BOS token (Llama does, GPT-2 not)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def document_ids(texts: list[str], tokenizer) -> list[list[int]]:
    """Each text's token ids as the model saw documents: BOS first when the tokenizer uses one,
    EOS last so that packed documents stay separated."""
    body = tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"] if texts else []
    head = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
    tail = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [head + list(ids) + tail for ids in body]


def pack_blocks(chunks: Iterable[list[str]], tokenizer, block_length: int, field: str = "dataset.trainUri",
                into: Path | None = None) -> Encoded:
    """All documents concatenated and cut into full blocks of `block_length` tokens (the ragged
    tail is dropped); there are no labels. Documents come a chunk at a time; with `into`, their
    tokens are appended to a file there and the blocks are a memory-mapped view of it, so only one
    chunk's tokens are ever in memory. The attention mask (all ones) is a broadcast view, not a copy."""
    if block_length < 2:
        raise InputError("dataset.maxSequenceLength: a decoder block needs at least 2 tokens")
    parts: list[np.ndarray] = []
    total = 0
    if into is not None:
        into.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context((into / "tokens.int64").open("wb")) if into is not None else None
        for texts in chunks:
            docs = document_ids(texts, tokenizer)
            tokens = np.fromiter(chain.from_iterable(docs), dtype=np.int64, count=sum(len(d) for d in docs))
            total += len(tokens)
            if sink is not None:
                sink.write(tokens.tobytes())
            else:
                parts.append(tokens)
    if total < block_length:
        raise InputError(f"{field}: the text gives {total} tokens, fewer than one block of {block_length}")
    blocks = total // block_length
    stream = (np.memmap(into / "tokens.int64", dtype=np.int64, mode="r+", shape=(total,)) if into is not None
              else np.concatenate(parts))
    input_ids = torch.from_numpy(stream[: blocks * block_length].reshape(blocks, block_length))
    mask = torch.ones(1, block_length, dtype=torch.long).expand(blocks, block_length)
    return Encoded({"input_ids": input_ids, "attention_mask": mask}, None)


@dataclass
class ZeroShotSet:
    """Zero-shot classification by next-token likelihood: a prompt per example, its gold label
    index, and each label's continuation tokens (" " + label name)."""

    prompt_ids: list[list[int]]
    gold: list[int]
    label_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt_ids)


def spread_rows(count: int, max_rows: int) -> list[int]:
    """Up to `max_rows` row indices spread evenly over `count` rows (files are often sorted by label)."""
    if count <= max_rows:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, max_rows)})


def _template_parts(template: str) -> tuple[str, str]:
    """The template's text before and after {text}; InputError when it has no usable {text}."""
    if "{text}" not in template:
        raise InputError("dataset.promptTemplate: must contain {text}")
    try:
        marker = "\x00"
        filled = template.format(text=marker)
    except (KeyError, IndexError, ValueError):
        raise InputError("dataset.promptTemplate: only the {text} placeholder is allowed "
                         "(write other braces as {{ and }})") from None
    prefix, _, suffix = filled.partition(marker)
    return prefix, suffix


def _fitted_prompt(text: str, offsets: list[tuple[int, int]], prefix: str, suffix: str,
                   tokenizer, budget: int) -> list[int] | None:
    """The prompt's ids with `text` cut at a token boundary so that at most `budget` tokens result."""
    keep = len(offsets)
    while keep >= 0:
        cut = text if keep == len(offsets) else text[: offsets[keep - 1][1] if keep else 0]
        ids = tokenizer(prefix + cut + suffix, add_special_tokens=True)["input_ids"]
        if len(ids) <= budget:
            return list(ids)
        # Re-tokenising the joined prompt can merge tokens differently; shrink by the overshoot.
        keep = min(keep - 1, keep - (len(ids) - budget))
    return None


def zero_shot_set(texts: list[str], labels, label_names: list[str], tokenizer, template: str,
                  max_rows: int, max_prompt_tokens: int) -> ZeroShotSet | None:
    """Labelled rows as prompts (`template` filled with the text, truncated so that prompt and the
    longest label together fit `max_prompt_tokens`); None when the split has no labels."""
    if labels is None or len(label_names) == 0:
        return None
    prefix, suffix = _template_parts(template)
    label_ids = [list(tokenizer(" " + str(name), add_special_tokens=False)["input_ids"]) for name in label_names]
    if any(len(ids) == 0 for ids in label_ids):
        raise InputError("dataset.labelField: a label name gives no tokens for zero-shot scoring")
    budget = max_prompt_tokens - max(len(ids) for ids in label_ids)
    rows = spread_rows(len(texts), max_rows)
    chosen = [str(texts[i]) for i in rows]
    offsets = tokenizer(chosen, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"] if chosen else []
    prompts, gold = [], []
    for row, text, text_offsets in zip(rows, chosen, offsets, strict=True):
        ids = _fitted_prompt(text, [tuple(o) for o in text_offsets], prefix, suffix, tokenizer, budget)
        if ids is None:
            raise InputError(f"dataset.promptTemplate: the prompt without any text is longer than "
                             f"dataset.maxSequenceLength ({max_prompt_tokens} tokens) less the longest label")
        prompts.append(ids)
        gold.append(int(labels[row]))
    return ZeroShotSet(prompts, gold, label_ids)
