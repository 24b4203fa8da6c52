"""Several teachers as one: the soft labels a student learns from an ensemble.

`ensemble.teachers` are more teachers of the same task and classes as `teacher`, reading the same
inputs (for text, the same tokenizer). `teacher` stays the model the student is cut from and
measured against; each teacher runs once on both splits (cached per teacher), and the student
learns from their weighted mixture:

- classification: the mixture of the teachers' class distributions at the distillation
  temperature T, p = sum_i w_i softmax(z_i / T), handed to the loss as the logits T * log p. The
  softmax of those at T is p exactly, so the KD term is KL(student || mixture) with no change to
  the loss, and the hard-label term is untouched;
- sentence embeddings: the weighted mean of the teachers' unit-length embeddings, which the cosine
  loss pulls the student towards;
- causal LMs (teachers sharing one tokenizer): each teacher's cache holds its k most likely next
  tokens per position at T; the mixture gives every token in any teacher's list the weighted sum
  of the probabilities listed for it, w_i p_i, and keeps the k largest. A teacher that did not
  list a token contributes nothing to it (its share stays in the rest bucket of the top-k loss),
  so a kept token's mixture probability is exact when every teacher listed it and a lower bound
  otherwise, by at most sum_i w_i p_i(k-th token of teacher i).

Mixing distributions rather than logits keeps each teacher's confidence: averaging logits would let
one teacher with large logits decide alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from distillery.api.result import EnsembleMember, EnsembleReport
from distillery_trainer.errors import InputError
from distillery_trainer.outputs import OutputWriter, TeacherOutputs


@dataclass
class EnsembleRun:
    """Every teacher's outputs (`teacher` first) and their mixture, on both splits."""

    uris: list[str]
    weights: list[float]  # normalized
    trains: list[TeacherOutputs]
    evals: list[TeacherOutputs]
    soft_train: TeacherOutputs  # what the student learns from
    soft_eval: TeacherOutputs


def normalized(weights: list[float]) -> list[float]:
    total = float(sum(weights))
    return [w / total for w in weights]


def mix_logits(logits: list[torch.Tensor], weights: list[float], temperature: float) -> torch.Tensor:
    """T * log(sum_i w_i softmax(z_i / T)): logits whose distribution at T is the mixture."""
    shares = normalized(weights)
    log_terms = [torch.log_softmax(z.double() / temperature, dim=-1) + torch.log(torch.tensor(w, dtype=torch.float64))
                 for z, w in zip(logits, shares, strict=True)]
    return (temperature * torch.logsumexp(torch.stack(log_terms), dim=0)).to(logits[0].dtype)


