"""The fast paths sample and learn what the plain ones do.

- the native sampler (``model.sampler=native``) reports the log-probs the scorer computes, keeps
  constrained samples admissible, draws actions with the exact masked probabilities (chi-square),
  and decodes greedily exactly as transformers' ``generate``;
- ``pad_batch`` equals the per-row loop it replaced;
- the scorer's dedup of identical samples and its split of a mini-batch into micro-batches give the
  loss and gradients of one plain forward over the whole mini-batch.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from gigpo.config import ModelConfig
from gigpo.loss import policy_loss
from gigpo.policy.model import ActionTrie, Sample, build_tiny, generate, pad_batch, token_logprobs
from gigpo.policy.tokenizer import build_tokenizer

ACTIONS = ["up", "down", "left", "right", "search[red shoes]", "search[red shirt]", "click[item 3]", "look"]


@pytest.fixture(scope="module")
def policy():
    words = "the box is on a wall you see player target red blue shoes shirt item click search".split()
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(200)]
    corpus += [f"<action>{a}</action>" for a in ACTIONS]
    tokenizer = build_tokenizer(corpus, 300)
    torch.manual_seed(0)
    cfg = ModelConfig(max_response_tokens=6, max_prompt_tokens=48)
    model = build_tiny(cfg, tokenizer).eval()
    with torch.no_grad():  # sharper than the init, so the action probabilities differ clearly
        model.get_output_embeddings().weight.mul_(20.0)
    return cfg, model, tokenizer


def tiny_qwen2(**extra):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, **extra))


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "the box is on a wall you see player target red blue".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 40))) for _ in range(n)]


def admissible(n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample(ACTIONS, rng.randint(1, len(ACTIONS))) for _ in range(n)]


def scored(model, tokenizer, samples, cfg) -> torch.Tensor:
    batch = pad_batch(samples, tokenizer.pad_token_id, "cpu", len(tokenizer))
    with torch.no_grad():
        return token_logprobs(model, batch, 1.0, top_k=cfg.top_k, top_p=cfg.top_p)[0]


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (3, 0.8)])
def test_native_sampler_logprobs_equal_scorer_logprobs(policy, constrained, top_k, top_p):
    cfg, model, tokenizer = policy
    cfg = dataclasses.replace(cfg, top_k=top_k, top_p=top_p)
    texts = prompts(24) * 2  # duplicated prompts share one prefill
    allowed = admissible(48) if constrained else None
    torch.manual_seed(1)
    samples = generate(model, tokenizer, texts, cfg, 1.0, allowed, logprobs=True)
    logp = scored(model, tokenizer, samples, cfg)
    for i, s in enumerate(samples):
        start = len(s.prompt_ids) - 1
        assert len(s.logprobs) == len(s.response_ids)
        torch.testing.assert_close(logp[i, start : start + len(s.response_ids)], torch.tensor(s.logprobs),
                                   atol=1e-4, rtol=0.0)
        if constrained:  # always an admissible action, ended by EOS
            assert s.response_ids[-1] == tokenizer.eos_token_id
            assert s.text.removeprefix("<action>").removesuffix("</action>") in allowed[i]


def test_native_greedy_decoding_equals_transformers_generate(policy):
    cfg, model, tokenizer = policy
    texts, allowed = prompts(32, seed=3), admissible(32, seed=3)
    for actions in (None, allowed):
        native = generate(model, tokenizer, texts, cfg, 0.0, actions)
        hf = generate(model, tokenizer, texts, dataclasses.replace(cfg, sampler="hf"), 0.0, actions)
        assert [s.response_ids for s in native] == [s.response_ids for s in hf]
        assert [s.allowed for s in native] == [s.allowed for s in hf]


@pytest.mark.parametrize("sampler", ["native", "hf"])
def test_constrained_action_frequencies_match_the_masked_policy(policy, sampler):
    # Exact probability of each action: the product of its masked token probabilities (the scorer's),
    # against the frequencies of 3,000 draws. Under H0 the p-value is uniform: 1e-3 fails 1 in 1,000.
    cfg, model, tokenizer = policy
    cfg = dataclasses.replace(cfg, sampler=sampler)
    prompt, actions = prompts(1, seed=5)[0], ACTIONS
    torch.manual_seed(2)
    samples = generate(model, tokenizer, [prompt] * 3000, cfg, 1.0, [actions] * 3000)
    counts = {a: 0 for a in actions}
    for s in samples:
        counts[s.text.removeprefix("<action>").removesuffix("</action>")] += 1
    trie = ActionTrie.of(tokenizer, tuple(actions))
    prompt_ids = samples[0].prompt_ids
    exact = {}
    for a in actions:
        response = tokenizer.encode(f"<action>{a}</action>", add_special_tokens=False) + [tokenizer.eos_token_id]
        allowed = [trie.allowed(tuple(response[:k]), tokenizer.pad_token_id) for k in range(len(response))]
        exact[a] = math.exp(float(scored(model, tokenizer, [Sample(prompt_ids, response, "", allowed)], cfg).sum()))
    assert sum(exact.values()) == pytest.approx(1.0, abs=1e-4)
    expected = np.array([exact[a] for a in actions]) * len(samples)
    observed = np.array([counts[a] for a in actions])
    rare = expected < 5  # pooled into one bin, as the chi-square approximation asks
    expected = np.append(expected[~rare], expected[rare].sum())
    observed = np.append(observed[~rare], observed[rare].sum())
    expected *= observed.sum() / expected.sum()  # float32 probabilities sum to 1 within 1e-4 (checked above)
    assert len(expected) >= 3 and chisquare(observed, expected).pvalue > 1e-3, (counts, exact)


def loop_pad_batch(samples, pad_id, vocab_size=None):
    """The per-row pad_batch ``pad_batch`` replaced."""
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    width = max(lengths)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(samples), width), dtype=torch.long)
    response_mask = torch.zeros((len(samples), width - 1), dtype=torch.float32)
    for i, s in enumerate(samples):
        p, r = s.prompt_ids, s.response_ids
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention[i, : len(p) + len(r)] = 1
        response_mask[i, len(p) - 1 : len(p) + len(r) - 1] = 1.0
    batch = {"input_ids": ids, "attention_mask": attention, "response_mask": response_mask}
    if vocab_size is not None and any(s.allowed for s in samples):
        allowed = torch.ones((sum(len(s.response_ids) for s in samples), vocab_size), dtype=torch.bool)
        row = 0
        for s in samples:
            for k, tokens in enumerate(s.allowed or []):
                allowed[row + k].zero_()
                allowed[row + k, tokens] = True
            row += len(s.response_ids)
        batch["allowed"] = allowed
    return batch


def random_samples(rng: random.Random, n: int, vocab: int = 50, duplicates: bool = False) -> list[Sample]:
    samples = []
    for _ in range(n):
        if duplicates and samples and rng.random() < 0.5:
            samples.append(dataclasses.replace(rng.choice(samples)))
            continue
        p = [rng.randrange(2, vocab) for _ in range(rng.randint(1, 9))]
        r = [rng.randrange(2, vocab) for _ in range(rng.randint(1, 5))]
        allowed = [sorted(set(rng.sample(range(2, vocab), rng.randint(0, 3))) | {t}) for t in r]
        samples.append(Sample(p, r, "", allowed if rng.random() < 0.6 else None))
    return samples


def test_pad_batch_equals_the_per_row_loop():
    rng = random.Random(0)
    for _ in range(200):
        samples = random_samples(rng, rng.randint(1, 6))
        for vocab_size in (None, 50):
            fast, loop = pad_batch(samples, 3, "cpu", vocab_size), loop_pad_batch(samples, 3, vocab_size)
            assert fast.keys() == loop.keys()
            for key in loop:
                assert fast[key].dtype == loop[key].dtype and torch.equal(fast[key], loop[key]), key


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean"])
def test_deduplicated_micro_batches_give_the_plain_mini_batch_loss_and_gradients(loss_agg):
    from omegaconf import OmegaConf
    from gigpo.ppo import Scorer

    model = tiny_qwen2()
    samples = random_samples(random.Random(1), 40, duplicates=True)
    advantages = np.random.default_rng(0).normal(size=len(samples))
    cfg = OmegaConf.create({
        "model": {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
        "algo": {"entropy_coef": 0.01, "loss_agg": loss_agg, "clip_low": 0.2, "clip_high": 0.2, "kl_coef": 0.0,
                 "clip_ratio_c": 3.0, "kl_clamp": 10.0},
    })
    scorer = Scorer(cfg, model, samples, advantages, "cpu")
    assert len(set(scorer.distinct)) < len(samples)
    mini = list(range(len(samples)))
    with torch.no_grad():  # old log-probs from a perturbed policy, so ratios differ from 1
        scorer.record_old(scorer.first, model, None)
        for key in scorer.old:
            scorer.old[key] = scorer.old[key] + 0.3 * torch.randn_like(scorer.old[key])

    model.zero_grad()
    total = 0.0
    micro = scorer.micro_batches(mini, 7)
    assert all(len({scorer.distinct[i] for i in rows}) <= 7 for rows in micro)
    assert sorted(i for rows in micro for i in rows) == mini
    for rows in micro:
        loss, _ = scorer.micro_loss(rows, mini, model)
        loss.backward()
        total += loss.item()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()  # the plain mini-batch loss: every sample in one forward, no dedup
    batch = loop_pad_batch(samples, 0, 50)
    logp, entropy = token_logprobs(model, batch, 1.0, with_entropy=True)
    width = logp.shape[1]
    old = torch.zeros((len(mini), width)).masked_scatter(batch["response_mask"].bool(),
                                                         torch.cat([scorer.old[scorer.distinct[i]] for i in mini]))
    loss, _ = policy_loss(logp, old, torch.as_tensor(advantages, dtype=torch.float32), batch["response_mask"],
                          agg=loss_agg, entropy=entropy, entropy_coef=0.01)
    loss.backward()
    assert total == pytest.approx(float(loss), abs=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def prompt_set(kind: str, rng: random.Random) -> list[list[int]]:
    """Prompts without structure, or sharing prefixes (stems, branches, one the prefix of another), or of one token."""
    if kind == "random":
        return [[rng.randrange(2, 50) for _ in range(rng.randint(1, 12))] for _ in range(4)]
    if kind == "one_token":
        return [[rng.randrange(2, 50)] for _ in range(3)]
    if kind == "one_feed":  # shared prefixes, every prompt answered once (below): the feeds run the last level
        stem = [rng.randrange(2, 50) for _ in range(6)]
        return [stem + [rng.randrange(2, 50) for _ in range(rng.randint(1, 5))] for _ in range(5)] + [stem[:3]]
    stem = [rng.randrange(2, 50) for _ in range(6)]
    branches = [stem + [rng.randrange(2, 50) for _ in range(rng.randint(1, 5))] for _ in range(3)]
    prompts_ = [b + [rng.randrange(2, 50) for _ in range(rng.randint(0, 4))] for b in branches for _ in range(2)]
    prompts_ += [stem[:3], stem + [7], stem + [7, 9], [rng.randrange(2, 50)]]  # a context that prefixes others; 1 token
    return prompts_


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("prompts_kind, level_cost", [("random", 32), ("shared", 0), ("shared", 32), ("one_token", 0),
                                                     ("one_feed", 0), ("one_feed", 32), ("one_feed", 64)])
def test_shared_prompt_scoring_equals_plain_scoring_with_gradients(constrained, prompts_kind, level_cost, monkeypatch):
    import gigpo.policy.model

    monkeypatch.setattr(gigpo.policy.model, "LEVEL_COST", level_cost)  # 0: a level at every shared prefix
    model = tiny_qwen2()
    rng = random.Random(2)
    prompts_ = prompt_set(prompts_kind, rng)
    samples = []
    for k in range(max(12, 2 * len(prompts_))):  # several responses per prompt, prompts of different lengths
        r = [rng.randrange(2, 50) for _ in range(rng.randint(1, 6))]
        # constrained: some tokens forced (the target alone allowed), some responses wholly
        allowed = [[t] if rng.random() < 0.4 else sorted({t, *rng.sample(range(2, 50), 3)}) for t in r] \
            if constrained else None
        samples.append(Sample(prompts_[k % len(prompts_)], r, "", allowed))
    if prompts_kind == "one_feed":
        samples = samples[: len(prompts_)]
    if constrained:  # actions as the sampler makes them: forced tag, a choice, forced tail; one feed per prompt
        choices = [20, 21, 22]
        samples += [Sample(p, [10, c, 11, 1], "", [[10], choices, [11], [1]]) for p in prompts_ for c in choices]
    shared = pad_batch(samples, 0, "cpu", 50, share_prompts=True)
    levels = shared["prompt_levels"]
    # (levels run on their own, whether the feeds run the last level's columns), each path compared below.
    # A 1-token prompt (random, shared) has no context to carry: never merged. one_feed: one feed per
    # context unconstrained (merged at any cost); constrained, the action samples add a second feed to
    # each of the 6 contexts, merged only when 6 x the last level's width (10) is within LEVEL_COST.
    expected = {("random", 32): (1, False), ("shared", 0): (6, False), ("shared", 32): (2, False),
                ("one_token", 0): (0, False)}.get((prompts_kind, level_cost))
    if prompts_kind == "one_feed":
        expected = {(0, False): (2, True), (32, False): (0, True), (64, False): (0, True),
                    (0, True): (3, False), (32, True): (1, False), (64, True): (0, True)}[level_cost, constrained]
    assert (len(levels), shared["merged"]) == expected
    if constrained:  # each prompt's three actions share one feed (one_feed: nothing else to share)
        shared_feeds = len(samples) - 2 * len(prompts_)
        assert shared["sample_ids"].shape[0] == shared_feeds if prompts_kind == "one_feed" else \
            shared["sample_ids"].shape[0] < shared_feeds

    def run(share: bool):
        model.zero_grad()
        batch = pad_batch(samples, 0, "cpu", 50, share_prompts=share)
        logp, entropy = token_logprobs(model, batch, 0.7, with_entropy=True)
        mask = batch["response_mask"]
        ((logp * mask).sum() + 0.1 * (entropy * mask).sum()).backward()
        return logp.detach(), entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, shared = run(False), run(True)
    torch.testing.assert_close(shared[0], plain[0], atol=1e-5, rtol=0.0)
    torch.testing.assert_close(shared[1], plain[1], atol=1e-5, rtol=0.0)
    for name, grad in plain[2].items():
        torch.testing.assert_close(shared[2][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_shared_prompt_scoring_of_wholly_forced_responses_is_zero_and_keeps_the_graph():
    model = tiny_qwen2()
    samples = [Sample([5, 6, 7], [8, 9], "", [[8], [9]]), Sample([5, 6], [4], "", [[4]])]  # nothing to choose
    for share in (False, True):
        model.zero_grad()
        batch = pad_batch(samples, 0, "cpu", 50, share_prompts=share)
        logp, entropy = token_logprobs(model, batch, 1.0, with_entropy=True)
        assert torch.equal(logp, torch.zeros_like(logp)) and torch.equal(entropy, torch.zeros_like(entropy))
        (logp.sum() + entropy.sum()).backward()  # a loss with nothing to learn still backpropagates
        assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_action_trie_from_one_batch_encode_equals_per_action_encodes(policy):
    _, _, tokenizer = policy
    trie = ActionTrie(tokenizer, tuple(ACTIONS))
    children: dict[tuple[int, ...], set[int]] = {}
    for action in ACTIONS:
        ids = tokenizer.encode(f"<action>{action}</action>", add_special_tokens=False) + [tokenizer.eos_token_id]
        for k in range(len(ids)):
            children.setdefault(tuple(ids[:k]), set()).add(ids[k])
    assert trie.next == {prefix: sorted(tokens) for prefix, tokens in children.items()}


def test_unknown_sampler_fails_by_name(policy):
    cfg, model, tokenizer = policy
    with pytest.raises(ValueError, match="model.sampler='vllm'"):
        generate(model, tokenizer, ["the box"], dataclasses.replace(cfg, sampler="vllm"), 1.0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One run folder, so the default tokenizer is trained once for the tests below."""
    return tmp_path_factory.mktemp("run")


