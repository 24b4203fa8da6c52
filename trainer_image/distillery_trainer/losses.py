"""Knowledge-distillation losses (Hinton et al.), written out so they can be checked by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillery.api.job import HiddenLossType


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) * T^2, averaged over the batch.

    The T^2 factor keeps the soft term's gradients on the same scale as the hard term's when
    the temperature changes.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * soft KL + (1 - alpha) * hard cross-entropy; soft only when there are no labels."""
    soft = soft_kl(student_logits, teacher_logits, temperature)
    if labels is None or alpha >= 1.0:
        return soft
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


def hidden_loss(student: torch.Tensor, teacher: torch.Tensor, kind: HiddenLossType) -> torch.Tensor:
    """Distance between pooled representations: 1 - cosine, or mean squared error."""
    if kind == HiddenLossType.COSINE:
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind == HiddenLossType.MSE:
        return F.mse_loss(student, teacher)
    return student.new_zeros(())
