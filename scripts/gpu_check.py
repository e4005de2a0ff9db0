"""GPU readiness check: everything the paper path needs a GPU for, in one command, one JSON report.

    python scripts/gpu_check.py [--out gpu_check.json]   # needs CUDA; sized to finish within 8 minutes on one H100
    python scripts/gpu_check.py --tiny --device cpu       # the same code at a tiny shape (what the tests run)

Sections, each timed; a section that raises is recorded with its error, the others still run, and
the script exits 1 (the report is written either way):

1. ``paper_path``: training iterations at Qwen2.5-1.5B's shape (random init from a ``Qwen2Config``, no
   download; the tokenizer is the project's BPE trained on Sokoban text) with ``algo.kl_coef=0.01``:
   one warm-up iteration (discarded), then GiGPO, GraphGPO and GRPO alternated ``--repeats`` times on
   one shared model (``scripts/gpu_smoke.py``'s iteration: lr 0, round r rolls out the same seeds for
   every method); per-method medians of rollout, log-prob and update seconds, peak memory, KL and the
   rollout/trainer gap (``rollout/logprob_diff_*``: the sampler's log-probs vs the recomputed old ones).
2. ``scoring_memory``: peak memory of one scoring micro-batch at 2,048 prompt tokens (plus
   ``--score-response`` response tokens) above the model: the no-grad old-log-prob pass, and log-probs
   and entropy with a graph followed by backward (a training micro-batch).
3. ``sampler_throughput``: native vs hf sampler tokens/s at batch 128 (prompt 512, 128 new tokens,
   temperature 1), beside the HBM decode bound B * bandwidth / (weight bytes + mean KV-cache bytes), the
   rate a memory-bound decoder cannot exceed (bandwidth looked up from the device name; none on a CPU).
4. ``deepspeed_lora``: one DeepSpeed ZeRO-2 update (world size 1, in this process) of a LoRA (rank 8)
   policy of the same shape: seconds, peak memory, and whether only the adapter weights moved.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_smoke  # noqa: E402  (scripts/ is not a package)

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("gigpo", "graphgpo", "grpo")
HBM_BYTES_PER_S = [  # (substring of torch.cuda.get_device_name(), bytes/s), first match wins: vendor datasheets
    ("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
    ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12),
]
BUDGET_S = 480.0


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> float:
    """Resets the CUDA peak and returns the memory now allocated (MB); on the CPU the process RSS."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    from gigpo.tracking import peak_memory_mb

    return peak_memory_mb()


def paper_path(args, model) -> dict:
    runs = {m: [] for m in METHODS}
    gpu_smoke.iteration("gigpo", 0, args, model)  # warm-up, discarded
    for round_ in range(1, args.repeats + 1):
        for method in METHODS:
            runs[method].append(gpu_smoke.iteration(method, round_, args, model))
    columns = list(runs["gigpo"][0])
    return {"settings": {"groups": args.groups, "group_size": args.group_size, "env_steps": args.max_steps,
                         "response_tokens": args.response_tokens, "kl_coef": args.kl_coef, "repeats": args.repeats,
                         "env": "sokoban", "statistic": "median over the alternated iterations after 1 warm-up"},
            "per_method": {m: {c: statistics.median(r[c] for r in rows) for c in columns}
                           for m, rows in runs.items()}}


def random_samples(n: int, prompt: int, response: int, vocab: int, seed: int = 0):
    from gigpo.policy.model import Sample

    g = torch.Generator().manual_seed(seed)
    return [Sample(torch.randint(2, vocab, (prompt,), generator=g).tolist(),
                   torch.randint(2, vocab, (response,), generator=g).tolist(), "") for _ in range(n)]


