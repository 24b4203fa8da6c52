"""Incremental distillation: continue an earlier student on new data without forgetting the old.

The job names the earlier student as student.base (kept whole) and the data it learned as
incremental.previousTrainUri / previousEvalUri. Two remedies against forgetting, alone or together:

- replay (loading.with_replay): a share of the old train rows joins the new train split, so the
  teacher's soft labels on them keep being learned;
- EWC (Kirkpatrick et al. 2017): the loss gains lambda/2 * sum_i F_i (theta_i - theta_old_i)^2,
  where theta_old are student.base's weights and F the diagonal empirical Fisher of student.base on
  old train rows: the mean over rows of the squared gradient of the row's log-likelihood of its
  label (a causal LM's row is a block of text: the mean log-likelihood of its next tokens).
  Weights the old task leans on move little; the others are free.

The old eval split is scored before (student.base) and after healing: their difference is the
forgetting the result reports (accuracy; for a causal LM next-token accuracy, and perplexity
too). Classification and causal-lm tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distillery.api.job import DistillationJob
from distillery.api.result import IncrementalReport
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.nets import Net

# Rows per Fisher batch: the Fisher needs one backward pass per row (squared per-row gradients).
FISHER_BATCH_ROWS = 16


@dataclass
class EwcPenalty:
    """lambda/2 * sum F (theta - anchor)^2 over the student's named parameters."""

    strength: float
    anchor: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor]
    rows: int  # old rows the Fisher was estimated on

    def to(self, device: torch.device) -> EwcPenalty:
        return EwcPenalty(self.strength, {k: v.to(device) for k, v in self.anchor.items()},
                          {k: v.to(device) for k, v in self.fisher.items()}, self.rows)

    def __call__(self, student: torch.nn.Module) -> torch.Tensor:
        terms = [(self.fisher[name] * (param - self.anchor[name]) ** 2).sum()
                 for name, param in student.named_parameters() if name in self.fisher]
        return 0.5 * self.strength * torch.stack(terms).sum()


def row_log_likelihood(net: Net, row: dict[str, torch.Tensor], label: torch.Tensor | None) -> torch.Tensor:
    """log p(label | row) for a classifier; for a causal LM (no label) the mean log-likelihood
    of the block's next tokens."""
    logits = net.outputs(row).logits
    if label is None:
        from distillery_trainer.lm.logits import next_token_nll

        return -next_token_nll(logits, row["input_ids"]).mean()
    return torch.log_softmax(logits.float(), dim=-1)[0, label]


def fisher_diagonal(net: Net, batches: list[dict]) -> tuple[dict[str, torch.Tensor], int]:
    """The diagonal empirical Fisher of `net` on batches (labelled, or a causal LM's text blocks):
    per parameter, the mean over rows of (d log-likelihood(row) / d theta)^2. Returns it and the
    number of rows."""
    params = {name: p for name, p in net.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    rows = 0
    net.eval()  # no dropout: the Fisher of the model as it predicts
    for batch in batches:
        labels = batch.get("labels")
        for i in range(len(batch["input_ids"] if labels is None else labels)):
            row = {k: v[i:i + 1] for k, v in batch.items() if k != "labels"}
            log_likelihood = row_log_likelihood(net, row, None if labels is None else labels[i])
            grads = torch.autograd.grad(log_likelihood, list(params.values()), allow_unused=True)
            for (name, _), grad in zip(params.items(), grads, strict=True):
                if grad is not None:
                    fisher[name] += grad.detach().float() ** 2
            rows += 1
    return {name: f / max(rows, 1) for name, f in fisher.items()}, rows


def ewc_penalty(base: Net, previous_train: Encoded, job: DistillationJob, device: torch.device) -> EwcPenalty:
    """The penalty holding the student near `base` (student.base, before any healing)."""
    ewc = job.spec.distillation.ewc
    rows = min(len(previous_train), ewc.fisher_batches * FISHER_BATCH_ROWS)
    index = torch.linspace(0, len(previous_train) - 1, rows).round().long().unique()  # spread over the file
    base.to(device)
    labels = previous_train.labels
    batches = [{**previous_train.batch(chunk, device),
                **({"labels": labels[chunk].to(device)} if labels is not None else {})}
               for chunk in index.split(FISHER_BATCH_ROWS)]
    fisher, counted = fisher_diagonal(base, batches)
    anchor = {name: p.detach().clone() for name, p in base.named_parameters()}
    base.cpu()
    return EwcPenalty(ewc.lambda_, {k: v.cpu() for k, v in anchor.items()}, {k: v.cpu() for k, v in fisher.items()},
                      counted)


def check_same_parameters(base: Net, student: Net) -> None:
    """EWC compares weights by name: the student must be student.base whole."""
    if {n for n, _ in base.named_parameters()} != {n for n, _ in student.named_parameters()}:
        raise InputError("incremental: the student's weights are not student.base's (keep it whole: "
                         "student.keepRatio 1, no width or vocabulary pruning)")


@dataclass(frozen=True)
class OldScore:
    """A model on the old eval split: accuracy (next-token accuracy for a causal LM), perplexity."""

    accuracy: float
    perplexity: float | None = None


def report(parent: str, before: OldScore, after: OldScore, replayed: int, penalty: EwcPenalty | None,
           strength: float | None) -> IncrementalReport:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return IncrementalReport(parent=parent, previous_accuracy_before=round(before.accuracy, 6),
                             previous_accuracy_after=round(after.accuracy, 6),
                             forgetting=round(before.accuracy - after.accuracy, 6),
                             previous_perplexity_before=rounded(before.perplexity),
                             previous_perplexity_after=rounded(after.perplexity),
                             replayed_rows=replayed, ewc_lambda=strength,
                             fisher_rows=None if penalty is None else penalty.rows)
