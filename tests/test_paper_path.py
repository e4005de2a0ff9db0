"""The paper path, third pass (issue 23): truncated sampling stays finite, verl's micro-batch
weighting, verl-agent's similarity rule, rollout/trainer mismatch measured and corrected, GRPO/RLOO
without step groups."""

from __future__ import annotations

import math
import random
from difflib import SequenceMatcher
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import Qwen2Config, Qwen2ForCausalLM

from gigpo.advantage import advantage_parts, step_group_ids
from gigpo.checks import check
from gigpo.config import register_configs
from gigpo.loss import k3_kl, policy_loss
from gigpo.policy.model import Sample, pad_batch, token_logprobs

ROOT = Path(__file__).resolve().parents[1]
register_configs()
VOCAB = 50


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("config", overrides=overrides)


def tiny_model(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1))


def random_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    return [Sample([rng.randrange(2, VOCAB) for _ in range(rng.randint(2, 8))],
                   [rng.randrange(2, VOCAB) for _ in range(rng.randint(1, 6))], "") for _ in range(n)]


# ---- item 2: a token outside the old top-k/top-p set --------------------------------------------

def test_a_token_with_non_finite_old_logprob_leaves_the_loss_and_the_kl():
    # Token (0, 1) was sampled at the nucleus edge: -inf under old, new and reference (-inf - -inf = NaN).
    # The other three tokens: ratio 1, A = (1, -2), k3 of d = log 0.5: 0.5 + log 2 - 1 = 0.1931.
    inf = math.inf
    logits = torch.tensor([[0.0, -inf], [0.0, 0.0]], requires_grad=True)
    logp = logits * 1.0
    old = torch.tensor([[0.0, -inf], [0.0, 0.0]])
    ref = torch.tensor([[math.log(0.5), -inf], [math.log(0.5), math.log(0.5)]])
    mask = torch.ones(2, 2)
    loss, metrics = policy_loss(logp, old, torch.tensor([1.0, -2.0]), mask, ref_logprobs=ref, kl_coef=0.1)
    k3 = 0.5 + math.log(2) - 1
    # token mean over the 3 finite tokens: pg = (-1 + 2 + 2) / 3 = 1, kl = k3
    assert metrics["pg_loss"] == pytest.approx(1.0)
    assert metrics["kl"] == pytest.approx(k3)
    assert loss.item() == pytest.approx(1.0 + 0.1 * k3)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # the k3 estimate alone: both -inf is no divergence, not NaN
    assert k3_kl(torch.tensor([-inf]), torch.tensor([-inf])).item() == 0.0


def test_top_k_update_stays_finite_and_counts_masked_tokens():
    """A whole PPO update under model.top_k=1: every response token but the argmax has log pi_old =
    -inf. Before the fix the loss (and so the gradient) was NaN."""
    from gigpo.ppo import update

    cfg = compose_cfg(["model.top_k=1", "train.mini_batch_size=8", "train.micro_batch_size=3", "algo.kl_coef=0.01",
                       "model.constrained=false"])
    model = tiny_model()
    reference = tiny_model()
    samples = random_samples(12)
    with torch.no_grad():  # which response tokens fall outside the top-1 set
        logp, _ = token_logprobs(model, pad_batch(samples, 0, "cpu"), 1.0, top_k=1)
        mask = pad_batch(samples, 0, "cpu")["response_mask"].bool()
        outside = int((torch.isinf(logp) & mask).sum())
    assert 0 < outside < int(mask.sum())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    metrics = update(cfg, model, reference, optimizer, SimpleNamespace(samples=samples),
                     np.linspace(-1.0, 1.0, len(samples)), iteration=0)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["loss/masked_tokens"] == outside
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---- item 5: verl's micro-batch weighting -------------------------------------------------------

