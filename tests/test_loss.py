"""PPO-clip loss: hand-derived cases."""

import math

import pytest
import torch

from gigpo.loss import aggregate, policy_loss


def test_unclipped_ratio_one_is_minus_mean_advantage():
    # ratio = 1 everywhere -> per-token loss = -A; token mean over (2 + 1) tokens of A = (1, 1, -2) -> 0.
    logp = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, metrics = policy_loss(logp, logp, torch.tensor([1.0, -2.0]), mask)
    assert loss.item() == pytest.approx(0.0)
    # seq_mean: sample means are -1 and 2 -> mean 0.5.
    loss, _ = policy_loss(logp, logp, torch.tensor([1.0, -2.0]), mask, agg="seq_mean")
    assert loss.item() == pytest.approx(0.5)
    assert metrics["clip_frac"] == 0.0


def test_clipping_is_asymmetric():
    # ratio = e^0.5 = 1.6487 with A = +1: clip_high 0.2 caps it at 1.2 -> loss -1.2.
    logp, old = torch.tensor([[0.5]]), torch.tensor([[0.0]])
    mask = torch.ones(1, 1)
    loss, metrics = policy_loss(logp, old, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(-1.2)
    assert metrics["clip_frac"] == 1.0
    loss, _ = policy_loss(logp, old, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(-1.28)
    # With A = -1 the pessimistic bound keeps the unclipped ratio: -min(-1.6487, -1.2) = 1.6487.
    loss, _ = policy_loss(logp, old, torch.tensor([-1.0]), mask)
    assert loss.item() == pytest.approx(math.exp(0.5))
    # ratio = e^-0.5 = 0.6065 with A = +1: clip_low 0.2 -> min(0.6065, 0.8) = 0.6065 (no clip benefit).
    loss, _ = policy_loss(-logp, old, torch.tensor([1.0]), mask)
    assert loss.item() == pytest.approx(-math.exp(-0.5))


def test_k3_kl_and_entropy_terms():
    # p = log pi = 0, q = log pi_ref = log 0.5: delta = q - p = -0.6931; k3 = 0.5 + 0.6931 - 1 = 0.1931.
    logp = torch.zeros(1, 1)
    ref = torch.log(torch.tensor([[0.5]]))
    mask = torch.ones(1, 1)
    loss, metrics = policy_loss(logp, logp, torch.tensor([0.0]), mask, ref_logprobs=ref, kl_coef=0.1,
                                entropy=torch.tensor([[2.0]]), entropy_coef=0.01)
    k3 = 0.5 + math.log(2) - 1
    assert metrics["kl_ref"] == pytest.approx(k3)
    assert loss.item() == pytest.approx(0.1 * k3 - 0.01 * 2.0, abs=1e-6)


def test_gradient_points_toward_positive_advantage():
    logits = torch.zeros(3, requires_grad=True)
    logp = torch.log_softmax(logits, -1)[0].reshape(1, 1)
    loss, _ = policy_loss(logp, logp.detach(), torch.tensor([1.0]), torch.ones(1, 1))
    loss.backward()
    assert logits.grad[0] < 0 < logits.grad[1]  # descending the loss raises token 0's logit


def test_aggregate_rejects_unknown_mode():
    with pytest.raises(ValueError, match="loss_agg"):
        aggregate(torch.ones(1, 1), torch.ones(1, 1), "sum")