def default_batch(run_dir, overrides: list[str]):
    """The default config's policy (tiny model, easy Sokoban) and one training rollout of it."""
    from hydra import compose, initialize_config_dir

    from gigpo.config import register_configs
    from gigpo.train import build_policy, collect, compute_step_advantages, make_runner, seed_everything

    register_configs()
    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(version_base="1.3", config_dir=conf):
        cfg = compose("config", overrides=["logger=none", "env.groups=2", "algo.group_size=4", *overrides])
    seed_everything(0)
    policy, reference, tokenizer = build_policy(cfg, run_dir)
    runner = make_runner(cfg)
    try:
        policy.eval()
        batch, _, _ = collect(cfg, runner, policy, tokenizer, 0)
    finally:
        runner.close()
    advantages, _ = compute_step_advantages(cfg, batch)
    return cfg, policy, reference, batch, advantages


@pytest.mark.parametrize("overrides", [[], ["algo.kl_coef=0.1", "train.ppo_epochs=2", "train.mini_batch_size=16"],
                                       ["model.top_k=5", "model.top_p=0.9", "algo.loss_agg=seq_mean"]])
def test_update_with_the_sampler_log_probs_equals_the_update_that_rescores_them(run_dir, overrides):
    # The default path takes the native sampler's log-probs as the old policy's; rescoring them in a
    # no-grad pass (what HF generate and vLLM rollouts still do) must give the same update.
    from omegaconf import OmegaConf

    from gigpo.ppo import Scorer, rollout_logprobs_are_old, update

    cfg, policy, reference, batch, advantages = default_batch(run_dir, ["train.lr=0.01", *overrides])
    assert rollout_logprobs_are_old(cfg) and all(s.logprobs is not None for s in batch.samples)
    rescore = OmegaConf.merge(cfg, {"rollout": {"name": "vllm"}})  # any rollout but the native sampler's
    assert not rollout_logprobs_are_old(rescore)

    taken, recomputed = Scorer(cfg, policy, batch.samples, advantages, "cpu"), Scorer(cfg, policy, batch.samples,
                                                                                    advantages, "cpu")
    taken.take_old()
    recomputed.record_old(recomputed.first, policy, None)
    assert taken.old.keys() == recomputed.old.keys() and taken.scored == recomputed.scored
    for d, old in recomputed.old.items():  # each distinct sample's response tokens
        assert old.shape == (len(batch.samples[recomputed.first[d]].response_ids),)
        torch.testing.assert_close(taken.old[d], old, atol=1e-5, rtol=0.0)

    results = []
    for run_cfg in (cfg, rescore):
        model = copy.deepcopy(policy)
        ref = copy.deepcopy(reference) if reference is not None else None
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)  # Adam would blow up float noise in ~0 grads
        metrics = update(run_cfg, model, ref, optimizer, batch, advantages, 0)
        results.append((metrics, dict(model.named_parameters())))
    (fast, fast_params), (plain, plain_params) = results
    assert fast.keys() == plain.keys() and "loss/policy_loss" in fast
    for key in plain:
        assert fast[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key
    for name, p in plain_params.items():
        torch.testing.assert_close(fast_params[name], p, atol=1e-6, rtol=1e-5, msg=name)


def test_rollout_log_probs_are_old_only_for_the_in_process_native_sampler():
    from omegaconf import OmegaConf

    from gigpo.ppo import rollout_logprobs_are_old

    cfg = OmegaConf.create({"model": {"sampler": "native", "temperature": 1.0}, "rollout": {"name": "hf"},
                            "train": {"strategy": "single"}, "algo": {"tis_cap": None}})
    assert rollout_logprobs_are_old(cfg)
    for change in ({"model": {"sampler": "hf"}}, {"rollout": {"name": "vllm"}}, {"model": {"temperature": 0.0}},
                   {"train": {"strategy": "deepspeed"}}, {"algo": {"tis_cap": 2.0}}):
        assert not rollout_logprobs_are_old(OmegaConf.merge(cfg, change)), change


def test_take_old_refuses_samples_without_the_sampler_log_probs():
    from omegaconf import OmegaConf

    from gigpo.ppo import Scorer

    torch.manual_seed(0)
    model = build_tiny(ModelConfig(), build_tokenizer(["push the box up"], 300))
    samples = [Sample([5, 6], [7, 8], "", None, [-0.5, 0.0]), Sample([5, 6], [9], "", None, None)]
    cfg = OmegaConf.create({"model": {}, "train": {}})
    with pytest.raises(ValueError, match="sample 1: the sampler returned None log-probs"):
        Scorer(cfg, model, samples, np.zeros(2), "cpu").take_old()


def test_left_pad_equals_the_per_row_loop():
    from gigpo.policy.model import _left_pad

    rng = random.Random(3)
    for _ in range(200):
        rows = [[rng.randrange(1, 50) for _ in range(rng.randint(0, 6))] for _ in range(rng.randint(1, 5))]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), 7, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # the per-row loop _left_pad replaced
            if r:
                ids[i, width - len(r):] = torch.tensor(r)
                mask[i, width - len(r):] = 1
        fast_ids, fast_mask = _left_pad(rows, 7, "cpu")
        assert fast_ids.dtype == ids.dtype and torch.equal(fast_ids, ids)
        assert fast_mask.dtype == mask.dtype and torch.equal(fast_mask, mask)


