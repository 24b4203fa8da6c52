"""The KD loss against values computed by hand."""

import math

import pytest
import torch

from distillery.api.job import HiddenLossType
from distillery_trainer.losses import hidden_loss, kd_loss, soft_kl


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_soft_kl_matches_hand_computation_and_scales_by_t_squared():
    s, t, temp = [1.0, 2.0, 0.5], [2.0, 0.0, 1.0], 2.0
    p_t = softmax([v / temp for v in t])
    p_s = softmax([v / temp for v in s])
    expected = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True)) * temp**2
    got = soft_kl(torch.tensor([s]), torch.tensor([t]), temp)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_soft_kl_is_zero_when_student_equals_teacher():
    logits = torch.randn(4, 5)
    assert soft_kl(logits, logits, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_mixes_soft_and_hard_by_alpha():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.1, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [0.5, 0.5, 2.0]])
    y = torch.tensor([0, 2])
    soft = soft_kl(s, t, 4.0).item()
    hard = torch.nn.functional.cross_entropy(s, y).item()
    assert kd_loss(s, t, y, 4.0, 0.25).item() == pytest.approx(0.25 * soft + 0.75 * hard, rel=1e-6)
    assert kd_loss(s, t, y, 4.0, 1.0).item() == pytest.approx(soft, rel=1e-6)
    assert kd_loss(s, t, None, 4.0, 0.25).item() == pytest.approx(soft, rel=1e-6)


def test_hidden_losses():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # cosines are 0 and 1 -> mean(1 - cos) = 0.5
    assert hidden_loss(a, b, HiddenLossType.COSINE).item() == pytest.approx(0.5)
    assert hidden_loss(a, b, HiddenLossType.MSE).item() == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert hidden_loss(a, b, HiddenLossType.NONE).item() == 0.0


def test_disable_dropout_makes_training_mode_deterministic():
    from distillery_trainer.training import disable_dropout

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2),
                                torch.nn.Dropout1d(0.3))
    x = torch.randn(16, 8)
    model.train()
    assert not torch.equal(model(x), model(x))  # dropout on: two passes differ
    disable_dropout(model)
    assert model.training
    assert torch.equal(model(x), model.eval()(x))
