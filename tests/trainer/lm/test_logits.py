"""Causal-LM distillation losses against hand computations (lm/logits.py)."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from distillery_trainer.lm.logits import (
    kd_loss_full,
    kd_loss_top_k,
    lm_distillation_loss,
    next_token_ce,
    top_k_targets,
)


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def hand_kl(student, teacher, temperature):
    """KL(teacher_T || student_T) * T^2, mean over positions, from nested lists (B, L, V)."""
    total, positions = 0.0, 0
    for s_row, t_row in zip(student, teacher, strict=True):
        for s, t in zip(s_row, t_row, strict=True):
            p_t = softmax([v / temperature for v in t])
            p_s = softmax([v / temperature for v in s])
            total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True))
            positions += 1
    return total / positions * temperature**2


@pytest.fixture
def example():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64) * 2
    teacher = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64) * 2
    return student, teacher


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_kl_matches_hand_computation(example, temperature):
    student, teacher = example
    expected = hand_kl(student.tolist(), teacher.tolist(), temperature)
    got = kd_loss_full(student.float(), teacher.float(), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_full_kl_is_zero_for_identical_logits(example):
    student, _ = example
    assert kd_loss_full(student.float(), student.float(), 3.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_top_k_targets_are_the_teachers_sorted_log_probabilities(example, temperature):
    _, teacher = example
    logprobs, ids = top_k_targets(teacher.float(), 3, temperature)
    assert logprobs.shape == ids.shape == (2, 3, 3)
    assert logprobs.dtype == torch.float32 and ids.dtype == torch.int32
    full = torch.log_softmax(teacher / temperature, dim=-1)
    assert torch.equal(ids.long(), full.argsort(dim=-1, descending=True)[..., :3])
    assert torch.allclose(logprobs.double(), full.gather(-1, ids.long()), atol=1e-6)
    assert (logprobs[..., :-1] >= logprobs[..., 1:]).all()


@pytest.mark.parametrize("k", [5, 64])
def test_top_k_with_whole_vocabulary_equals_full_kl(example, k):
    student, teacher = example
    logprobs, ids = top_k_targets(teacher.float(), k, 2.0)
    assert ids.shape[-1] == 5
    full = kd_loss_full(student.float(), teacher.float(), 2.0)
    assert kd_loss_top_k(student.float(), logprobs, ids, 2.0).item() == pytest.approx(full.item(), rel=1e-5)


def test_rest_bucket_matches_hand_computation(example):
    """With k < V the KL is over the k tokens plus one bucket holding the rest of each side's mass."""
    student, teacher = example
    temperature, k = 1.5, 2
    logprobs, ids = top_k_targets(teacher.float(), k, temperature)
    total = 0.0
    for b in range(2):
        for pos in range(3):
            p_t = softmax([v / temperature for v in teacher[b, pos].tolist()])
            p_s = softmax([v / temperature for v in student[b, pos].tolist()])
            top = ids[b, pos].tolist()
            buckets_t = [p_t[i] for i in top] + [1 - sum(p_t[i] for i in top)]
            buckets_s = [p_s[i] for i in top] + [1 - sum(p_s[i] for i in top)]
            total += sum(pt * math.log(pt / ps) for pt, ps in zip(buckets_t, buckets_s, strict=True))
    expected = total / 6 * temperature**2
    got = kd_loss_top_k(student.float(), logprobs, ids, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # Lumping tokens into one bucket can only lose information: never above the full KL.
    assert got.item() < kd_loss_full(student.float(), teacher.float(), temperature).item()


def test_top_k_is_close_to_full_kl_when_the_tail_is_tiny():
    gen = torch.Generator().manual_seed(1)
    vocab, k = 1000, 8
    teacher = torch.randn(2, 4, vocab, generator=gen)
    teacher[..., :k] += 30.0  # the k leading tokens hold all but ~1e-10 of the mass
    student = teacher + torch.randn(2, 4, vocab, generator=gen)
    logprobs, ids = top_k_targets(teacher, k, 1.0)
    full = kd_loss_full(student, teacher, 1.0).item()
    top = kd_loss_top_k(student, logprobs, ids, 1.0).item()
    assert top == pytest.approx(full, rel=1e-3)
    assert full > 0.01  # the students differ, so the match above is not 0 == 0


def test_next_token_ce_matches_cross_entropy_by_hand():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 7, generator=gen)
    ids = torch.randint(0, 7, (2, 4), generator=gen)
    expected = sum(
        -math.log(softmax(logits[b, p].tolist())[int(ids[b, p + 1])]) for b in range(2) for p in range(3)
    ) / 6
    assert next_token_ce(logits, ids).item() == pytest.approx(expected, rel=1e-5)
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1))
    assert next_token_ce(logits, ids).item() == pytest.approx(reference.item(), rel=1e-6)


