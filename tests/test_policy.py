"""The policy: the sampler draws from the distribution the scorer scores, EOS survives pad == eos,
response-only scoring equals full-vocabulary scoring, and the KL reference lives with the policy."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from benchmarks.memory import full_vocab_logprobs
from gigpo.config import ModelConfig, register_configs
from gigpo.policy.model import build_tiny, generate, load_hf, pad_batch, token_logprobs

ROOT = Path(__file__).resolve().parents[1]
register_configs()
EOS = "<eos>"


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("config", overrides=overrides)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny local HF checkpoint: ~1,000-token BPE whose pad is its EOS, and
    a generation_config.json with sampling defaults that must not leak into sampling."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7))) for _ in range(3000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([" ".join(words[i : i + 50]) for i in range(0, 3000, 50)] * 3,
                            trainers.BpeTrainer(vocab_size=1000, special_tokens=[EOS], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)
    tokenizer.add_tokens(["<action>", "</action>"])
    assert tokenizer.pad_token is None and len(tokenizer) > 900
    torch.manual_seed(0)
    model = build_tiny(ModelConfig(max_response_tokens=8), tokenizer)
    model.generation_config = GenerationConfig(do_sample=True, top_k=5, top_p=0.5, repetition_penalty=3.0,
                                               min_p=0.2, eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("checkpoint")
    model.save_pretrained(folder)
    # As load_hf does for a checkpoint without one (transformers would give a Qwen2 checkpoint's
    # tokenizer a pad token of its own when none is saved).
    tokenizer.pad_token = EOS
    tokenizer.save_pretrained(folder)
    assert json.loads((folder / "generation_config.json").read_text())["top_k"] == 5
    return folder


def load(folder: Path, **overrides):
    cfg = ModelConfig(name="hf", path=str(folder), **{"max_response_tokens": 6, **overrides})
    model, tokenizer = load_hf(cfg)
    return cfg, model.eval(), tokenizer


# ---- sampler == scorer ----

@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (20, 0.9)])
def test_sampler_logprobs_equal_scorer_logprobs(checkpoint, top_k, top_p):
    cfg, model, tokenizer = load(checkpoint, top_k=top_k, top_p=top_p)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    torch.manual_seed(1)
    samples = generate(model, tokenizer, ["abc de", "fgh ij kl mn", "op"] * 4, cfg, 1.0, logprobs=True)
    batch = pad_batch(samples, tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        scored, _ = token_logprobs(model, batch, 1.0, top_k=cfg.top_k, top_p=cfg.top_p)
    for i, s in enumerate(samples):
        start = len(s.prompt_ids) - 1
        assert len(s.logprobs) == len(s.response_ids)
        torch.testing.assert_close(scored[i, start : start + len(s.response_ids)], torch.tensor(s.logprobs),
                                   atol=1e-4, rtol=0.0)
        assert all(math.isfinite(v) for v in s.logprobs)


def test_unconstrained_sampling_is_not_truncated_to_top_50(checkpoint):
    # ~1,000 near-uniform tokens: 512 draws cover hundreds; transformers' default top-k 50 (or the
    # checkpoint's top_k 5 / min_p) would cap them at 50 (or 5).
    cfg, model, tokenizer = load(checkpoint, max_response_tokens=1)
    torch.manual_seed(0)
    samples = generate(model, tokenizer, ["abc de fg"] * 512, cfg, 1.0)
    assert len({s.response_ids[0] for s in samples}) > 200


def test_load_hf_drops_the_checkpoints_sampling_defaults(checkpoint):
    _, model, _ = load(checkpoint)
    defaults = model.generation_config
    assert defaults.top_k is None or defaults.top_k in (0, 50)
    assert defaults.repetition_penalty in (None, 1.0) and defaults.min_p is None and defaults.top_p in (None, 1.0)


# ---- EOS by position ----

def test_eos_is_kept_when_pad_equals_eos(checkpoint):
    # Constrained decoding forces <action>a</action><eos>: the response must end with that EOS.
    cfg, model, tokenizer = load(checkpoint)
    eos = tokenizer.eos_token_id
    samples = generate(model, tokenizer, ["abc", "de fg"], cfg, 1.0, admissible=[["up"], ["left"]])
    for s, action in zip(samples, ["up", "left"]):
        expected = tokenizer.encode(f"<action>{action}</action>", add_special_tokens=False) + [eos]
        assert s.response_ids == expected
        assert s.text == f"<action>{action}</action>"
    batch = pad_batch(samples, tokenizer.pad_token_id, "cpu", len(tokenizer))
    assert batch["response_mask"].sum().item() == sum(len(s.response_ids) for s in samples)  # EOS is scored


# ---- response-only scoring ----

def tiny_model_and_samples(constrained: bool, vocab: int = 97, peft: bool = False):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from gigpo.policy.model import Sample

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)
    model = Qwen2ForCausalLM(config).eval()
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_()
    g = torch.Generator().manual_seed(1)
    samples = []
    for _ in range(5):
        p, r = int(torch.randint(3, 12, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
        ids = torch.randint(2, vocab, (p + r,), generator=g).tolist()
        allowed = None
        if constrained:  # the taken token plus a few others, one forced position (a single choice)
            allowed = [sorted({t, *torch.randint(2, vocab, (3,), generator=g).tolist()}) for t in ids[p:]]
            allowed[0] = [ids[p]]
        samples.append(Sample(ids[:p], ids[p:], "", allowed))
    return model, samples


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("peft", [False, True])
def test_response_only_scoring_equals_full_vocabulary_scoring(constrained, peft):
    model, samples = tiny_model_and_samples(constrained, peft=peft)
    batch = pad_batch(samples, 0, "cpu", 97)
    n = sum(len(s.response_ids) for s in samples)
    if constrained:
        assert batch["allowed"].shape == (n, 97)  # response positions only, not [B, L-1, V]
    mask = batch["response_mask"]
    for temperature in (1.0, 0.7):
        with torch.no_grad():
            new_lp, new_h = token_logprobs(model, batch, temperature, with_entropy=True)
            old_lp, old_h = full_vocab_logprobs(model, batch, temperature, with_entropy=True)
        torch.testing.assert_close(new_lp * mask, old_lp * mask, atol=1e-5, rtol=0.0)
        torch.testing.assert_close(new_h * mask, old_h * mask, atol=1e-5, rtol=0.0)
    assert (new_lp[mask == 0] == 0).all()


def test_response_only_scoring_gradients_match_and_chunks_agree(monkeypatch):
    import gigpo.policy.model as policy_model

    model, samples = tiny_model_and_samples(constrained=False)
    batch = pad_batch(samples, 0, "cpu")
    mask = batch["response_mask"]

    def grads(fn):
        model.zero_grad()
        logp, entropy = fn(model, batch, 1.0, True)
        ((logp * mask).sum() + 0.1 * (entropy * mask).sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    full = grads(full_vocab_logprobs)
    monkeypatch.setattr(policy_model, "LOGIT_CHUNK", 3)  # several LM-head chunks
    chunked = grads(token_logprobs)
    for name, grad in full.items():
        torch.testing.assert_close(chunked[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_entropy_without_graph_when_not_trained():
    model, samples = tiny_model_and_samples(constrained=False)
    batch = pad_batch(samples, 0, "cpu")
    logp, entropy = token_logprobs(model, batch, 1.0, with_entropy=True, entropy_grad=False)
    assert logp.requires_grad and not entropy.requires_grad


# ---- the KL reference ----

@pytest.mark.parametrize("strategy", ["single", "deepspeed"])
def test_reference_lives_on_the_policys_device(tmp_path, strategy):
    from gigpo.train import build_policy

    # meta stands in for a GPU here: the old code copied the reference before moving the policy (cpu).
    cfg = compose_cfg(["env=sokoban_easy", "algo.kl_coef=0.01", "train.device=meta", f"train.strategy={strategy}"])
    policy, reference, _ = build_policy(cfg, tmp_path)
    devices = {p.device for p in policy.parameters()} | {p.device for p in reference.parameters()}
    assert devices == {torch.device("meta")}


def test_tiny_run_with_kl_logs_a_finite_nonzero_kl(tmp_path):
    env = {**os.environ, "WANDB_SILENT": "true"}
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "env.groups=2", "algo.group_size=4",
                          "env.val_episodes=2", "train.val_every=5", "train.mini_batch_size=16",
                          "train.iterations=2", "algo.kl_coef=0.05", "logger=none", f"run_dir={tmp_path}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kl = [r["loss/kl"] for r in rows if "loss/kl" in r]
    assert len(kl) == 2 and all(math.isfinite(v) for v in kl) and max(kl) > 0
    assert all("loss/pg_loss" in r and "loss/clip_frac_dual" in r for r in rows if "loss/kl" in r)


def test_action_trie_is_shared_and_matches_a_fresh_one():
    from gigpo.policy.model import ActionTrie
    from gigpo.policy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(["<action>go north</action>", "<action>go south</action>", "look"], 300)
    actions = ("go north", "go south", "look")
    cached = ActionTrie.of(tokenizer, actions)
    assert ActionTrie.of(tokenizer, tuple(actions)) is cached
    fresh = ActionTrie(tokenizer, actions)
    assert cached.next == fresh.next and cached.depth == fresh.depth
    assert cached.allowed((), 0) == sorted(cached.allowed((), 0))
