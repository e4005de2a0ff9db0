"""PPO-clip loss: hand-derived cases."""

import math

import pytest
import torch

from gigpo.loss import aggregate, k3_kl, policy_loss


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
    assert metrics["kl"] == pytest.approx(k3)
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


def test_dual_clip_bounds_negative_advantage_tokens():
    # A = -1, ratio = e^1.5 = 4.4817 > c = 3: L_clip = max(4.4817, 1.2) = 4.4817, dual bound -c A = 3
    # -> L_pg = min(4.4817, 3) = 3, and no gradient reaches the token.
    logp = torch.tensor([[1.5]], requires_grad=True)
    old, mask = torch.zeros(1, 1), torch.ones(1, 1)
    loss, metrics = policy_loss(logp, old, torch.tensor([-1.0]), mask, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx(3.0)
    assert metrics["clip_frac_dual"] == 1.0 and metrics["clip_frac"] == 0.0
    loss.backward()
    assert logp.grad.item() == 0.0
    # ratio = e^0.5 = 1.6487 < 3: dual-clip inactive, L = 1.6487 (as plain PPO).
    loss, metrics = policy_loss(torch.tensor([[0.5]]), old, torch.tensor([-1.0]), mask, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx(math.exp(0.5)) and metrics["clip_frac_dual"] == 0.0
    # The same tokens with A = +2: dual-clip never applies to positive advantages;
    # ratio 4.4817 is clipped to 1.2 -> L = -2.4.
    loss, metrics = policy_loss(torch.tensor([[1.5]]), old, torch.tensor([2.0]), mask, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx(-2.4) and metrics["clip_frac_dual"] == 0.0
    # inf disables it: back to max(4.4817, 1.2) = 4.4817.
    loss, _ = policy_loss(torch.tensor([[1.5]]), old, torch.tensor([-1.0]), mask, clip_ratio_c=math.inf)
    assert loss.item() == pytest.approx(math.exp(1.5))
    with pytest.raises(ValueError, match="clip_ratio_c"):
        policy_loss(old, old, torch.tensor([-1.0]), mask, clip_ratio_c=1.0)


def test_clip_frac_counts_only_tokens_whose_gradient_was_clipped():
    # Six tokens, clip 0.2, c = 3 (log-ratios -> ratios):
    #   A=+1, ratio e^0.5  = 1.65 > 1.2: clipped term 1.2 selected      -> clipped
    #   A=+1, ratio e^-0.5 = 0.61 < 0.8: unclipped selected (pessimism) -> not clipped
    #   A=-1, ratio e^-0.5 = 0.61 < 0.8: clipped term selected          -> clipped
    #   A=-1, ratio e^0.5  = 1.65 > 1.2: unclipped selected             -> not clipped
    #   A=-1, ratio e^1.5  = 4.48 > 3:   dual clip -c A selected        -> dual
    #   A=+1, ratio 1:                                                   -> nothing
    # clip_frac = 2/6, clip_frac_dual = 1/6. The old count (clipped != unclipped) gave 5/6.
    logp = torch.tensor([[0.5], [-0.5], [-0.5], [0.5], [1.5], [0.0]])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, 1.0])
    _, metrics = policy_loss(logp, torch.zeros(6, 1), adv, torch.ones(6, 1))
    assert metrics["clip_frac"] == pytest.approx(2 / 6)
    assert metrics["clip_frac_dual"] == pytest.approx(1 / 6)


def test_pg_loss_is_logged_apart_from_the_total():
    # ratio 1, A = 1: L_pg = -1; k3 with q - p = log 0.5 is 0.1931, x 0.1; entropy 2 x 0.01.
    # total = -1 + 0.01931 - 0.02 = -1.00069.
    logp = torch.zeros(1, 1)
    loss, metrics = policy_loss(logp, logp, torch.tensor([1.0]), torch.ones(1, 1),
                                ref_logprobs=torch.log(torch.tensor([[0.5]])), kl_coef=0.1,
                                entropy=torch.tensor([[2.0]]), entropy_coef=0.01)
    k3 = 0.5 + math.log(2) - 1
    assert metrics["pg_loss"] == pytest.approx(-1.0)
    assert metrics["policy_loss"] == pytest.approx(-1.0 + 0.1 * k3 - 0.02) == pytest.approx(loss.item())


def test_k3_kl_is_clamped_and_its_gradient_stays_finite():
    # q - p = 30 (the reference far likelier): exp(30) - 31 = 1.07e13 unclamped; d is bounded to 20
    # first (exp(20) - 21 = 4.85e8), then the estimate to 10. Gradient: 0 (clamped), never NaN.
    logp = torch.tensor([[-30.0, -0.1]], requires_grad=True)
    ref = torch.tensor([[0.0, 0.0]])
    kl = k3_kl(logp, ref, clamp=10.0)
    # second token: d = 0.1, e^0.1 - 0.1 - 1 = 0.0051709
    assert kl[0, 0].item() == 10.0 and kl[0, 1].item() == pytest.approx(math.exp(0.1) - 1.1, rel=1e-5)
    kl.sum().backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[0, 0].item() == 0.0
    assert k3_kl(logp, ref, clamp=None)[0, 0].item() == pytest.approx(math.exp(20) - 21, rel=1e-5)