def test_token_mean_per_micro_is_the_mean_of_micro_batch_token_means():
    from gigpo.ppo import Scorer

    cfg = compose_cfg(["algo.loss_agg=token_mean_per_micro", "model.constrained=false"])
    check(cfg, runtime=False)
    model = tiny_model()
    samples = random_samples(10, seed=1)
    advantages = np.random.default_rng(0).normal(size=len(samples))
    scorer = Scorer(cfg, model, samples, advantages, "cpu")
    mini = list(range(len(samples)))
    with torch.no_grad():
        scorer.record_old(mini, model, None)
    micro = scorer.micro_batches(mini, 4)
    tokens = [sum(len(samples[i].response_ids) for i in rows) for rows in micro]
    assert len(micro) == 3 and len(set(tokens)) > 1  # unequal micro-batches: the two weightings differ
    total, expected, plain = 0.0, 0.0, 0.0
    for rows, count in zip(micro, tokens):
        loss, _ = scorer.micro_loss(rows, mini, model, len(micro))
        total += loss.item()
        logp, entropy, mask = scorer.forward(rows, model)
        old = torch.zeros_like(logp).masked_scatter(mask.bool(), torch.cat([scorer.old[scorer.distinct[i]] for i in rows]))
        own, _ = policy_loss(logp, old, torch.as_tensor(advantages[rows], dtype=torch.float32), mask)
        expected += own.item() / len(micro)  # verl: each micro-batch's token mean / number of micro-batches
        plain += own.item() * count / sum(tokens)  # token_mean: weighted by the micro-batch's tokens
    assert total == pytest.approx(expected, abs=1e-6)
    assert abs(expected - plain) > 1e-4


def test_loss_agg_and_tis_cap_are_checked_at_composition():
    with pytest.raises(ValueError, match="algo.loss_agg='token_sum'"):
        check(compose_cfg(["algo.loss_agg=token_sum"]), runtime=False)
    with pytest.raises(ValueError, match="algo.tis_cap=0.5"):
        check(compose_cfg(["algo.tis_cap=0.5"]), runtime=False)
    with pytest.raises(ValueError, match="algo.similarity_match='most'"):
        check(compose_cfg(["algo.similarity_match=most"]), runtime=False)
    cfg = compose_cfg([])
    assert cfg.algo.tis_cap is None and cfg.algo.similarity_match == "best" and cfg.algo.loss_agg == "token_mean"


# ---- item 6: similarity anchors ------------------------------------------------------------------

def reference_step_groups(group_id, anchors, threshold):
    """verl-agent's ``build_step_group`` with enable_similarity, transcribed: per episode group, rows
    in order, each joins the first cluster whose representative (founder) is similar enough by
    difflib's ratio, else founds one. Returns the partition as a set of frozensets of rows."""
    clusters = []
    by_group: dict = {}
    for row, (g, text) in enumerate(zip(group_id, anchors)):
        for cluster in by_group.setdefault(g, []):
            if SequenceMatcher(None, text, cluster["rep"]).ratio() >= threshold:
                cluster["rows"].append(row)
                break
        else:
            by_group[g].append({"rep": text, "rows": [row]})
    for group_clusters in by_group.values():
        clusters += [frozenset(c["rows"]) for c in group_clusters]
    return set(clusters)


def partition(codes) -> set:
    rows: dict = {}
    for row, code in enumerate(codes):
        rows.setdefault(int(code), []).append(row)
    return {frozenset(r) for r in rows.values()}


def test_first_match_is_verl_agents_rule_and_best_match_differs_where_it_should():
    kitchen = "you are in the kitchen. you see a table"
    garden = "you are in the garden. you see a bench"
    both = "you are in the garden. you see a table"  # difflib 0.883 to kitchen, 0.921 to garden; 0.805 between those
    groups = step_group_ids([0, 0, 0], [kitchen, garden, both], 0.85, "first")
    assert groups.tolist() == [0, 1, 0]  # first founder that clears 0.85: the kitchen
    assert step_group_ids([0, 0, 0], [kitchen, garden, both], 0.85, "best").tolist() == [0, 1, 1]
    # difflib's ratio is not rapidfuzz's: beyond 200 characters difflib drops popular characters as junk
    long_a, long_b = "x" * 150 + "y" * 100, "y" * 100 + "x" * 150  # difflib 0.0, rapidfuzz 0.6
    assert step_group_ids([0, 0], [long_a, long_b], 0.5, "first").tolist() == [0, 1]
    assert step_group_ids([0, 0], [long_a, long_b], 0.5, "best").tolist() == [0, 0]


