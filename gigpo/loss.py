"""The PPO-clip policy loss with optional KL-to-reference and entropy terms, as a pure function.

For response token t of sample i with advantage A_i (the step's advantage, the same for all its
tokens) and ratio rho_t = exp(log pi(y_t) - log pi_old(y_t)):

    L_clip = -min(rho_t A_i, clip(rho_t, 1 - clip_low, 1 + clip_high) A_i)      (PPO, Schulman 2017)
    KL_t   = exp(q_t - p_t) - (q_t - p_t) - 1,  p = log pi, q = log pi_ref         (k3, low variance)
    L      = agg(L_clip + kl_coef * KL - entropy_coef * H)

``agg`` "token_mean" averages over all response tokens of the batch; "seq_mean" averages tokens
inside each sample first, then samples, so every env step weighs the same.
"""

from __future__ import annotations

import torch


def aggregate(values: torch.Tensor, mask: torch.Tensor, agg: str) -> torch.Tensor:
    """Mean of ``values`` over mask == 1: over all tokens, or per sample then over samples."""
    if agg == "token_mean":
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    if agg == "seq_mean":
        per_sample = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_sample.mean()
    raise ValueError(f"algo.loss_agg: unknown {agg!r}; known: token_mean, seq_mean")


def policy_loss(
    logprobs: torch.Tensor,  # [B, T] log pi of the taken tokens
    old_logprobs: torch.Tensor,  # [B, T]
    advantages: torch.Tensor,  # [B] one per sample (env step)
    mask: torch.Tensor,  # [B, T] 1 on response tokens
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = "token_mean",
    ref_logprobs: torch.Tensor | None = None,  # [B, T]
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,  # [B, T]
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Returns (loss, metrics). Metrics are detached floats: clip fraction, approx KL, terms."""
    adv = advantages.unsqueeze(-1)  # [B, 1]
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    metrics = {
        "clip_frac": aggregate((unclipped != clipped).float(), mask, "token_mean").item(),
        "approx_kl_old": aggregate(0.5 * log_ratio.pow(2), mask, "token_mean").item(),
    }
    if ref_logprobs is not None and kl_coef > 0:
        delta = ref_logprobs - logprobs
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + kl_coef * kl
        metrics["kl_ref"] = aggregate(kl, mask, "token_mean").item()
    if entropy is not None:
        metrics["entropy"] = aggregate(entropy, mask, "token_mean").item()
        if entropy_coef > 0:
            per_token = per_token - entropy_coef * entropy
    loss = aggregate(per_token, mask, agg)
    metrics["policy_loss"] = loss.item()
    return loss, metrics