def test_gradients_stay_finite_at_extreme_logits():
    student = torch.zeros(1, 3, 6)
    student[0, 0, 2] = 1e4  # the student is certain
    student[0, 1, 0] = -1e4
    teacher = torch.zeros(1, 3, 6)
    teacher[0, 0, 4] = 1e4  # the teacher is certain of another token
    teacher[0, 2, 1] = 1e4
    ids = torch.tensor([[1, 2, 3]])
    for k in (2, 6):
        logprobs, top_ids = top_k_targets(teacher, k, 2.0)
        for target in (teacher, SimpleNamespace(topk_logprobs=logprobs, topk_ids=top_ids)):
            s = student.clone().requires_grad_(True)
            loss = lm_distillation_loss(s, target, ids, 2.0, 0.5)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
            assert s.grad.abs().sum() > 0


def test_zero_mass_teacher_tokens_add_nothing():
    """A teacher log-probability of -inf (a masked token) is a legal target, not a NaN."""
    logprobs = torch.tensor([[[0.0, float("-inf")]]])
    ids = torch.tensor([[[1, 0]]], dtype=torch.int32)
    student = torch.tensor([[[0.0, 0.0, 0.0]]], requires_grad=True)
    loss = kd_loss_top_k(student, logprobs, ids, 1.0)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(3), rel=1e-5)
    assert torch.isfinite(student.grad).all()


def test_mixture_weights_kd_and_cross_entropy(example):
    student, teacher = example
    student, teacher = student.float(), teacher.float()
    ids = torch.tensor([[0, 1, 2], [3, 4, 0]])
    kd = kd_loss_full(student, teacher, 2.0)
    ce = next_token_ce(student, ids)
    mixed = lm_distillation_loss(student, teacher, ids, 2.0, 0.25)
    assert mixed.item() == pytest.approx(0.25 * kd.item() + 0.75 * ce.item(), rel=1e-6)
    assert lm_distillation_loss(student, teacher, ids, 2.0, 1.0).item() == pytest.approx(kd.item(), rel=1e-6)
    # alpha == 0 needs no teacher targets at all.
    no_targets = SimpleNamespace(topk_logprobs=None, topk_ids=None)
    assert lm_distillation_loss(student, no_targets, ids, 2.0, 0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    with pytest.raises(ValueError):
        lm_distillation_loss(student, no_targets, ids, 2.0, 0.5)
    with pytest.raises(ValueError):
        lm_distillation_loss(student, teacher, ids, 2.0, 1.5)


def test_full_kl_ignores_tokens_the_teacher_masks_out():
    teacher = torch.tensor([[[0.0, 0.0, float("-inf")]]])
    student = torch.zeros(1, 1, 3, requires_grad=True)
    loss = kd_loss_full(student, teacher, 1.0)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(3 / 2), rel=1e-5)  # 2 x 1/2 log((1/2) / (1/3))
    assert torch.isfinite(student.grad).all()
