"""GPU smoke check: one training iteration of a random-init model of Qwen2.5-1.5B's shape, GiGPO vs GRPO.

Prints, per estimator, the iteration time split into rollout (HF generate + env), log-probs (one
no-grad pass over the batch, as the update's first phase), update (the rest of ``gigpo.train.update``:
forward/backward/AdamW) and the peak GPU memory. No weights are downloaded: the model is
Qwen2Config(hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151936) with random
init, the tokenizer the project's BPE trained on Sokoban text.

    python scripts/gpu_smoke.py                      # needs CUDA
    python scripts/gpu_smoke.py --tiny --device cpu  # a tiny shape, for the tests
"""

from __future__ import annotations

import argparse
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


def iteration(algo: str, args, shape: dict, run_dir: Path) -> dict[str, float]:
    from gigpo.config import register_configs
    from gigpo.policy.model import pad_batch, token_logprobs
    from gigpo.policy.tokenizer import load_or_build_tokenizer
    from gigpo.rollout import env_corpus
    from gigpo.train import collect, compute_step_advantages, make_runner, update

    register_configs()
    overrides = [f"algo={algo}", "env=sokoban", f"env.groups={args.groups}", f"algo.group_size={args.group_size}",
                 f"env.max_steps={args.max_steps}", "model.constrained=false",
                 f"model.max_response_tokens={args.response_tokens}", f"model.dtype={args.dtype}",
                 f"train.device={args.device}", "train.lr=1e-6", f"train.micro_batch_size={args.micro_batch_size}",
                 "train.mini_batch_size=1024", "algo.kl_coef=0"]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=overrides)
    tokenizer = load_or_build_tokenizer(run_dir / "tokenizer", lambda: env_corpus(cfg.env), 512)
    config = Qwen2Config(**shape, max_position_embeddings=4096, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    with torch.device(args.device):
        policy = Qwen2ForCausalLM(config).to(dtype)
    if args.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    runner = make_runner(cfg)
    try:
        t0 = time.perf_counter()
        policy.eval()
        batch, _ = collect(cfg, runner, policy, tokenizer, iteration=0)
        rollout_s = time.perf_counter() - t0
    finally:
        runner.close()
    advantages, _ = compute_step_advantages(cfg, batch)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    with torch.no_grad():
        samples = batch.samples
        for start in range(0, len(samples), cfg.train.micro_batch_size):
            tensors = pad_batch(samples[start : start + cfg.train.micro_batch_size], tokenizer.pad_token_id, args.device)
            token_logprobs(policy, tensors)
    sync()
    logprob_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    update(cfg, policy, None, optimizer, batch, advantages, iteration=0)
    sync()
    update_s = time.perf_counter() - t0 - logprob_s  # update() recomputes the old log-probs first
    return {"samples": len(batch.samples), "tokens": batch.tokens, "rollout_s": rollout_s, "logprob_s": logprob_s,
            "update_s": update_s, "peak_mem_mb": peak_mb(args.device)}


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

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in ("gigpo", "grpo"):
            rows[algo] = iteration(algo, args, shape, Path(tmp))
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    name = "tiny" if small else "Qwen2.5-1.5B shape (random init)"
    print(f"{name}, {args.device}, {args.dtype}, {args.groups} groups x {args.group_size}, "
          f"{args.max_steps} env steps, {args.response_tokens} response tokens")
    columns = ["samples", "tokens", "rollout_s", "logprob_s", "update_s", "peak_mem_mb"]
    print(f"{'algo':8s}" + "".join(f"{c:>13s}" for c in columns))
    for algo, row in rows.items():
        print(f"{algo:8s}" + "".join(f"{row[c]:13.2f}" if isinstance(row[c], float) else f"{row[c]:13d}"
                                     for c in columns))


if __name__ == "__main__":
    main()