def test_encode_prompts_keeps_the_ids_the_tokenizer_gives(policy):
    from gigpo.policy.model import encode_prompts

    _, _, tokenizer = policy
    texts = prompts(30, seed=7)
    for max_tokens in (48, 5):
        first = encode_prompts(tokenizer, texts[:20], max_tokens)  # encodes, then keeps
        again = encode_prompts(tokenizer, texts[10:], max_tokens)  # 10 kept, 10 new
        tokenizer.truncation_side = "left"
        plain = [tokenizer(t, truncation=True, max_length=max_tokens, add_special_tokens=False)["input_ids"]
                 for t in texts]
        assert first == plain[:20] and again == plain[10:]
        assert all(type(t) is int for row in again for t in row)


def test_encode_prompts_returns_kept_prompts_when_the_full_cache_is_cleared(policy, monkeypatch):
    # The README's main job crashed (KeyError) after 8,192 distinct prompts: a call whose new prompts
    # overflowed the cache cleared it, and its own already-kept prompts were then looked up there.
    from gigpo.policy import model

    _, _, tokenizer = policy
    texts = prompts(6, seed=11)
    monkeypatch.setattr(model, "PROMPT_CACHE", 4)
    monkeypatch.setattr(model, "_prompt_ids", type(model._prompt_ids)())
    model.encode_prompts(tokenizer, texts[:3], 48)  # 3 kept
    mixed = model.encode_prompts(tokenizer, texts[1:5], 48)  # 2 kept + 2 new > 4: the cache is cleared
    tokenizer.truncation_side = "left"
    assert mixed == [tokenizer(t, truncation=True, max_length=48, add_special_tokens=False)["input_ids"]
                     for t in texts[1:5]]


