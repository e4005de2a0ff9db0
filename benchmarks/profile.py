"""Where one training iteration's time goes: rollout (generation, constrained-decoding bookkeeping,
tokenisation, env) and update (old/ref scoring, forward+backward, optimizer).

    python -m benchmarks.train --profile [--iterations 2] [overrides ...]

Builds the policy as ``run.py`` does (``train.lr=0``, so every iteration sees the same policy), runs
one warm-up iteration, then profiles ``--iterations`` iterations of collect + advantages + update
under cProfile and prints each phase's cumulative seconds per iteration. cProfile inflates Python-heavy
phases; the plain wall time per iteration (measured without the profiler) is printed first.
"""

from __future__ import annotations

import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from benchmarks.train import BASE, ROOT, host


# (phase, indent, predicate on a pstats key (file, line, function name)): cumulative time of the matches.
PHASES = [
    ("rollout (collect)", 0, lambda f, n: f.endswith("gigpo/train.py") and n == "collect"),
    ("generation (policy sampling)", 1, lambda f, n: f.endswith("gigpo/policy/model.py") and n == "generate"),
    ("tokenisation (prompts, tries)", 2, lambda f, n: "tokenization_utils" in f and n == "__call__"),
    ("constrained bookkeeping (trie)", 2, lambda f, n: f.endswith("gigpo/policy/model.py") and n in ("allowed", "of")),
    ("env step/reset", 1, lambda f, n: f.endswith("gigpo/runner.py") and n == "handle"),
    ("prompt rendering", 1, lambda f, n: f.endswith("gigpo/envs/prompts.py") and n == "render_view"),
    ("advantages", 0, lambda f, n: f.endswith("gigpo/train.py") and n == "compute_step_advantages"),
    ("update", 0, lambda f, n: f.endswith("gigpo/ppo.py") and n == "update"),
    ("old/ref scoring (no grad)", 1, lambda f, n: f.endswith("gigpo/ppo.py") and n == "record_old"),
    ("loss forward", 1, lambda f, n: f.endswith("gigpo/ppo.py") and n == "micro_loss"),
    ("pad_batch", 2, lambda f, n: f.endswith("gigpo/policy/model.py") and n == "pad_batch"),
    ("backward", 1, lambda f, n: n == "backward" and "torch" in f and "_tensor" in f),
    ("optimizer step", 1, lambda f, n: "torch/optim" in f and n == "step"),
]


def profile(iterations: int, overrides: list[str]) -> None:
    import torch
    from hydra import compose, initialize_config_dir

    from gigpo.config import register_configs
    from gigpo.ppo import update
    from gigpo.train import build_policy, collect, compute_step_advantages, make_runner, seed_everything

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[*BASE, *overrides])
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    with tempfile.TemporaryDirectory() as tmp:
        seed_everything(cfg.train.seed)
        policy, reference, tokenizer = build_policy(cfg, Path(tmp))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr)
    runner = make_runner(cfg)

    def iteration(i: int) -> int:
        policy.eval()
        batch, _, _ = collect(cfg, runner, policy, tokenizer, i)
        advantages, _ = compute_step_advantages(cfg, batch)
        update(cfg, policy, reference, optimizer, batch, advantages, i)
        return len(batch.records)

    try:
        iteration(0)  # warm-up: tokenizer caches, tries, allocator
        start = time.perf_counter()
        steps = sum(iteration(1 + i) for i in range(iterations))
        wall = (time.perf_counter() - start) / iterations
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(iterations):
            iteration(1 + i)
        profiler.disable()
    finally:
        runner.close()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    total = sum(v[2] for v in stats.values()) / iterations
    print(host(torch.get_num_threads()))
    print(f"sampler={cfg.model.sampler} env={cfg.env.name}: {wall:.3f} s per iteration without the profiler, "
          f"{steps / iterations:.0f} env steps per iteration; under cProfile {total:.3f} s:")
    for label, indent, match in PHASES:
        seconds = _cumulative(stats, match) / iterations
        print(f"  {'  ' * indent}{label:<{34 - 2 * indent}} {seconds:8.3f} s  {100 * seconds / total:5.1f}%")


def _cumulative(stats: dict, match) -> float:
    """Cumulative time of the matching functions, not counting a match called (indirectly) by another."""
    keys = {k for k in stats if match(k[0], k[2])}
    return sum(stats[k][3] for k in keys if not any(c in keys for c in stats[k][4]))
