"""GiGPO and GraphGPO vs GRPO cost, and rollout overhead, measured side by side in one run.

    python -m benchmarks.train [--iterations 20] [--repeats 2] [overrides ...]
    python -m benchmarks.train --profile [--iterations 2] [overrides ...]
    python -m benchmarks.train --compare REV [--iterations 5] [--repeats 3] [overrides ...]

1. Iteration time and peak memory, GiGPO and GraphGPO vs GRPO. Each method trains in its own
   process (peak RSS is per process) with ``train.lr=0``: the policy then never changes, so all
   methods see the *same* rollouts and the comparison isolates what the estimator adds (the
   papers' "no extra cost" claims). Runs alternate GiGPO, GraphGPO, GRPO, GiGPO, ... to spread
   machine noise evenly.
2. Rollout overhead: one rollout's wall time against the sum of pure generation time (measured
   inside it) and pure env time (the same actions replayed on fresh envs in a plain loop).

``--profile``: where one iteration's time goes (``benchmarks/profile.py``).
``--compare REV``: iteration time of the code at git revision REV (before) against this working tree
(after), each in its own process with ``train.lr=0``, alternating before, after, before, ... in one
run; prints the medians and their ratio.

Every table ends with the host it came from (``host``): CPU model, its avx2/avx512/amx flags, cores,
torch threads and load average. Speed-ups differ between hosts (vector ISA, cores, what runs beside):
quote a figure with its host line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ["logger=none", "train.lr=0", "train.val_every=100000", "env.val_episodes=1"]
# PPO (algo=ppo) rolls out one trajectory per task by default; 8 here gives it the same episodes as the others.
SAME_EPISODES = {"ppo": ["algo.group_size=8", "critic.lr=0"]}

ISA_FLAGS = ("avx2", "avx512", "amx")
"""Prefixes of the CPU flags that decide the speed of torch's CPU kernels (printed with every figure)."""


def host(threads: int | str) -> str:
    """The host a figure came from: CPU model, its vector-ISA flags, cores, torch threads, load average
    (the CPU as ``gigpo.tracking.host_info`` records it in every run's provenance)."""
    from gigpo.tracking import host_info

    info = host_info()
    model, flags = info["cpu_model"], [f for f in info["cpu_isa_flags"] if f.startswith(ISA_FLAGS)]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"CPU {model} ({os.cpu_count()} cores; {' '.join(flags) or 'no avx2/avx512/amx flags'}), "
            f"torch threads {threads}, load average {load}")


def run_threads(overrides: list[str]) -> str:
    """torch threads of the benchmarked runs: train.threads (0: torch's default on this host)."""
    threads = next((o.split("=", 1)[1] for o in overrides if o.startswith("train.threads=")), None)
    if threads is None:
        from gigpo.config import TrainConfig

        threads = str(TrainConfig.threads)
    if threads == "0":
        import torch

        return f"{torch.get_num_threads()} (torch's default)"
    return threads


def run_method(algo: str, iterations: int, overrides: list[str], out: Path, root: Path = ROOT) -> dict:
    run_dir = out / f"{algo}-{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, str(root / "run.py"), f"algo={algo}", f"train.iterations={iterations}",
                    f"run_dir={run_dir}", *BASE, *SAME_EPISODES.get(algo, []), *overrides], check=True, capture_output=True, cwd=root, env=env)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/rollout_s" in r][1:]  # drop the warm-up iteration
    iteration_s = [r["time/rollout_s"] + r["time/advantage_s"] + r["time/update_s"] for r in rows]
    return {
        "iteration_s": statistics.median(iteration_s),
        "iterations_s": iteration_s,
        "rollout_s": statistics.median(r["time/rollout_s"] for r in rows),
        "update_s": statistics.median(r["time/update_s"] for r in rows),
        "advantage_s": statistics.median(r["time/advantage_s"] for r in rows),
        "peak_mem_mb": rows[-1]["perf/peak_mem_mb"],
        "env_steps": rows[-1]["env_steps"],
    }


