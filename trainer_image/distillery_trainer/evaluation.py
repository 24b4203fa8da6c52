"""Task metrics, measured on the eval split every run (tasks.py picks the one a task uses)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Quality:
    accuracy: float  # the task's primary metric, 0..1
    metric_name: str
    agreement: float | None = None  # share of predictions equal to the teacher's
    fidelity: float | None = None  # mean cosine to the teacher's embeddings
    perplexity: float | None = None  # causal-lm: held-out perplexity
    zero_shot_accuracy: float | None = None  # causal-lm: labelled eval rows by label likelihood


def knn_accuracy(index_emb: torch.Tensor, index_labels: torch.Tensor,
                 query_emb: torch.Tensor, query_labels: torch.Tensor, chunk: int = 1024,
                 index_chunk: int = 4096) -> float:
    """1-nearest-neighbour accuracy by cosine similarity (eval queries against the train split).
    The index is read a chunk of rows at a time (it may be memory-mapped and large); ties go to
    the earliest index row, as one argmax over the whole index would."""
    correct = 0
    for start in range(0, len(query_emb), chunk):
        q = F.normalize(query_emb[start:start + chunk].float(), dim=-1)
        best = torch.full((len(q),), -float("inf"))
        nearest = torch.zeros(len(q), dtype=torch.long)
        for offset in range(0, len(index_emb), index_chunk):
            part = F.normalize(index_emb[offset:offset + index_chunk].float(), dim=-1)
            sims, found = (q @ part.T).max(dim=1)
            better = sims > best
            best = torch.where(better, sims, best)
            nearest = torch.where(better, found + offset, nearest)
        correct += int((index_labels[nearest] == query_labels[start:start + chunk]).sum())
    return correct / len(query_emb)


def classification_quality(logits: torch.Tensor, labels: torch.Tensor,
                           teacher_logits: torch.Tensor | None) -> Quality:
    pred = logits.argmax(dim=1)
    agreement = None
    if teacher_logits is not None:
        agreement = float((pred == teacher_logits.argmax(dim=1)).float().mean())
    return Quality(float((pred == labels).float().mean()), "accuracy", agreement)


def embedding_quality(eval_emb: torch.Tensor, teacher_eval: torch.Tensor | None,
                      train_emb: torch.Tensor | None, train_labels: torch.Tensor | None,
                      eval_labels: torch.Tensor | None) -> Quality:
    """kNN accuracy when labels exist (the primary metric), plus cosine fidelity to the teacher."""
    fidelity = None
    if teacher_eval is not None:
        fidelity = float(F.cosine_similarity(eval_emb.float(), teacher_eval.float(), dim=-1).mean())
    if train_emb is not None and train_labels is not None and eval_labels is not None:
        acc = knn_accuracy(train_emb, train_labels, eval_emb, eval_labels)
        agreement = None
        return Quality(acc, "knn-accuracy", agreement, fidelity)
    if fidelity is None:
        raise ValueError("embedding quality needs labels or teacher embeddings")
    return Quality(fidelity, "cosine-fidelity", None, fidelity)
