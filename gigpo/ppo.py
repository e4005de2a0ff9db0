"""The PPO update: old/reference log-probs, shuffled mini-batches, micro-batch losses, optimizer steps.

Used by the training loop (``gigpo.train``) and by the DeepSpeed update (``gigpo.scale.deepspeed``),
so the scale path depends on the update, not on the loop.

Identical samples (same prompt, response and allowed tokens: a group's trajectories share their
first prompt, and revisited states recur) have identical log-probs, so the scorer runs the model
once per distinct sample of a forward and copies the rows (the copy carries the gradient of every
occurrence); the loss still sees every sample with its own advantage. A mini-batch is cut into
micro-batches of at most ``micro_batch_size`` distinct samples, duplicates kept together: only the
split changes, and the shares make the summed micro-batch losses the mini-batch loss exactly.
Inside a forward, each distinct prompt prefix runs once and the responses run on their prompts' KV
caches (``pad_batch(..., share_prompts=True)``), samples of one prompt kept in one micro-batch.

Old log-probs are the log-probs of the policy the update starts from. When gigpo's native sampler
rolled out in this process (``rollout_logprobs_are_old``), that policy sampled the batch and its
log-probs of the taken tokens (from the same masked, tempered, warped distribution the scorer
computes) are those old log-probs: the no-grad scoring pass over the batch is skipped. Otherwise
(HF ``generate``, vLLM, DeepSpeed) they are recomputed after the rollout, as verl does.

Rollout/trainer mismatch: every sampler returns its own log-prob of each token it drew
(``Sample.logprobs``). ``Scorer.rollout_stats`` compares them with the trainer's log-probs of the
policy the update starts from, over response tokens (each sample once): ``rollout/logprob_diff_{mean,max}``
(|log pi_trainer - log pi_rollout|) and ``rollout/ratio_{min,max}`` (pi_trainer / pi_rollout), and counts
``loss/masked_tokens`` (old log-prob not finite, left out of the loss). Where old log-probs are
recomputed, the comparison covers the whole batch; where the sampler's serve as old log-probs, it
covers the first mini-batch of the first epoch, whose forward runs the unchanged policy (so the
measurement costs no extra pass). With ``algo.tis_cap`` set, the PG term of token t is weighted by
min(pi_old / pi_rollout, tis_cap) (truncated importance sampling); a token whose rollout log-prob
is unknown (NaN: vLLM's EOS stop) or not finite weighs 1.

``algo.loss_agg=token_mean_per_micro`` reproduces verl's weighting: the token mean of each
micro-batch, divided by the number of micro-batches of its mini-batch (so the micro-batch size
changes the weighting); "token_mean" (default) is the exact token mean of the mini-batch.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
from omegaconf import DictConfig

from gigpo.loss import policy_loss
from gigpo.policy.model import pad_batch, token_logprobs
from gigpo.rollout import Rollout


def minibatches(cfg: DictConfig, n: int, iteration: int) -> list[list[int]]:
    """Sample indices of every optimizer step of the update: ppo_epochs shuffles of range(n), each cut
    into mini-batches. Seeded by (seed, iteration), so a resumed or data-parallel run shuffles alike."""
    generator = torch.Generator().manual_seed(cfg.train.seed * 100_003 + iteration)
    orders = [torch.randperm(n, generator=generator).tolist() for _ in range(cfg.train.ppo_epochs)]
    size = cfg.train.mini_batch_size
    return [order[s : s + size] for order in orders for s in range(0, n, size)]


def rollout_logprobs_are_old(cfg: DictConfig) -> bool:
    """Whether the rollout's log-probs serve as the old policy's: the native sampler (whose log-probs equal the
    scorer's, ``tests/test_speed_equivalence.py``) ran in this process at temperature > 0 (the scorer applies
    top-k/top-p even at 0, the greedy sampler does not), nothing changes the policy between rollout and update,
    and no truncated importance sampling (``algo.tis_cap``) asks for the trainer's log-probs beside the sampler's."""
    # Truncated importance sampling weighs pi_old (the trainer's) against pi_rollout: it needs them apart.
    return (cfg.model.sampler == "native" and cfg.rollout.name != "vllm" and cfg.model.temperature > 0
            and cfg.train.get("strategy", "single") == "single" and cfg.algo.get("tis_cap") is None)


class Scorer:
    """Per-token log-probs of a batch's samples under a model, and the loss of a micro-batch."""

    def __init__(self, cfg: DictConfig, model, samples, advantages: np.ndarray, device):
        weight = model.get_output_embeddings().weight
        self.vocab_size = getattr(weight, "ds_shape", weight.shape)[0]  # ZeRO-3 keeps the full shape in ds_shape
        self.pad_id = getattr(model.config, "pad_token_id", None) or 0  # padding is masked: any valid id does
        self.cfg, self.samples, self.device = cfg, samples, device
        # One advantage per sample [n], or (algo=ppo, GAE) a list of per-response-token arrays [T_i].
        self.token_advantages = advantages if isinstance(advantages, list) else None
        self.advantages = None if self.token_advantages is not None else torch.as_tensor(advantages,
                                                                                         dtype=torch.float32)
        keys: dict[tuple, int] = {}
        self.distinct = [keys.setdefault(_sample_key(s), len(keys)) for s in samples]  # sample -> distinct id
        self.first = self.distinct_rows(list(range(len(samples))))  # distinct id -> its first sample
        prompts: dict[tuple, int] = {}
        self.order = [(len(samples[i].prompt_ids), prompts.setdefault(tuple(samples[i].prompt_ids), len(prompts)),
                       len(samples[i].response_ids)) for i in self.first]
        """distinct id -> sort key: samples of one prompt together, similar lengths together"""
        # Each distinct prompt runs once per forward (its KV cache shared by its responses); the cache
        # is not kept under gradient checkpointing, and ZeRO-3 gathers parameters per call: plain there.
        self.share_prompts = not cfg.model.get("gradient_checkpointing", False) and \
            cfg.get("train", {}).get("strategy", "single") == "single"
        self.old: dict[int, torch.Tensor] = {}  # by distinct id: log-probs of its response tokens [R]
        self.ref: dict[int, torch.Tensor] = {}
        self.scored: dict[int, int] = {}
        """distinct id -> response tokens with a finite old log-prob (the tokens the loss counts)"""

    def forward(self, rows: list[int], model, with_entropy: bool = False):
        """Log-probs [len(rows), L-1] (and entropies) of ``rows``, the model run once per distinct sample."""
        ids = [self.distinct[i] for i in rows]
        distinct = list(dict.fromkeys(ids))
        tensors = pad_batch([self.samples[self.first[d]] for d in distinct], self.pad_id, self.device, self.vocab_size,
                            self.share_prompts)
        m = self.cfg.model
        # The entropy needs a graph only when it is in the loss; otherwise it is logged from detached log-probs.
        logp, entropy = token_logprobs(model, tensors, m.temperature, with_entropy, m.top_k, m.top_p,
                                       entropy_grad=self.cfg.algo.entropy_coef > 0)
        mask = tensors["response_mask"]
        if len(distinct) < len(ids):  # copy each distinct row to its samples
            where = {d: k for k, d in enumerate(distinct)}
            index = torch.tensor([where[d] for d in ids], device=logp.device)
            logp, mask = logp[index], mask[index]
            entropy = entropy[index] if entropy is not None else None
        return logp, entropy, mask

    def micro_batches(self, mini: list[int], micro: int) -> list[list[int]]:
        """``mini`` cut into micro-batches of at most ``micro`` distinct samples, duplicates together,
        the responses of one prompt together, similar lengths together (less padding)."""
        rows_of: dict[int, list[int]] = {}
        for i in mini:
            rows_of.setdefault(self.distinct[i], []).append(i)
        order = sorted(rows_of, key=lambda d: self.order[d])
        return [[i for d in order[s : s + micro] for i in rows_of[d]] for s in range(0, len(order), micro)]

    def row_advantages(self, rows: list[int], mask: torch.Tensor) -> torch.Tensor:
        """Advantages of ``rows``: [len(rows)], or per token [len(rows), L-1] laid into ``mask``'s response positions."""
        if self.token_advantages is None:
            return self.advantages[rows].to(self.device)
        flat = np.concatenate([self.token_advantages[i] for i in rows])
        return torch.zeros_like(mask).masked_scatter(mask.bool(), torch.as_tensor(flat, dtype=mask.dtype,
                                                                                   device=mask.device))

    def distinct_rows(self, rows: list[int]) -> list[int]:
        """One sample per distinct sample among ``rows``, in order."""
        first: dict[int, int] = {}
        for i in rows:
            first.setdefault(self.distinct[i], i)
        return list(first.values())

    @torch.no_grad()
    def record_old(self, rows: list[int], policy, reference) -> None:
        """Old (unless ``policy`` is None) and reference log-probs of ``rows``, kept for every PPO epoch."""
        ids = [self.distinct[i] for i in rows]
        if policy is not None:
            logp, _, mask = self.forward(rows, policy)
            self.old.update(zip(ids, self.responses(logp, mask)))
            # Outside the response logp is 0 (finite): the finite response tokens of each row, one sync.
            finite = (torch.isfinite(logp) & mask.bool()).sum(-1).tolist()
            self.scored.update(zip(ids, finite))
        if reference is not None:
            logp, _, mask = self.forward(rows, reference)
            self.ref.update(zip(ids, self.responses(logp, mask)))

    @staticmethod
    def responses(values: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Each row's values at its response positions (``mask``), [R_b] per row."""
        return list(values[mask.bool()].split(mask.sum(-1).long().tolist()))

    def take_old(self) -> None:
        """Old log-probs from the samples' own (the sampler's) log-probs: one tensor for the batch, split
        into each distinct sample's [R]."""
        flat = self.rollout_logprobs(self.first)
        lengths = [len(self.samples[i].response_ids) for i in self.first]
        finite = np.concatenate([[0], np.cumsum(np.isfinite(flat.numpy()))])  # on the host: no device sync
        ends = np.cumsum(lengths)
        self.scored.update(enumerate((finite[ends] - finite[ends - lengths]).tolist()))
        self.old.update(enumerate(flat.to(self.device).split(lengths)))

    def rollout_logprobs(self, rows: list[int]) -> torch.Tensor:
        """The sampler's log-probs of the response tokens of ``rows``, concatenated in order, [sum R] float32."""
        for i in rows:
            sample = self.samples[i]
            if sample.logprobs is None or len(sample.logprobs) != len(sample.response_ids):
                given = None if sample.logprobs is None else len(sample.logprobs)
                raise ValueError(f"sample {i}: the sampler returned {given} log-probs for "
                                 f"{len(sample.response_ids)} response tokens; every sampler must return its own "
                                 "log-prob of each token (generate(..., logprobs=True))")
        return torch.tensor([x for i in rows for x in self.samples[i].logprobs], dtype=torch.float32)

    def flat_old(self, rows: list[int], which: dict | None = None) -> torch.Tensor:
        """The recorded old (or ``which``: reference) log-probs of the response tokens of ``rows``, [sum R]."""
        which = self.old if which is None else which
        return torch.cat([which[self.distinct[i]] for i in rows])

    def rollout_stats(self, rows: list[int], trainer: torch.Tensor | None = None) -> dict[str, float]:
        """Sums and extremes over the response tokens of ``rows`` (old log-probs recorded): tokens whose
        trainer log-prob is not finite, and, when the samples carry the sampler's log-probs (every rollout
        does; a synthetic batch may not), the finite pairs, sum and max of |log pi_trainer - log pi_rollout|
        and min and max of the log-ratio. ``finish_rollout_stats`` turns them into metrics. The trainer's
        log-probs are the recorded old ones, or ``trainer`` [sum R] (a forward of the unchanged policy over
        ``rows``, its response tokens row by row)."""
        compare = any(self.samples[i].logprobs is not None for i in rows)
        old = (self.flat_old(rows) if trainer is None else trainer).float().cpu()
        finite = torch.isfinite(old)
        masked = int((~finite).sum())
        d = torch.zeros(0)
        if compare:
            sampled = self.rollout_logprobs(rows)
            d = (old - sampled)[finite & torch.isfinite(sampled)]
        if not d.numel():
            return {"masked": float(masked), "compared": float(compare), "pairs": 0.0, "abs_sum": 0.0,
                    "abs_max": 0.0, "log_ratio_min": math.inf, "log_ratio_max": -math.inf}
        abs_sum, abs_max, low, high = torch.stack([d.abs().sum(), d.abs().max(), d.min(), d.max()]).tolist()
        return {"masked": float(masked), "compared": float(compare), "pairs": float(d.numel()),
                "abs_sum": abs_sum, "abs_max": abs_max, "log_ratio_min": low, "log_ratio_max": high}

    def is_weights(self, rows: list[int], mask: torch.Tensor, cap: float) -> torch.Tensor:
        """Truncated importance weights min(pi_old / pi_rollout, cap) on the response positions of ``rows``
        (``mask`` [len(rows), W]), 1 elsewhere and where either log-prob is not finite."""
        log_w = self.flat_old(rows).float().cpu() - self.rollout_logprobs(rows)
        w = torch.where(torch.isfinite(log_w), torch.exp(log_w.clamp(max=math.log(cap))), 1.0)
        return torch.ones(mask.shape, dtype=torch.float32).masked_scatter(mask.cpu().bool(), w).to(self.device)

    def counted_tokens(self, rows: list[int]) -> int:
        """Response tokens of ``rows`` (old log-probs recorded) that the loss counts: finite old log-prob."""
        return sum(self.scored[self.distinct[i]] for i in rows)

    def micro_loss(self, rows: list[int], mini: list[int], model, micro_count: int | None = None,
                   mini_tokens: int | None = None, measure: dict | None = None):
        """Loss of micro-batch ``rows`` weighted by its share of mini-batch ``mini``: summed over the
        mini-batch's micro-batches it is the mini-batch loss (token- or sequence-mean). Under
        "token_mean_per_micro" the share is 1 / ``micro_count`` (the mini-batch's micro-batches).
        ``mini_tokens``: the mini-batch's ``counted_tokens`` (given by a rank that holds a shard of it).
        ``measure``: rollout statistics of these rows against this forward (the policy still unchanged)
        are merged into it (``merge_rollout_stats``)."""
        cfg = self.cfg
        logp, entropy, mask = self.forward(rows, model, with_entropy=True)
        where = mask.bool()
        if measure is not None:
            merge_rollout_stats(measure, self.rollout_stats(rows, logp.detach()[where]))
        # Recorded response log-probs laid into this batch's response positions (row-major, as recorded).
        old_lp = torch.zeros_like(logp).masked_scatter(where, self.flat_old(rows))
        ref_lp = torch.zeros_like(logp).masked_scatter(where, self.flat_old(rows, self.ref)) if self.ref else None
        weights = self.is_weights(rows, mask, cfg.algo.tis_cap) if cfg.algo.get("tis_cap") is not None else None
        loss, metrics = policy_loss(logp, old_lp, self.row_advantages(rows, mask), mask, cfg.algo.clip_low,
                                    cfg.algo.clip_high, cfg.algo.loss_agg, ref_lp, cfg.algo.kl_coef, entropy,
                                    cfg.algo.entropy_coef, cfg.algo.clip_ratio_c, cfg.algo.kl_clamp, weights)
        if cfg.algo.loss_agg == "token_mean":  # tokens the loss counts: response tokens with a finite old log-prob
            total = self.counted_tokens(mini) if mini_tokens is None else mini_tokens
            share = self.counted_tokens(rows) / max(total, 1)
        elif cfg.algo.loss_agg == "token_mean_per_micro":
            share = 1.0 / micro_count
        else:
            share = len(rows) / len(mini)
        return loss * share, {k: v * share for k, v in metrics.items()}


def loss_is_zero(cfg: DictConfig, policy, advantages: np.ndarray) -> bool:
    """Whether the update's loss is exactly 0 whatever the weights, so its gradient is too: every
    advantage is 0 (all groups zero-variance: L_pg = -A * ratio = 0 token by token), no KL or entropy
    term, and no dropout (a forward pass that draws random numbers would shift the RNG stream)."""
    dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in policy.modules())
    dropout = dropout or bool(getattr(getattr(policy, "config", None), "attention_dropout", 0.0))
    zero = all(not np.any(a) for a in advantages) if isinstance(advantages, list) else not np.any(advantages)
    return zero and cfg.algo.kl_coef == 0 and cfg.algo.entropy_coef == 0 and not dropout


