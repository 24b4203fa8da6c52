"""How good a causal LM is on held-out text: perplexity, next-token accuracy, top-1 agreement with
the teacher, and zero-shot classification by the likelihood of each label's tokens.

Everything streams over batches through `logits_of(batch) -> (B, L, V)`, so the same code scores
a torch model or an ONNX session, and no split's full logits are ever held at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.lm.logits import next_token_nll

LogitsOf = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class LMQuality:
    perplexity: float  # exp(mean next-token negative log-likelihood)
    next_token_accuracy: float  # share of positions whose most likely token is the next token
    agreement: float | None  # share of positions whose top-1 equals the teacher's (None: the teacher)
    tokens: int  # predicted positions that perplexity and accuracy are over


def lm_quality(logits_of: LogitsOf, data: Encoded, batch_size: int, device: torch.device | str,
               teacher_top1: torch.Tensor | None = None) -> LMQuality:
    """Perplexity and next-token accuracy over positions 0..L-2 of every block; agreement with
    `teacher_top1` (N, L), the teacher's most likely next token, over all L positions."""
    if teacher_top1 is not None and teacher_top1.shape != data.tensors["input_ids"].shape:
        raise ValueError("teacher top-1 tokens and the eval blocks have different shapes")
    nll_sum, correct, predicted = 0.0, 0, 0
    agreed, compared = 0, 0
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            rows = slice(start, start + batch_size)
            batch = data.batch(rows, device)
            logits = logits_of(batch)
            # An ONNX session hands back CPU logits whatever `device` is: score where they are.
            ids, mask = batch["input_ids"].to(logits.device), batch["attention_mask"].to(logits.device).bool()
            top1 = logits.argmax(-1)
            # A position counts when it and the token it predicts are both real (not padding).
            scored = mask[:, :-1] & mask[:, 1:]
            nll_sum += float(next_token_nll(logits, ids)[scored].double().sum())
            correct += int((top1[:, :-1] == ids[:, 1:])[scored].sum())
            predicted += int(scored.sum())
            if teacher_top1 is not None:
                teacher = teacher_top1[rows, : ids.shape[1]].to(top1.device)
                agreed += int((top1 == teacher)[mask].sum())
                compared += int(mask.sum())
    if predicted == 0:
        raise InputError("dataset: the eval split has no block of at least 2 tokens to score")
    mean_nll = nll_sum / predicted
    return LMQuality(
        perplexity=math.exp(mean_nll) if mean_nll < 700 else math.inf,
        next_token_accuracy=correct / predicted,
        agreement=None if teacher_top1 is None else agreed / max(compared, 1),
        tokens=predicted,
    )


# Sequences per forward in zero-shot scoring: batching rows keeps CPU matrix products efficient,
# and 8 x 128 positions x a 49k vocabulary is about 200 MB of logits.
ZERO_SHOT_BATCH = 8