# ---- a sharp model: sampler and scorer positions must agree to the token -------------------------
# At the default init (std 0.02) attention is nearly uniform, so a sampler that attends the masked
# holes of forced feeds, or gives a token the wrong position, still agrees with the scorer to 1e-4.
# With init std 0.3 (every layer sharp), a different admissible subset per row (forced runs of
# different lengths: the rows' new tokens are padded on the left with holes) and prompts of
# different lengths (left-padded prefill), any position or mask slip shows as a gap of tenths of
# a nat. Checked by hand, each of these mutations of gigpo/policy/model.py fails this test (the
# others above pass the first two): the sampler attending the holes (an all-ones mask for the new
# tokens), decode positions counted over the padded width, prefill positions ignoring the left
# padding (arange), and the shared-prompt scorer's response positions counted from the padded prompt
# width. The hf sampler's log-probs (recorded by a logits processor) are checked the same way.

SHARP_ACTIONS = ["go to cabinet 1", "go to cabinet 2", "go to cabinet 12", "go to countertop 1", "go to countertop 2",
                 "take apple 1 from countertop 1", "take apple 1 from countertop 2", "take mug 2 from cabinet 1",
                 "open drawer 1", "open drawer 10", "open cabinet 1", "look", "inventory"]


@pytest.fixture(scope="module")
def sharp_policy():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    words = "the you see a cabinet countertop apple mug drawer on in red shoes size men go take put".split()
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(200)]
    corpus += [f"<action>{a}</action>" for a in SHARP_ACTIONS]
    tokenizer = build_tokenizer(corpus, 300)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, initializer_range=0.3)
    model = Qwen2ForCausalLM(config).eval()
    cfg = ModelConfig(max_response_tokens=8, max_prompt_tokens=96)
    return cfg, model, tokenizer