def rollout_overhead(overrides: list[str]) -> dict:
    """One rollout through the runner vs pure generation + the same env steps in a plain loop."""
    from hydra import compose, initialize_config_dir

    from gigpo.config import env_options, register_configs
    from gigpo.envs import make
    from gigpo.rollout import make_act, rollout
    from gigpo.train import build_policy, make_runner, seed_everything

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[*BASE, *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        seed_everything(0)
        policy, _, tokenizer = build_policy(cfg, Path(tmp))
        import torch

        torch.set_num_threads(cfg.train.threads)
        runner = make_runner(cfg)
        seeds = list(range(cfg.env.groups))
        act = lambda clock: make_act(policy, tokenizer, cfg.env, cfg.model, cfg.model.temperature, clock)  # noqa: E731
        rollout(runner, act, seeds, cfg.algo.group_size)  # warm-up
        result = rollout(runner, act, seeds, cfg.algo.group_size)
        runner.close()
    # Replay the recorded actions on fresh envs: pure env time, no runner, no policy.
    options = env_options(cfg.env)
    envs = [make(cfg.env.name, **options) for _ in range(cfg.env.groups * cfg.algo.group_size)]
    by_traj: dict[int, list[str]] = {}
    for r in result.records:
        by_traj.setdefault(r.traj_id, []).append(r.action)
    start = time.perf_counter()
    for traj, actions in by_traj.items():
        envs[traj].reset(seed=seeds[traj // cfg.algo.group_size])
        for action in actions:
            envs[traj].step(action)
    env_s = time.perf_counter() - start
    return {"rollout_s": result.total_s, "generate_s": result.generate_s, "env_s": env_s,
            "ratio": result.total_s / (result.generate_s + env_s)}


def compare(revision: str, iterations: int, repeats: int, overrides: list[str]) -> None:
    """Before (git ``revision``) vs after (this tree), alternating in one run; medians and ratios."""
    algo = next((o.split("=", 1)[1] for o in overrides if o.startswith("algo=")), "gigpo")
    overrides = [o for o in overrides if not o.startswith("algo=")]
    results: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(["git", "archive", revision], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        for _ in range(repeats):
            for label, root in (("before", before), ("after", ROOT)):
                results[label].append(run_method(algo, iterations, overrides, Path(tmp), root))
                r = results[label][-1]
                print(f"  {label:6} iteration {r['iteration_s']:.3f} s (rollout {r['rollout_s']:.3f} s, "
                      f"update {r['update_s']:.3f} s), load average {os.getloadavg()[0]:.2f}", flush=True)
    threads = run_threads(overrides)
    summary = {k: {m: statistics.median(r[m] for r in rows) for m in ("iteration_s", "rollout_s", "update_s")}
               for k, rows in results.items()}
    b, a = summary["before"], summary["after"]
    print(f"{'median s':10} {'before':>9} {'after':>9} {'before/after':>13}   ({revision} vs working tree, "
          f"{repeats} x {iterations} iterations each, warm-up dropped)")
    for m in ("iteration_s", "rollout_s", "update_s"):
        print(f"{m:10} {b[m]:9.3f} {a[m]:9.3f} {b[m] / a[m]:12.2f}x")
    # The mean counts what a median leaves out: rare pauses (a garbage collection, a slow env reset).
    mean = {k: statistics.fmean(x for r in rows for x in r["iterations_s"]) for k, rows in results.items()}
    print(f"{'mean':10} {mean['before']:9.3f} {mean['after']:9.3f} {mean['before'] / mean['after']:12.2f}x"
          "  (iteration, every timed iteration)")
    print(host(threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true",
                        help="per-phase breakdown of --iterations iterations (benchmarks/profile.py) instead")
    parser.add_argument("--compare", metavar="REV", help="iteration time of git revision REV vs this tree instead")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every method")
    args = parser.parse_args()
    if args.profile:
        from benchmarks.profile import profile

        profile(args.iterations, args.overrides)
        return
    if args.compare:
        compare(args.compare, args.iterations, args.repeats, args.overrides)
        return
    results: dict[str, list[dict]] = {"gigpo": [], "graphgpo": [], "grpo": [], "ppo": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for algo in results:
                results[algo].append(run_method(algo, args.iterations, args.overrides, Path(tmp)))
    summary = {algo: {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "iterations_s"} for algo, rows in results.items()}
    print(host(run_threads(args.overrides)))
    print(f"{'method':8} {'iteration s':>12} {'advantage s':>12} {'peak MiB':>10} {'env steps':>10}")
    for algo, s in summary.items():
        print(f"{algo:8} {s['iteration_s']:>12.3f} {s['advantage_s']:>12.5f} {s['peak_mem_mb']:>10.1f} {s['env_steps']:>10.0f}")
    r = summary["grpo"]
    for algo, label in (("gigpo", "GiGPO"), ("graphgpo", "GraphGPO")):
        g = summary[algo]
        print(f"{label} / GRPO iteration time: {g['iteration_s'] / r['iteration_s']:.3f}x (target <= 1.02x)")
        print(f"{label} / GRPO peak memory:    {g['peak_mem_mb'] / r['peak_mem_mb']:.3f}x (target <= 1.02x)")
    p = summary["ppo"]  # the critic is a second model with its own optimizer: measured, no target
    print(f"PPO (critic) / GRPO iteration time: {p['iteration_s'] / r['iteration_s']:.3f}x")
    print(f"PPO (critic) / GRPO peak memory:    {p['peak_mem_mb'] / r['peak_mem_mb']:.3f}x")
    o = rollout_overhead(args.overrides)
    print(f"rollout {o['rollout_s']:.3f} s vs generation {o['generate_s']:.3f} s + env {o['env_s']:.3f} s: "
          f"{o['ratio']:.3f}x (target <= 1.15x)")
    print(host(run_threads(args.overrides)))


if __name__ == "__main__":
    main()