def update(cfg: DictConfig, policy, reference, optimizer, batch: Rollout, advantages, iteration: int):
    """PPO-clip epochs over shuffled mini-batches of env-step samples; returns averaged loss metrics and
    ``train/skipped_updates`` (1 when the loss was provably 0, ``loss_is_zero``: no forward or backward
    pass runs, and each optimizer step gets exact zero gradients, so AdamW's momentum and weight decay
    move the weights as the computed, all-zero gradients would; only the forward-pass metrics,
    entropy, clip fractions and approx_kl_old, are then not logged). ``advantages``: one per sample [n],
    or per response token (a list of [T_i] arrays, ``gigpo.critic``)."""
    if loss_is_zero(cfg, policy, advantages):
        for p in policy.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)  # the optimizer reads them and leaves them as they are
        for _ in minibatches(cfg, len(batch.samples), iteration):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss/pg_loss": 0.0, "loss/policy_loss": 0.0, "loss/grad_norm": 0.0, "train/skipped_updates": 1.0}
    scorer = Scorer(cfg, policy, batch.samples, advantages, cfg.train.device)
    micro = cfg.train.micro_batch_size
    policy.eval()
    # A batch without the sampler's log-probs (a synthetic one) is rescored like any other rollout.
    reuse = rollout_logprobs_are_old(cfg) and all(s.logprobs is not None for s in batch.samples)
    if reuse:
        scorer.take_old()
    if not reuse or reference is not None:
        distinct = [scorer.first[d] for d in sorted(range(len(scorer.first)), key=lambda d: scorer.order[d])]
        for start in range(0, len(distinct), micro):
            scorer.record_old(distinct[start : start + micro], None if reuse else policy, reference)
    rollout = None if reuse else finish_rollout_stats(scorer.rollout_stats(list(range(len(batch.samples)))))

    policy.train()
    totals: dict[str, float] = defaultdict(float)
    minis = minibatches(cfg, len(batch.samples), iteration)
    first_minibatch: dict = {}  # with reuse: the mismatch, measured where the policy is still the sampler's
    for m, mini in enumerate(minis):
        optimizer.zero_grad(set_to_none=True)
        micro_batches = scorer.micro_batches(mini, micro)
        for rows in micro_batches:
            loss, metrics = scorer.micro_loss(rows, mini, policy, len(micro_batches),
                                              measure=first_minibatch if reuse and m == 0 else None)
            loss.backward()
            for k, v in metrics.items():
                totals[k] += v
        max_norm = cfg.train.grad_clip or math.inf  # 0: no clipping, the meaning DeepSpeed gives it
        totals["grad_norm"] += float(torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm))
        optimizer.step()
    if rollout is None:
        rollout = finish_rollout_stats(first_minibatch) if first_minibatch else {"loss/masked_tokens": 0.0}
    return {**{f"loss/{k}": v / max(len(minis), 1) for k, v in totals.items()}, **rollout,
            "train/skipped_updates": 0.0}


