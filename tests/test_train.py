"""End to end: tiny real runs through run.py (Hydra, W&B offline, checkpoints, resume, eval, multirun)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
TINY = ["env.groups=2", "algo.group_size=4", "env.val_episodes=8", "train.val_every=2", "train.mini_batch_size=32"]
REQUIRED_KEYS = [
    "iter", "env_steps", "train/success", "train/success/sokoban", "train/episode_return", "train/episode_length",
    "train/invalid_rate", "val/success", "val/success/sokoban", "adv/episode_std", "adv/step_std",
    "step_groups/count", "step_groups/mean_size", "step_groups/singleton_share", "step_groups/size_hist/1",
    "step_groups/size_hist/2-5", "step_groups/size_hist/6-9", "step_groups/size_hist/10+", "time/rollout_s",
    "time/advantage_s", "time/update_s", "perf/tokens_per_s", "perf/peak_mem_mb", "loss/policy_loss",
    "env/failed_episodes", "env/worker_restarts", "val/failed_episodes", "train/failed_episodes",
]


def run(args: list[str], cwd: Path = ROOT, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, **kwargs)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    """Metrics that must repeat exactly on CPU: everything but timings and memory."""
    return [{k: v for k, v in row.items() if not k.startswith(("time/", "perf/"))} for row in rows]


def test_tiny_run_logs_every_metric_to_jsonl_and_wandb(tmp_path):
    out = run([*TINY, "train.iterations=2", "logger=wandb", "logger.mode=offline", f"run_dir={tmp_path}"])
    assert out.returncode == 0, out.stderr[-3000:]
    rows = metrics(tmp_path)
    assert [r["iter"] for r in rows] == [0, 1, 2]  # two iterations, then the final validation line
    for key in REQUIRED_KEYS:
        assert key in rows[0], key
    assert 0.0 <= rows[0]["train/success"] <= 1.0 and rows[1]["env_steps"] > rows[0]["env_steps"]
    assert "val/success" in rows[-1]
    # A real offline W&B run holds the same config and history.
    offline = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert offline, list((tmp_path / "wandb").iterdir())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final/val_success"] == rows[-1]["val/success"]


def test_killed_run_resumes_and_matches_uninterrupted_run(tmp_path):
    args = [*TINY, "train.iterations=6", "train.checkpoint_every=2", "logger=none"]
    reference = tmp_path / "reference"
    assert run([*args, f"run_dir={reference}"]).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"run_dir={killed}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), "the run ended before its first checkpoint"
    assert len(metrics(killed)) < len(metrics(reference))

    resumed = run([*args, f"run_dir={killed}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert comparable(metrics(killed)) == comparable(metrics(reference))


def test_eval_mode_reports_success_per_task_type(tmp_path):
    assert run([*TINY, "train.iterations=1", "logger=none", f"run_dir={tmp_path / 'run'}"]).returncode == 0
    out = run([*TINY, "mode=eval", f"checkpoint={tmp_path / 'run'}", "logger=none", f"run_dir={tmp_path / 'eval'}"])
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "eval.json").read_text())  # beside the checkpoint it evaluated
    assert set(result) >= {"val/success", "val/success/sokoban", "val/episodes", "checkpoint", "iteration"}
    assert "val/success/sokoban" in out.stdout


def test_same_seed_same_numbers(tmp_path):
    args = [*TINY, "train.iterations=2", "logger=none"]
    assert run([*args, f"run_dir={tmp_path / 'a'}"]).returncode == 0
    assert run([*args, f"run_dir={tmp_path / 'b'}"]).returncode == 0
    assert comparable(metrics(tmp_path / "a")) == comparable(metrics(tmp_path / "b"))
    other = run([*args, "train.seed=1", f"run_dir={tmp_path / 'c'}"])
    assert other.returncode == 0 and comparable(metrics(tmp_path / "c")) != comparable(metrics(tmp_path / "a"))


def test_multirun_ablation_gigpo_vs_grpo_on_webshop(tmp_path):
    out = run(["-m", "algo=gigpo,grpo", "env=webshop", "env.groups=1", "algo.group_size=2", "env.val_episodes=2",
               "env.max_steps=4", "train.iterations=1", "logger=none", f"hydra.sweep.dir={tmp_path}"])
    assert out.returncode == 0, out.stderr[-3000:]
    run_dirs = sorted(p.parent for p in tmp_path.glob("*/metrics.jsonl"))
    assert len(run_dirs) == 2
    algos = sorted(OmegaConf.load(d / "config.yaml").algo.name for d in run_dirs)
    assert algos == ["gigpo", "grpo"]
    for d in run_dirs:
        assert "val/success" in metrics(d)[-1]
        assert "train/score" in metrics(d)[0]


def test_bad_override_fails_before_training(tmp_path):
    out = run(["algo.step_wieght=2", f"run_dir={tmp_path}"])
    assert out.returncode != 0 and "step_wieght" in out.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_dynamic_sampling_drops_no_signal_groups(tmp_path):
    # Groups of 2 on easy Sokoban often tie (both fail); dynamic sampling rolls out more groups. GRPO:
    # GiGPO's step groups almost always differ somewhere, so its groups rarely lack signal.
    out = run(["algo=grpo", "env.groups=4", "algo.group_size=2", "env.val_episodes=4", "train.val_every=5", "train.iterations=2",
               "algo.dynamic_sampling=true", "algo.max_resample=2", "logger=none", f"run_dir={tmp_path}"])
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [r for r in metrics(tmp_path) if "train/dropped_groups" in r]
    assert sum(r["train/dropped_groups"] for r in rows) > 0
    # Kept groups all carry signal: their episode advantages cannot all be zero.
    assert all(r["adv/episode_abs_mean"] > 0 for r in rows)
    assert all(r["time/rollout_s"] > 0 and r["time/generate_s"] > 0 for r in rows)


def test_hf_model_from_a_local_checkpoint_with_chat_template(tmp_path):
    """model=hf: a local checkpoint folder (here a tiny Qwen2 saved with a chat template), free-form
    output projected to actions; a random model mostly answers out of format, so invalid actions
    are counted and penalised."""
    import torch

    from gigpo.config import ModelConfig
    from gigpo.policy.model import build_tiny
    from gigpo.policy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(["task: push X onto O <action>up</action> left right down"] * 50, 300)
    tokenizer.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}<|assistant|>"
    torch.manual_seed(0)
    checkpoint = tmp_path / "checkpoint"
    build_tiny(ModelConfig(), tokenizer).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)

    run_dir = tmp_path / "run"
    out = run([*TINY, "model=hf", f"model.path={checkpoint}", "model.dtype=float32", "model.max_response_tokens=8",
               "train.iterations=1", "logger=none", f"run_dir={run_dir}"])
    assert out.returncode == 0, out.stderr[-3000:]
    first = metrics(run_dir)[0]
    assert first["train/invalid_rate"] > 0.5 and "val/success" in metrics(run_dir)[-1]


def test_invalid_penalty_enters_the_training_reward_only():
    from gigpo.rollout import Rollout
    from gigpo.runner import StepRecord

    records = [StepRecord(0, 0, t, "s", "obs", "up", "x", valid, -0.1, False, False, "sokoban")
               for t, valid in enumerate([True, False, False])]
    batch = Rollout(records)
    # The estimator places the penalty (algo.penalty_placement); rewards stay as the env gave them.
    assert batch.invalid.tolist() == [False, True, True]
    assert batch.reward.tolist() == [-0.1, -0.1, -0.1] and [r.reward for r in records] == [-0.1, -0.1, -0.1]