def _padded(sequences: list[tuple[int, ...]], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Right-padded ids and mask: a causal model never looks ahead, so padding after a sequence
    cannot change its real positions' logits."""
    width = max(len(seq) for seq in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _sequences(prompt: list[int], continuations: list[list[int]]) -> list[tuple[int, ...]]:
    """What must run for one prompt: prompt + each continuation minus its last token (that token
    is only ever a target), each distinct sequence once (single-token labels: the prompt alone)."""
    if not prompt:
        raise ValueError("a zero-shot prompt needs at least one token")
    return list(dict.fromkeys(tuple(prompt + cont[:-1]) for cont in continuations))


def batch_label_scores(logits_of: LogitsOf, prompts: list[list[int]], continuations: list[list[int]],
                       device: torch.device | str, per_token: bool) -> torch.Tensor:
    """Log-likelihood (P, labels) of each continuation after each prompt, summed over its tokens
    or averaged per token, from one forward over all the prompts' sequences."""
    row_of: dict[tuple[int, ...], int] = {}
    for prompt in prompts:
        for seq in _sequences(prompt, continuations):
            row_of.setdefault(seq, len(row_of))
    logits = logits_of(_padded(list(row_of), device))
    rows, positions, targets, owners = [], [], [], []
    for pair, (prompt, cont) in enumerate((p, c) for p in prompts for c in continuations):
        row = row_of[tuple(prompt + cont[:-1])]
        rows += [row] * len(cont)
        positions += range(len(prompt) - 1, len(prompt) - 1 + len(cont))
        targets += cont
        owners += [pair] * len(cont)
    at = logits.device
    predicting = logits[torch.tensor(rows, device=at), torch.tensor(positions, device=at)].float()
    token_logprobs = (predicting.gather(-1, torch.tensor(targets, device=at).unsqueeze(-1)).squeeze(-1)
                      - torch.logsumexp(predicting, dim=-1)).cpu()
    pairs = len(prompts) * len(continuations)
    scores = torch.zeros(pairs, dtype=torch.float64).index_add_(0, torch.tensor(owners), token_logprobs.double())
    if per_token:
        scores /= torch.tensor([len(c) for c in continuations] * len(prompts), dtype=torch.float64)
    return scores.view(len(prompts), len(continuations))


def label_scores(logits_of: LogitsOf, prompt: list[int], continuations: list[list[int]],
                 device: torch.device | str, per_token: bool) -> torch.Tensor:
    """Log-likelihood of each continuation after one prompt (summed, or mean per token)."""
    return batch_label_scores(logits_of, [prompt], continuations, device, per_token)[0]


def _prompt_groups(prompts: list[list[int]], sequences_per_prompt: int, batch: int):
    """Consecutive prompts in groups whose sequences fill at most `batch` rows (one prompt at least)."""
    size = max(1, batch // sequences_per_prompt)
    for start in range(0, len(prompts), size):
        yield start, prompts[start:start + size]


def zero_shot_accuracy(logits_of: LogitsOf, examples, device: torch.device | str,
                       per_token: bool = False, batch_size: int = ZERO_SHOT_BATCH) -> float:
    """Share of examples whose gold label's continuation is the most likely after its prompt.

    The default scores a label by the summed log-probability of its tokens, the likelihood of the
    whole label; `per_token` averages instead, which lets a long label whose later tokens are
    near-certain beat a likelier short one. On the BBC topics every label is one SmolLM2 token,
    so both give the same answer there."""
    if len(examples.prompt_ids) == 0:
        raise InputError("dataset.evalUri: no labelled rows to score zero-shot")
    continuations = [list(map(int, c)) for c in examples.label_ids]
    if not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("every zero-shot label needs at least one continuation token")
    prompts = [list(map(int, p)) for p in examples.prompt_ids]
    sequences_per_prompt = len({tuple(c[:-1]) for c in continuations})
    correct = 0
    with torch.inference_mode():
        for start, group in _prompt_groups(prompts, sequences_per_prompt, batch_size):
            picked = batch_label_scores(logits_of, group, continuations, device, per_token).argmax(-1)
            gold = torch.tensor([int(g) for g in examples.gold[start:start + len(group)]])
            correct += int((picked == gold).sum())
    return correct / len(prompts)


def teacher_top1_tokens(logits_of: LogitsOf, data: Encoded, batch_size: int,
                        device: torch.device | str) -> torch.Tensor:
    """The teacher's most likely next token at every position (N, L), for `lm_quality`'s agreement
    when the cache holds no top-k ids (in top-k mode use `topk_ids[..., 0]` instead)."""
    parts = []
    width = data.tensors["input_ids"].shape[1]
    with torch.inference_mode():
        for batch in data.batches(batch_size, device):
            top1 = logits_of(batch).argmax(-1).cpu()
            parts.append(torch.nn.functional.pad(top1, (0, width - top1.shape[1]), value=-1))
    return torch.cat(parts)
