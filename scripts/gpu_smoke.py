"""GPU smoke check: training iterations of a random-init model of Qwen2.5-1.5B's shape, GiGPO vs GRPO.

Fair by construction: one warm-up iteration (discarded: CUDA context, allocator, kernels), then the
two estimators alternate ``--repeats`` times (gigpo, grpo, gigpo, grpo, ...) on one shared model,
round r rolling out the same seeds for both; the table gives per-method medians. The settings are
the paper's: temperature 1.0, lr 1e-6, low-variance KL to a frozen reference with
``algo.kl_coef=0.01`` (so the reference pass and the KL term are exercised on the device).

Columns: rollout (HF generate + env), log-probs (one no-grad scoring pass over the batch, shown
alone), update (all of ``gigpo.ppo.update``: old and reference log-probs, forward/backward/AdamW)
and the peak device memory of the iteration. No weights are downloaded: the model is
Qwen2Config(hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151936) with
random init, the tokenizer the project's BPE trained on Sokoban text.

    python scripts/gpu_smoke.py                      # needs CUDA
    python scripts/gpu_smoke.py --tiny --device cpu  # a tiny shape, for the tests
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[1]
QWEN_1_5B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=600)


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    from gigpo.tracking import peak_memory_mb

    return peak_memory_mb()


def compose_cfg(algo: str, args):
    
    overrides = [f"algo={algo}", "env=sokoban", f"env.groups={args.groups}", f"algo.group_size={args.group_size}",
                 f"env.max_steps={args.max_steps}", "model.constrained=false", "model.temperature=1.0",
                 f"model.max_response_tokens={args.response_tokens}", f"model.dtype={args.dtype}",
                 f"train.device={args.device}", "train.lr=1e-6", f"train.micro_batch_size={args.micro_batch_size}",
                 "train.mini_batch_size=1024", f"algo.kl_coef={args.kl_coef}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("config", overrides=overrides)


def build(args, shape: dict, run_dir: Path):
    """Policy, frozen reference (None without KL) on the device, AdamW, tokenizer: shared by all iterations."""
    import copy

    from gigpo.policy.tokenizer import load_or_build_tokenizer
    from gigpo.rollout import env_corpus

    cfg = compose_cfg("gigpo", args)
    tokenizer = load_or_build_tokenizer(run_dir / "tokenizer", lambda: env_corpus(cfg.env), 512)
    config = Qwen2Config(**shape, max_position_embeddings=4096, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    with torch.device(args.device):
        policy = Qwen2ForCausalLM(config).to(dtype)
    if args.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    reference = copy.deepcopy(policy).eval().requires_grad_(False) if args.kl_coef > 0 else None
    # lr 0: every step does the full work but the policy never changes, so GiGPO and GRPO see the same
    # policy (and, reseeded per round, the same rollouts): the timings compare like with like.
    optimizer = torch.optim.AdamW(policy.parameters(), lr=0.0)
    return policy, reference, optimizer, tokenizer


def iteration(algo: str, round_: int, args, model) -> dict[str, float]:
    from gigpo.policy.model import pad_batch, token_logprobs
    from gigpo.ppo import update
    from gigpo.train import collect, compute_step_advantages, make_runner, seed_everything

    policy, reference, optimizer, tokenizer = model
    cfg = compose_cfg(algo, args)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    runner = make_runner(cfg)
    try:
        t0 = time.perf_counter()
        policy.eval()
        seed_everything(round_)  # both methods of a round draw the same samples
        batch, _, _ = collect(cfg, runner, policy, tokenizer, iteration=round_)  # the same seeds for both methods
        sync()
        rollout_s = time.perf_counter() - t0
    finally:
        runner.close()
    advantages, _ = compute_step_advantages(cfg, batch)

    t0 = time.perf_counter()
    with torch.no_grad():
        samples = batch.samples
        for start in range(0, len(samples), cfg.train.micro_batch_size):
            tensors = pad_batch(samples[start : start + cfg.train.micro_batch_size], tokenizer.pad_token_id, args.device)
            token_logprobs(policy, tensors)
    sync()
    logprob_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses = update(cfg, policy, reference, optimizer, batch, advantages, iteration=round_)
    sync()
    update_s = time.perf_counter() - t0
    return {"samples": len(batch.samples), "tokens": batch.tokens, "rollout_s": rollout_s, "logprob_s": logprob_s,
            "update_s": update_s, "kl": losses.get("loss/kl", float("nan")), "peak_mem_mb": peak_mb(args.device),
            "logprob_diff_mean": losses["rollout/logprob_diff_mean"], "logprob_diff_max": losses["rollout/logprob_diff_max"],
            "masked_tokens": losses["loss/masked_tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape instead of Qwen2.5-1.5B's")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--groups", type=int, default=None, help="default: 8 (2 with --tiny)")
    parser.add_argument("--group-size", type=int, default=None, help="default: 8 (2 with --tiny)")
    parser.add_argument("--max-steps", type=int, default=None, help="default: 3 (2 with --tiny)")
    parser.add_argument("--response-tokens", type=int, default=None, help="default: 64 (8 with --tiny)")
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="alternated iterations per method after the warm-up")
    parser.add_argument("--kl-coef", type=float, default=0.01, help="the paper's low-variance KL weight; 0 drops the reference")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_smoke: CUDA is not available on this machine; run on a GPU, or use --tiny --device cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    small = args.tiny
    args.groups = args.groups or (2 if small else 8)
    args.group_size = args.group_size or (2 if small else 8)
    args.max_steps = args.max_steps or (2 if small else 3)
    args.response_tokens = args.response_tokens or (8 if small else 64)
    shape = TINY if small else QWEN_1_5B
    torch.set_num_threads(1 if small else max(torch.get_num_threads(), 1))

    from gigpo.config import register_configs

    register_configs()
    runs: dict[str, list[dict]] = {"gigpo": [], "grpo": []}
    with tempfile.TemporaryDirectory() as tmp:
        model = build(args, shape, Path(tmp))
        iteration("gigpo", 0, args, model)  # warm-up, discarded
        for round_ in range(1, args.repeats + 1):
            for algo in runs:
                runs[algo].append(iteration(algo, round_, args, model))
    name = "tiny" if small else "Qwen2.5-1.5B shape (random init)"
    print(f"{name}, {args.device}, {args.dtype}, {args.groups} groups x {args.group_size}, "
          f"{args.max_steps} env steps, {args.response_tokens} response tokens, kl_coef {args.kl_coef}; "
          f"medians of {args.repeats} alternated iterations after 1 warm-up")
    columns = ["samples", "tokens", "rollout_s", "logprob_s", "update_s", "kl", "peak_mem_mb"]
    print(f"{'algo':8s}" + "".join(f"{c:>13s}" for c in columns))
    for algo, rows in runs.items():
        medians = {c: statistics.median(row[c] for row in rows) for c in columns}
        print(f"{algo:8s}" + "".join(f"{medians[c]:13.4g}" if c == "kl" else f"{medians[c]:13.2f}" for c in columns))


if __name__ == "__main__":
    main()