def scoring_memory(args, model) -> dict:
    from gigpo.policy.model import pad_batch, token_logprobs

    policy, _, _, tokenizer = model
    vocab = policy.config.vocab_size
    samples = random_samples(args.score_batch, args.score_prompt, args.score_response, vocab)
    batch = pad_batch(samples, tokenizer.pad_token_id, args.device)
    out = {"settings": {"micro_batch": args.score_batch, "prompt_tokens": args.score_prompt,
                        "response_tokens": args.score_response, "gradient_checkpointing": args.gradient_checkpointing,
                        "measure": "peak above the memory allocated before the pass (CUDA); process peak RSS (CPU)"}}
    policy.eval()
    base = reset_peak(args.device)
    with torch.no_grad():
        token_logprobs(policy, batch)
    sync(args.device)
    out["old_logprobs_peak_mb"] = gpu_smoke.peak_mb(args.device) - (base if args.device.startswith("cuda") else 0.0)
    policy.train()
    base = reset_peak(args.device)
    logp, entropy = token_logprobs(policy, batch, with_entropy=True)
    mask = batch["response_mask"]
    ((logp * mask).sum() / mask.sum() + 0.001 * (entropy * mask).sum() / mask.sum()).backward()
    sync(args.device)
    out["train_peak_mb"] = gpu_smoke.peak_mb(args.device) - (base if args.device.startswith("cuda") else 0.0)
    policy.zero_grad(set_to_none=True)
    policy.eval()
    return out


def hbm_bandwidth(device: str) -> tuple[float | None, str]:
    if not device.startswith("cuda"):
        return None, "no HBM bound on a CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in HBM_BYTES_PER_S:
        if key in name:
            return value, f"{name}: {value / 1e12:.2f} TB/s (datasheet, matched {key!r})"
    return None, f"{name}: bandwidth unknown to this script"


def sampler_throughput(args, model) -> dict:
    from gigpo.config import ModelConfig
    from gigpo.policy.model import generate

    policy, _, _, tokenizer = model
    policy.eval()
    words = "you see a wall box target player up down left right on the floor near".split()
    rng = random.Random(0)  # distinct prompts: the native sampler prefills each distinct prompt once
    prompts = [" ".join(rng.choice(words) for _ in range(args.sample_prompt * 2)) for _ in range(args.sample_batch)]
    out = {"settings": {"batch": args.sample_batch, "prompt_tokens": args.sample_prompt,
                        "new_tokens": args.sample_new, "temperature": 1.0, "constrained": False}}
    for sampler in ("native", "hf"):
        cfg = ModelConfig(name="hf", max_prompt_tokens=args.sample_prompt, max_response_tokens=args.sample_new,
                          sampler=sampler, constrained=False, dtype=args.dtype)
        generate(policy, tokenizer, prompts[:4], dataclasses.replace(cfg, max_response_tokens=4), 1.0)  # warm-up
        sync(args.device)
        t0 = time.perf_counter()
        samples = generate(policy, tokenizer, prompts, cfg, 1.0)
        sync(args.device)
        seconds = time.perf_counter() - t0
        tokens = sum(len(s.response_ids) for s in samples)
        out[sampler] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
                        "prompt_tokens_mean": statistics.mean(len(s.prompt_ids) for s in samples)}
    bandwidth, source = hbm_bandwidth(args.device)
    c = policy.config
    weight_bytes = sum(p.numel() * p.element_size() for p in policy.parameters())
    head_dim = c.hidden_size // c.num_attention_heads
    context = out["native"]["prompt_tokens_mean"] + args.sample_new / 2  # mean KV length over the decode
    kv_bytes = (2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * context * args.sample_batch
                * next(policy.parameters()).element_size())
    out["hbm_bound"] = {"bandwidth_source": source, "weight_bytes": weight_bytes, "kv_cache_bytes_mean": kv_bytes,
                        "tokens_per_s": None if bandwidth is None else args.sample_batch * bandwidth
                        / (weight_bytes + kv_bytes)}
    for sampler in ("native", "hf"):
        bound = out["hbm_bound"]["tokens_per_s"]
        out[sampler]["share_of_bound"] = None if bound is None else out[sampler]["tokens_per_s"] / bound
    return out