def merge_rollout_stats(into: dict, stats: dict[str, float]) -> dict:
    """Combine two ``Scorer.rollout_stats`` results (sums add, extremes take the extreme)."""
    if not into:
        into.update(stats)
        return into
    for key in ("masked", "pairs", "abs_sum"):
        into[key] += stats[key]
    into["compared"] = max(into["compared"], stats["compared"])
    into["abs_max"] = max(into["abs_max"], stats["abs_max"])
    into["log_ratio_max"] = max(into["log_ratio_max"], stats["log_ratio_max"])
    into["log_ratio_min"] = min(into["log_ratio_min"], stats["log_ratio_min"])
    return into


def finish_rollout_stats(stats: dict[str, float]) -> dict[str, float]:
    """Metrics from ``Scorer.rollout_stats`` sums (over one or several ranks): ``loss/masked_tokens``
    always, ``rollout/*`` when the samples carry the sampler's log-probs. A batch with log-probs but
    without a single comparable token has no mismatch to report: an error, not a quiet 0."""
    out = {"loss/masked_tokens": stats["masked"]}
    if not stats["compared"]:
        return out
    if stats["pairs"] == 0:
        raise ValueError("rollout/logprob_diff_mean: no response token has a finite log-prob under both the "
                         "sampler and the recomputed old policy")
    return {**out, "rollout/logprob_diff_mean": stats["abs_sum"] / stats["pairs"],
            "rollout/logprob_diff_max": stats["abs_max"], "rollout/ratio_min": math.exp(stats["log_ratio_min"]),
            "rollout/ratio_max": math.exp(stats["log_ratio_max"])}


def _sample_key(sample) -> tuple:
    """What a sample's log-probs depend on: its tokens and, under constrained decoding, the allowed ones."""
    allowed = tuple(map(tuple, sample.allowed)) if sample.allowed else None
    return tuple(sample.prompt_ids), tuple(sample.response_ids), allowed