def test_first_match_equals_the_reference_loop_on_random_batches():
    rng = random.Random(0)
    words = ["you", "see", "a", "table", "bench", "kitchen", "garden", "drawer", "1", "2", "in", "the"]
    for _ in range(60):
        n = rng.randint(1, 30)
        group_id = [rng.randrange(3) for _ in range(n)]
        pool = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(6)]
        anchors = [rng.choice(pool) for _ in range(n)]
        threshold = rng.choice([0.3, 0.5, 0.7, 0.9, 1.0])
        assert partition(step_group_ids(group_id, anchors, threshold, "first")) == \
            reference_step_groups(group_id, anchors, threshold)


# ---- item 8: rollout/trainer mismatch ------------------------------------------------------------

def perturbed_rollout(temperature: float, n: int = 12):
    """Samples drawn by the real sampler at ``temperature`` (with its log-probs) while the scorer
    (cfg.model.temperature = 1) scores at 1: a sampler that deliberately differs from the trainer."""
    from gigpo.config import ModelConfig
    from gigpo.policy.model import generate
    from gigpo.policy.tokenizer import build_tokenizer

    rng = random.Random(0)
    words = "the box is on a wall you see player target".split()
    tokenizer = build_tokenizer([" ".join(rng.choice(words) for _ in range(10)) for _ in range(100)], 120)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128, tie_word_embeddings=True,
                                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                         initializer_range=0.3))
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(n)]
    torch.manual_seed(1)
    samples = generate(model.eval(), tokenizer, prompts, ModelConfig(max_response_tokens=5), temperature,
                       logprobs=True)
    return model, tokenizer, samples