def deepspeed_lora(args, shape: dict) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from gigpo.scale import deepspeed as ds

    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    cfg = gpu_smoke.compose_cfg("gigpo", args)
    cfg.train.strategy, cfg.train.zero_stage, cfg.train.lr = "deepspeed", 2, 1e-4
    cfg.model.lora_rank, cfg.model.lora_alpha = 8, 16
    cfg.train.mini_batch_size = cfg.train.micro_batch_size = args.lora_batch
    config = Qwen2Config(**shape, max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=0,
                         eos_token_id=1)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    with torch.device(args.device):
        policy = Qwen2ForCausalLM(config).to(dtype)
    policy = get_peft_model(policy, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    base = reset_peak(args.device)
    t0 = time.perf_counter()
    engine = ds.wrap(cfg, policy)
    samples = random_samples(args.lora_batch, args.lora_prompt, args.lora_response, config.vocab_size, seed=1)
    advantages = torch.linspace(-1.0, 1.0, len(samples)).numpy()
    metrics = ds.update(cfg, engine, None, SimpleNamespace(samples=samples), advantages, iteration=0)
    sync(args.device)
    seconds = time.perf_counter() - t0
    moved = {n for n, p in policy.named_parameters() if not torch.equal(before[n], p.detach())}
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    out = {"settings": {"zero_stage": 2, "world_size": ds.world_size(), "lora_rank": 8, "samples": len(samples),
                        "prompt_tokens": args.lora_prompt, "response_tokens": args.lora_response},
           "seconds_with_init": seconds, "peak_mb": gpu_smoke.peak_mb(args.device)
           - (base if args.device.startswith("cuda") else 0.0),
           "grad_norm": metrics["loss/grad_norm"], "pg_loss": metrics["loss/pg_loss"],
           "adapters_moved": bool(moved) and moved <= trainable, "base_weights_frozen": not (moved - trainable)}
    ds.shutdown()
    if not (out["adapters_moved"] and out["base_weights_frozen"]):
        raise RuntimeError(f"LoRA update moved {sorted(moved - trainable)[:3]} (frozen) or no adapter: {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape and sizes (the tests)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON report")
    parser.add_argument("--repeats", type=int, default=2, help="alternated iterations per method after the warm-up")
    parser.add_argument("--kl-coef", type=float, default=0.01)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: CUDA is not available on this machine; run on a GPU, or use --tiny --device cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    tiny = args.tiny
    # paper path (gpu_smoke's iteration reads these), scoring, sampling, LoRA update sizes
    args.groups, args.group_size, args.max_steps = (2, 2, 2) if tiny else (8, 8, 3)
    args.response_tokens, args.micro_batch_size = (8, 16) if tiny else (64, 16)
    args.score_batch, args.score_prompt, args.score_response = (2, 64, 8) if tiny else (4, 2048, 256)
    args.sample_batch, args.sample_prompt, args.sample_new = (8, 16, 8) if tiny else (128, 512, 128)
    args.lora_batch, args.lora_prompt, args.lora_response = (4, 16, 4) if tiny else (16, 512, 64)
    shape = gpu_smoke.TINY if tiny else gpu_smoke.QWEN_1_5B
    if tiny:
        torch.set_num_threads(1)

    from gigpo.config import register_configs

    register_configs()
    report = {"device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else
              f"cpu ({platform.processor() or platform.machine()})", "torch": torch.__version__, "dtype": args.dtype,
              "shape": "tiny" if tiny else "Qwen2.5-1.5B (random init)", "model": shape, "budget_s": BUDGET_S,
              "sections": {}}
    start = time.perf_counter()

    def run(name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            result = {"ok": True, **fn()}
        except Exception as err:  # recorded, named; the script fails at the end
            result = {"ok": False, "error": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc()[-3000:]}
        result["section_s"] = time.perf_counter() - t0
        report["sections"][name] = result
        print(f"gpu_check: {name}: {'ok' if result['ok'] else result['error']} ({result['section_s']:.1f} s)",
              flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        model = gpu_smoke.build(args, shape, Path(tmp))
        run("paper_path", lambda: paper_path(args, model))
        run("scoring_memory", lambda: scoring_memory(args, model))
        run("sampler_throughput", lambda: sampler_throughput(args, model))
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        run("deepspeed_lora", lambda: deepspeed_lora(args, shape))
    report["total_s"] = time.perf_counter() - start
    report["within_budget"] = report["total_s"] <= BUDGET_S
    report["ok"] = all(s["ok"] for s in report["sections"].values())
    Path(args.out).write_text(json.dumps(report, indent=2, sort_keys=True, default=float))
    verdict = "all sections ok" if report["ok"] else "FAILED"
    print(f"gpu_check: {verdict} in {report['total_s']:.0f} s; wrote {args.out}")
    if not report["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