@pytest.mark.parametrize("sampler, share_prompts", [("native", False), ("native", True), ("hf", True)])
def test_sharp_model_sampler_logprobs_equal_scorer_logprobs_with_forced_runs(sharp_policy, sampler, share_prompts):
    cfg, model, tokenizer = sharp_policy
    cfg = dataclasses.replace(cfg, sampler=sampler)
    rng = random.Random(4)
    words = "the you see a cabinet countertop apple mug drawer on in red shoes size men go take put".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 30))) for _ in range(16)] * 2
    allowed = [rng.sample(SHARP_ACTIONS, rng.randint(2, len(SHARP_ACTIONS))) for _ in texts]
    tries = [ActionTrie.of(tokenizer, tuple(a)) for a in allowed]
    assert len({t.depth for t in tries}) > 1  # forced runs of different lengths across rows
    torch.manual_seed(3)
    samples = generate(model, tokenizer, texts, cfg, 1.0, allowed, logprobs=True)
    batch = pad_batch(samples, tokenizer.pad_token_id, "cpu", len(tokenizer), share_prompts=share_prompts)
    with torch.no_grad():
        logp = token_logprobs(model, batch, 1.0)[0]
    gaps = []
    for i, s in enumerate(samples):
        start = len(s.prompt_ids) - 1
        gaps.append(float((logp[i, start : start + len(s.response_ids)] - torch.tensor(s.logprobs)).abs().max()))
    assert max(gaps) < 1e-3, f"sampler/scorer gap up to {max(gaps):.3f} nat"
    # the fixture is sharp enough to tell: choices are far from uniform
    chosen = [v for s in samples for v in s.logprobs if v != 0.0]
    assert min(chosen) < -2.0