def mix_pooled(pooled: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """The weighted mean of unit-length embeddings (each teacher counts by direction, not norm)."""
    shares = normalized(weights)
    units = [torch.nn.functional.normalize(p.double(), dim=-1) * w for p, w in zip(pooled, shares, strict=True)]
    return torch.stack(units).sum(dim=0).to(pooled[0].dtype)


# Rows (token blocks) mixed at a time: bounded memory on a large split.
TOP_K_MIX_ROWS = 64


def _mix_rows(logprobs: list[torch.Tensor], ids: list[torch.Tensor], shares: list[float],
              k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mix_top_k on a few rows, without a vocabulary-wide tensor: the listed (id, w_i p_i) pairs
    sorted by id, each run of one id summed (cumulative sum at its end minus that before its start)."""
    all_ids = torch.cat([i.long() for i in ids], dim=-1)
    mass = torch.cat([lp.double().exp() * w for lp, w in zip(logprobs, shares, strict=True)], dim=-1)
    sorted_ids, order = all_ids.sort(dim=-1, stable=True)
    sorted_mass = mass.gather(-1, order)
    total = sorted_mass.cumsum(-1)
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts[..., 1:] = sorted_ids[..., 1:] != sorted_ids[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    # The running total before each run's first entry, carried along the run (it never decreases).
    before = torch.where(starts, total - sorted_mass, torch.full_like(total, -1.0)).cummax(-1).values
    summed = torch.where(ends, total - before, torch.full_like(total, -1.0))  # one entry per id
    mixed, where = summed.topk(k, dim=-1, sorted=True)
    return mixed.log().float(), sorted_ids.gather(-1, where).to(torch.int32)


def mix_top_k(logprobs: list[torch.Tensor], ids: list[torch.Tensor], weights: list[float]) -> tuple[torch.Tensor,
                                                                                                        torch.Tensor]:
    """The mixture of top-k next-token lists (N, L, k_i each): log of sum_i w_i p_i over every
    listed token, its k largest (k = the first teacher's), sorted descending; float32 log-probs
    and int32 ids, as a single teacher's cache."""
    shares = normalized(weights)
    k = ids[0].shape[-1]
    parts = [_mix_rows([lp[start:start + TOP_K_MIX_ROWS] for lp in logprobs],
                       [i[start:start + TOP_K_MIX_ROWS] for i in ids], shares, k)
             for start in range(0, len(ids[0]), TOP_K_MIX_ROWS)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# Rows of logits or embeddings mixed at a time (top-k lists go TOP_K_MIX_ROWS at a time).
MIX_ROWS = 4096


def mix(outputs: list[TeacherOutputs], weights: list[float], temperature: float,
        into: Path | None = None) -> TeacherOutputs:
    """The ensemble's outputs on one split, from each teacher's (all of one task, same rows), mixed
    a chunk of rows at a time; with `into`, written there as memory-mapped files as they are mixed
    (a large split's mixture never sits in memory, like a teacher's outputs)."""
    first = outputs[0]
    if any(len(o) != len(first) for o in outputs):
        raise ValueError("the teachers' outputs cover different rows")
    step = TOP_K_MIX_ROWS if first.topk_ids is not None else MIX_ROWS
    writer = OutputWriter(into, len(first)) if into is not None else None
    parts = []
    for start in range(0, len(first), step):
        index = torch.arange(start, min(start + step, len(first)))
        part = _mix_chunk([o.rows(index) for o in outputs], weights, temperature)
        if writer is not None:
            writer.add(part)
        else:
            parts.append(part)
    return writer.finish() if writer is not None else TeacherOutputs.concat(parts)


def _mix_chunk(outputs: list[TeacherOutputs], weights: list[float], temperature: float) -> TeacherOutputs:
    """mix on a few rows."""
    first = outputs[0]
    logits = pooled = None
    if first.topk_ids is not None:  # cached at T already
        logprobs, ids = mix_top_k([o.topk_logprobs for o in outputs], [o.topk_ids for o in outputs], weights)
        return TeacherOutputs(logits=None, pooled=None, topk_logprobs=logprobs, topk_ids=ids)
    if first.logits is not None:
        logits = mix_logits([o.logits for o in outputs], weights, temperature)
    if first.pooled is not None:
        pooled = mix_pooled([o.pooled for o in outputs], weights)
    return TeacherOutputs(logits=logits, pooled=pooled)


def check_compatible(teacher: TeacherOutputs, member: TeacherOutputs, field: str) -> None:
    """The same kind and width of outputs as the teacher's, or a message naming the member."""
    for name in ("logits", "pooled", "topk_ids"):
        mine, theirs = getattr(teacher, name), getattr(member, name)
        if (mine is None) != (theirs is None) or (mine is not None and mine.shape[1:] != theirs.shape[1:]):
            what = {"logits": "classes", "pooled": "embedding size", "topk_ids": "block length and topK"}[name]
            shape = "none" if theirs is None else tuple(theirs.shape[1:])
            raise InputError(f"{field}: its outputs ({name} {shape}) do not match the teacher's "
                             f"({'none' if mine is None else tuple(mine.shape[1:])}); an ensemble needs one {what}")


def report(run: EnsembleRun, task, eval_labels, train_labels) -> EnsembleReport:
    """Each teacher alone and the mixture, scored on the eval split by the task's metric."""
    members = [EnsembleMember(uri=uri, weight=round(weight, 6),
                              accuracy=round(task.quality(ev, None, eval_labels, tr, train_labels).accuracy, 6))
               for uri, weight, tr, ev in zip(run.uris, run.weights, run.trains, run.evals, strict=True)]
    mixture = task.quality(run.soft_eval, None, eval_labels, run.soft_train, train_labels)
    return EnsembleReport(members=members, accuracy=round(mixture.accuracy, 6), metric_name=mixture.metric_name)