@pytest.mark.parametrize("temperature", [1.0, 1.6])
def test_rollout_mismatch_is_measured_against_the_recomputed_old_logprobs(temperature):
    from gigpo.ppo import update

    model, tokenizer, samples = perturbed_rollout(temperature)
    cfg = compose_cfg(["model.constrained=false", "train.mini_batch_size=64", "train.lr=0"])
    with torch.no_grad():  # the trainer's log-probs as the update computes them (shared prompts)
        batch = pad_batch(samples, tokenizer.pad_token_id, "cpu", share_prompts=True)
        logp, _ = token_logprobs(model.eval(), batch, 1.0)
    diffs = torch.cat([logp[i, len(s.prompt_ids) - 1 : len(s.prompt_ids) - 1 + len(s.response_ids)]
                       - torch.tensor(s.logprobs) for i, s in enumerate(samples)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    metrics = update(cfg, model, None, optimizer, SimpleNamespace(samples=samples), np.ones(len(samples)), 0)
    assert metrics["rollout/logprob_diff_mean"] == pytest.approx(float(diffs.abs().mean()), abs=1e-6)
    assert metrics["rollout/logprob_diff_max"] == pytest.approx(float(diffs.abs().max()), abs=1e-6)
    assert metrics["rollout/ratio_min"] == pytest.approx(math.exp(float(diffs.min())), rel=1e-5)
    assert metrics["rollout/ratio_max"] == pytest.approx(math.exp(float(diffs.max())), rel=1e-5)
    if temperature == 1.0:  # the sampler is the scorer: no gap
        assert metrics["rollout/logprob_diff_max"] < 1e-4
    else:  # a hotter sampler: a clear gap both ways
        assert metrics["rollout/logprob_diff_mean"] > 0.05
        assert metrics["rollout/ratio_min"] < 0.9 and metrics["rollout/ratio_max"] > 1.1


@pytest.mark.parametrize("tis_cap", [None, 1.5])
def test_truncated_importance_sampling_weighs_each_token_by_the_capped_ratio(tis_cap):
    """One mini-batch, lr 0: the policy is the old one (ratio 1, nothing clipped), so pg_loss is
    -sum_t w_t A_i / #tokens with w_t = min(pi_old / pi_rollout, cap) (1 without TIS)."""
    from gigpo.ppo import update

    model, tokenizer, samples = perturbed_rollout(1.6)
    # model.sampler=hf: these samples come from a sampler other than the in-process native one, whose
    # log-probs alone the update may take as the old policy's (gigpo.ppo.rollout_logprobs_are_old).
    overrides = ["model.constrained=false", "train.mini_batch_size=64", "train.lr=0", "model.sampler=hf"]
    cfg = compose_cfg(overrides + ([f"algo.tis_cap={tis_cap}"] if tis_cap else []))
    advantages = np.linspace(-1.0, 2.0, len(samples))
    with torch.no_grad():
        logp, _ = token_logprobs(model.eval(), pad_batch(samples, tokenizer.pad_token_id, "cpu"), 1.0)
    weighted, tokens = 0.0, 0
    for i, s in enumerate(samples):
        old = logp[i, len(s.prompt_ids) - 1 : len(s.prompt_ids) - 1 + len(s.response_ids)]
        w = torch.exp(old - torch.tensor(s.logprobs))
        w = w.clamp(max=tis_cap) if tis_cap else torch.ones_like(w)
        weighted += float((w * advantages[i]).sum())
        tokens += len(s.response_ids)
    metrics = update(cfg, model, None, torch.optim.SGD(model.parameters(), lr=0.0), SimpleNamespace(samples=samples),
                     advantages, 0)
    assert metrics["loss/pg_loss"] == pytest.approx(-weighted / tokens, abs=1e-5)


def test_tis_needs_the_samplers_logprobs():
    from gigpo.ppo import update

    cfg = compose_cfg(["model.constrained=false", "algo.tis_cap=2"])
    with pytest.raises(ValueError, match="every sampler must return its own log-prob"):
        update(cfg, tiny_model(), None, torch.optim.SGD(tiny_model().parameters(), lr=0.0),
               SimpleNamespace(samples=random_samples(4)), np.ones(4), 0)


@pytest.mark.parametrize("sampler", ["native", "hf"])
def test_every_run_logs_the_rollout_mismatch(tmp_path, sampler):
    import json

    from gigpo.train import train

    cfg = compose_cfg(["env.groups=2", "algo.group_size=2", "env.max_steps=2", "env.val_episodes=2",
                       "train.iterations=1", "logger=none", f"model.sampler={sampler}", f"run_dir={tmp_path}"])
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "loss/policy_loss" in r]
    assert len(trained) == 1
    row = trained[0]
    # the default sampler draws from the scorer's distribution: the float32 gap is rounding only
    assert 0.0 <= row["rollout/logprob_diff_mean"] <= row["rollout/logprob_diff_max"] < 1e-4
    assert row["rollout/ratio_min"] == pytest.approx(1.0, abs=1e-4)
    assert row["rollout/ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert row["loss/masked_tokens"] == 0


# ---- item 9: estimators that read no step groups build none ------------------------------------

@pytest.mark.parametrize("name, grouped", [("gigpo", True), ("graphgpo", True), ("grpo", False), ("rloo", False)])
def test_only_estimators_that_read_step_groups_build_them(name, grouped):
    hashed = []

    class Anchor(str):  # counts the hashing the step grouping does
        def __hash__(self):
            hashed.append(self)
            return str.__hash__(self)

    anchors = [Anchor(a) for a in "abab"]
    parts = advantage_parts(name, [0.0, 1.0, 0.0, 2.0], [0, 0, 0, 0], [0, 0, 1, 1], anchors,
                            next_anchor_key=[Anchor(a) for a in "baba"], success=[False, False, True, True])
    assert (parts["step_group"] is not None) == grouped
    assert bool(hashed) == grouped


# ---- item 3: the WebShop presets are run_webshop.sh's settings -----------------------------------

@pytest.mark.parametrize("experiment", ["webshop_qwen1.5b", "webshop_qwen7b"])
def test_webshop_presets_pin_the_paper_scripts_settings(experiment):
    cfg = compose_cfg([f"experiment={experiment}", "model.path=/models/qwen"])
    check(cfg, runtime=False)
    assert cfg.train.mini_batch_size == 64 and cfg.train.iterations == 150 and cfg.train.val_every == 5
    assert cfg.algo.entropy_coef == 0.001 and cfg.train.weight_decay == 0.01
    assert cfg.algo.episode_stats == "step" and cfg.algo.mode == "mean"
    assert cfg.algo.kl_coef == 0.01 and cfg.algo.gamma == 0.95 and cfg.algo.group_size == 8 and cfg.env.groups == 16