@pytest.mark.parametrize("level_cost", [0, 128])
def test_native_prefill_of_shared_prefixes_equals_generate_and_the_scorer(sharp_policy, level_cost, monkeypatch):
    # Prompts that share stems, of many lengths: the prefill runs them in levels (the scorer's plan), and
    # decoding goes on over caches with masked holes between a prompt's context and its last token.
    import gigpo.policy.model

    monkeypatch.setattr(gigpo.policy.model, "LEVEL_COST", level_cost)
    cfg, model, tokenizer = sharp_policy
    rng = random.Random(6)
    words = "the you see a cabinet countertop apple mug drawer on in red shoes size men go take put".split()
    stems = [" ".join(rng.choice(words) for _ in range(n)) for n in (6, 14)]
    texts = [f"{rng.choice(stems)} {' '.join(rng.choice(words) for _ in range(rng.randint(1, 12)))}" for _ in range(24)]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert max(map(len, encoded)) <= cfg.max_prompt_tokens and len(set(map(len, encoded))) > 3  # uncut; holes
    plan = pad_batch([Sample(ids, [0], "") for ids in encoded], 0, "cpu", share_prompts=True)
    assert len(plan["prompt_levels"]) >= (2 if level_cost == 0 else 1)
    for actions in (None, [rng.sample(SHARP_ACTIONS, rng.randint(2, len(SHARP_ACTIONS))) for _ in texts]):
        native = generate(model, tokenizer, texts, cfg, 0.0, actions)
        hf = generate(model, tokenizer, texts, dataclasses.replace(cfg, sampler="hf"), 0.0, actions)
        assert [s.response_ids for s in native] == [s.response_ids for s in hf]
        if actions is None:  # several decode steps, and the greedy responses depend on the prompt
            assert min(len(s.response_ids) for s in native) > 2 and len({tuple(s.response_ids) for s in native}) > 3
        torch.manual_seed(2)
        sampled = generate(model, tokenizer, texts, cfg, 1.0, actions, logprobs=True)
        batch = pad_batch(sampled, tokenizer.pad_token_id, "cpu", len(tokenizer))
        with torch.no_grad():
            logp = token_logprobs(model, batch, 1.0)[0]
        for i, s in enumerate(sampled):
            start = len(s.prompt_ids) - 1
            torch.testing.assert_close(logp[i, start : start + len(s.response_ids)], torch.tensor(s.logprobs),
                                       atol=1e-4, rtol=0.0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("cached", [False, True])
def test_last_layer_at_the_read_positions_equals_the_full_forward_and_its_gradients(attention, holes, cached):
    # The last decoder layer run at a few (row, position) only: the states there and every parameter's
    # gradient equal the full forward's. sdpa without holes gets no mask from transformers (plain causal);
    # eager gets an additive float mask; with a cache, the keys include earlier columns.
    from gigpo.policy.model import _final_states, _last_layer_at

    model = tiny_qwen2(attn_implementation=attention)
    ids = torch.randint(2, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    if holes:
        mask[0, :2] = 0
        mask[2, 3] = 0
    split = 4 if cached else 0
    # (row, position) read: several per row, out of order; position 0 where there is no cache
    at = torch.tensor([[0, 6], [2, 4], [2, 6], [1, 5], [0, 5]] + ([] if cached else [[1, 0]]))
    weights = torch.randn(len(at), 32)

    def states(restricted: bool):
        model.zero_grad()
        with _final_states(model) as (_, captured):
            cache = None
            if cached:  # the first columns on their own, as a prefix level: only their keys and values are read
                with _last_layer_at(model, at[:0]):
                    cache = model(input_ids=ids[:, :split], attention_mask=mask[:, :split], use_cache=True).cache
            kwargs = dict(attention_mask=mask if holes or cached else None, cache=cache, use_cache=cached,
                          position_ids=torch.arange(split, 7).expand(3, -1) if cached else None)
            local = at - torch.tensor([0, split])
            if restricted:
                layer = model.model.layers[-1]
                with _last_layer_at(model, local) as compact:
                    assert compact and "forward" in vars(layer)
                    model(input_ids=ids[:, split:], **kwargs)
                assert "forward" not in vars(layer)  # the class's own forward again
                out = captured[-1][:, 0]
            else:
                model(input_ids=ids[:, split:], **kwargs)
                out = captured[-1][local[:, 0], local[:, 1]]
        (out * weights).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, restricted = states(False), states(True)
    torch.testing.assert_close(restricted[0], full[0], atol=1e-5, rtol=0.0)
    assert restricted[1].keys() == full[1].keys()
    for name, grad in full[1].items():
        torch.testing.assert_close(restricted[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_last_layer_at_leaves_sliding_window_and_flash_attention_layers_whole():
    from gigpo.policy.model import _last_layer_at

    model = tiny_qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=0)
    assert model.model.layers[-1].self_attn.sliding_window == 4
    flash = tiny_qwen2()
    flash.config._attn_implementation = "flash_attention_2"  # takes padding masks, not the 4D mask selected here
    for leave in (model, flash):
        with _last_layer_at(leave, torch.tensor([[0, 1]])) as compact:
            assert not compact and "forward" not in vars(leave.model.layers[-1])
    with _last_layer_at(tiny_qwen2(), torch.tensor([[0, 1]])) as compact:
        assert compact


def test_row_copy_gradient_is_index_selects_from_a_strided_gradient():
    from gigpo.policy.model import _Rows

    rows = torch.tensor([0, 0, 2, 1, 2, 2])
    source = torch.randn(3, 4, 5, 2, requires_grad=True)
    grad = torch.randn(6, 5, 4, 2).transpose(1, 2)  # strided, as the attention's key gradients arrive
    assert not grad.is_contiguous()
    expected, = torch.autograd.grad(source.index_select(0, rows), source, grad)
    copied = _Rows.apply(source, rows)
    assert torch.equal(copied, source.index_select(0, rows))
    assert torch.equal(torch.autograd.grad(copied, source, grad)[0], expected)
