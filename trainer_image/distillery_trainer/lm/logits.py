"""Distillation losses on a causal LM's next-token logits: the teacher's top-k targets, the KL
against them (or against full logits), and cross-entropy on the text itself.

Every KL here is KL(teacher_T || student_T) at temperature T, summed over the vocabulary (or over
the k cached tokens plus one bucket for the rest of the mass), averaged over positions and
multiplied by T^2 (Hinton et al. 2015) so the soft term's gradients keep the scale of the hard
term's when T changes. Logits are (B, L, V); they are read in float32 whatever their dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Smallest rest mass the student can be credited with: below float32 resolution of 1 - sum(p_k),
# and it keeps log(rest) and its gradient finite when the k tokens hold all the mass.
_REST_FLOOR = torch.finfo(torch.float32).eps
_LOG_MASS_CEILING = math.log1p(-_REST_FLOOR)


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / T in float32, copying only when needed (V may be ~50k: one copy is 100 MB)."""
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError("temperature must be positive")


def top_k_targets(teacher_logits: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's log-probabilities at temperature T of its k most likely next tokens, sorted
    descending, (B, L, k) float32, and those tokens' ids (B, L, k) int32; k >= V gives all V."""
    _check_temperature(temperature)
    if k < 1:
        raise ValueError("k must be at least 1")
    k = min(k, teacher_logits.shape[-1])
    # Ranking is the same on raw logits, so pick the k first and normalise only those.
    top_logits, ids = teacher_logits.topk(k, dim=-1, sorted=True)
    log_normaliser = torch.logsumexp(_scaled(teacher_logits, temperature), dim=-1, keepdim=True)
    logprobs = _scaled(top_logits, temperature) - log_normaliser
    return logprobs.float(), ids.to(torch.int32)


def _log_rest(log_mass: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(log_mass)), the log of the mass outside the k tokens, with the mass held below
    1 - _REST_FLOOR so it stays finite (log_mass may round to just above 0)."""
    return torch.log(-torch.expm1(log_mass.clamp(max=_LOG_MASS_CEILING)))


def kd_loss_top_k(student_logits: torch.Tensor, logprobs: torch.Tensor, ids: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """KL(teacher || student) * T^2 over the teacher's k cached tokens plus one bucket holding the
    rest of each side's mass; with k >= V there is no rest and this is the full KL."""
    _check_temperature(temperature)
    if logprobs.shape != ids.shape or logprobs.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError("teacher top-k targets and student logits have different shapes")
    vocab, k = student_logits.shape[-1], ids.shape[-1]
    student_lse = torch.logsumexp(_scaled(student_logits, temperature), dim=-1, keepdim=True)
    # Gather, then scale: only the normaliser above reads the full (B, L, V) logits.
    student_k = _scaled(student_logits.gather(-1, ids.long()), temperature) - student_lse
    teacher_k = logprobs.float()
    teacher_p = teacher_k.exp()
    # A token the teacher gives no mass at all (log-prob -inf) adds nothing: 0 * log 0 = 0.
    per_token = torch.where(teacher_p > 0, teacher_p * (teacher_k - student_k), torch.zeros_like(teacher_p))
    kl = per_token.sum(-1)
    if k < vocab:
        teacher_rest = (-torch.expm1(torch.logsumexp(teacher_k, dim=-1).clamp(max=0.0))).clamp(min=0.0)
        student_log_rest = _log_rest(torch.logsumexp(student_k, dim=-1))
        kl = kl + torch.xlogy(teacher_rest, teacher_rest) - teacher_rest * student_log_rest
    return kl.mean() * (temperature * temperature)


def kd_loss_full(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) * T^2 over the whole vocabulary, mean over positions."""
    _check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError("teacher and student logits have different shapes")
    # The teacher is a fixed target: no gradient flows to it, and its log-probabilities are
    # floored in place so a masked-out token (-inf) adds 0 * finite = 0 rather than NaN.
    with torch.no_grad():
        teacher_log = torch.log_softmax(_scaled(teacher_logits, temperature), dim=-1)
        teacher_log.clamp_(min=torch.finfo(torch.float32).min)
    student_log = torch.log_softmax(_scaled(student_logits, temperature), dim=-1)
    positions = student_log.numel() // student_log.shape[-1]
    kl = F.kl_div(student_log, teacher_log, reduction="sum", log_target=True) / positions
    return kl * (temperature * temperature)


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (B, L-1) of tokens 1..L-1 given the logits at positions 0..L-2."""
    predicting = logits[:, :-1]
    targets = input_ids[:, 1:].long().unsqueeze(-1)
    log_normaliser = torch.logsumexp(predicting.float(), dim=-1)
    return log_normaliser - predicting.gather(-1, targets).squeeze(-1).float()


def next_token_ce(student_logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of positions 0..L-2 predicting tokens 1..L-1 (the text's own loss)."""
    if student_logits.shape[:-1] != input_ids.shape:
        raise ValueError("logits and input ids have different shapes")
    if input_ids.shape[1] < 2:
        raise ValueError("next-token cross-entropy needs blocks of at least 2 tokens")
    return next_token_nll(student_logits, input_ids).mean()


def lm_distillation_loss(student_logits: torch.Tensor, teacher, input_ids: torch.Tensor,
                         temperature: float, alpha: float) -> torch.Tensor:
    """alpha * KD + (1 - alpha) * next-token cross-entropy. `teacher` is either full (B, L, V)
    logits (online mode) or anything with `topk_logprobs` and `topk_ids` (the top-k cache)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be within [0, 1]")
    loss = None
    if alpha > 0.0:
        if isinstance(teacher, torch.Tensor):
            kd = kd_loss_full(student_logits, teacher, temperature)
        else:
            if getattr(teacher, "topk_logprobs", None) is None or getattr(teacher, "topk_ids", None) is None:
                raise ValueError("teacher outputs carry no top-k logits")
            kd = kd_loss_top_k(student_logits, teacher.topk_logprobs, teacher.topk_ids, temperature)
        loss = alpha * kd
    if alpha < 1.0:
        ce = (1.0 - alpha) * next_token_ce(student_logits, input_ids)
        loss = ce if loss is None else loss + ce
    return loss
