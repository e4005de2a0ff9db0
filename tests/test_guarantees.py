"""What the harness guarantees (README, "What the harness guarantees"): every episode counted, runs
that measured nothing fail, resume never mixes configs, checkpoints never execute code, errors
name the file, every run records its provenance, peak memory is per run.

In-process runs use easy Sokoban with the tiny model and ``logger=none``; a broken environment is
simulated by patching ``SokobanEnv.reset`` (envs run in the training process with env.workers=0).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from gigpo.config import register_configs
from gigpo.envs import ENVS
from gigpo.rollout import episode_summary
from gigpo.runner import GroupRunner

ROOT = Path(__file__).resolve().parents[1]
TINY = ["env.groups=2", "algo.group_size=4", "env.val_episodes=8", "train.val_every=2", "train.mini_batch_size=32",
        "logger=none"]
register_configs()


def compose_cfg(overrides: list[str], run_dir: Path):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


def run_py(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- 1. every episode asked for is counted; failures count as failures ----

@pytest.fixture
def reset_fails_env():
    ENVS["resetfails"] = "failing_envs:ResetFailsEnv"  # a light module: spawned workers import it fast
    yield "resetfails"
    del ENVS["resetfails"]


@pytest.mark.parametrize("hang, workers", [(False, 0), (True, 2)])
def test_episodes_failing_at_reset_are_counted_as_failed(reset_fails_env, hang, workers):
    act = lambda views: [("<action>inc</action>", None)] * len(views)  # noqa: E731
    with GroupRunner(reset_fails_env, {"hang": hang}, num_workers=workers, step_timeout_s=2.0) as runner:
        records = runner.run(list(range(8)), group_size=1, act=act)  # worker 1 holds the odd seeds
        stats = runner.take_stats()
    assert {f["seed"] for f in stats["failures"]} == {1, 3, 5, 7}
    assert all(f["stage"] == "reset" for f in stats["failures"])
    assert all(("hung" if hang else "broken game") in f["error"] for f in stats["failures"])
    assert stats["worker_restarts"] == (1 if hang else 0)
    summary = episode_summary(records, stats["failures"])
    # 8 asked for, 4 never started: success is 4 / 8, not 4 / 4
    assert summary["episodes"] == 8 and summary["failed_episodes"] == 4 and summary["success"] == 0.5


@pytest.fixture
def sokoban_fails(monkeypatch):
    """``fail(predicate)``: SokobanEnv.reset raises for seeds where predicate(seed) holds. The tokenizer
    corpus (random episodes on seeds 0..15) is unaffected."""
    from gigpo import train as train_module
    from gigpo.envs.sokoban import SokobanEnv

    real_reset, real_corpus = SokobanEnv.reset, train_module.env_corpus
    predicate = {"fn": lambda seed: False}

    def reset(self, seed):
        if predicate["fn"](seed):
            raise OSError(f"cannot load level for seed {seed}")
        return real_reset(self, seed)

    def corpus(env_cfg, *args, **kwargs):
        saved, predicate["fn"] = predicate["fn"], lambda seed: False
        try:
            return real_corpus(env_cfg, *args, **kwargs)
        finally:
            predicate["fn"] = saved

    monkeypatch.setattr(SokobanEnv, "reset", reset)
    monkeypatch.setattr(train_module, "env_corpus", corpus)
    return lambda fn: predicate.update(fn=fn)


def test_validation_counts_failed_episodes_and_logs_env_failures(tmp_path, sokoban_fails):
    from gigpo.train import train

    sokoban_fails(lambda seed: seed >= 1_000_000 and seed % 2 == 1)  # half the validation episodes
    train(compose_cfg([*TINY, "train.iterations=1"], tmp_path))
    rows = metrics(tmp_path)
    for row in (rows[0], rows[-1]):
        assert row["val/episodes"] == 8 and row["val/failed_episodes"] == 4
        assert row["val/success"] <= 0.5 and row["env/failed_episodes"] == 4
        assert row["env/worker_restarts"] == 0


@pytest.mark.parametrize("broken, what", [(lambda seed: seed >= 1_000_000, "validation"),
                                          (lambda seed: seed < 1_000_000, "training iteration 0")])
def test_a_run_whose_every_episode_fails_stops_naming_the_cause(tmp_path, sokoban_fails, broken, what):
    from gigpo.train import train

    sokoban_fails(broken)
    with pytest.raises(RuntimeError, match=f"{what}: all .* episodes failed in env 'sokoban'.*cannot load level"):
        train(compose_cfg([*TINY, "train.iterations=1"], tmp_path))
    assert not (tmp_path / "summary.json").exists()


def test_a_sweep_trial_whose_episodes_all_fail_is_fail_not_zero(tmp_path, sokoban_fails):
    import optuna

    from gigpo.sweeps.objective import Objective, SearchSpace

    sokoban_fails(lambda seed: seed >= 1_000_000)
    space = SearchSpace("t", {"algo.step_weight": {"type": "float", "low": 0.0, "high": 1.0}})
    objective = Objective(space, TINY, "t", tmp_path, budget=50, seeds=1, points=2)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1, catch=(Exception,))
    assert study.trials[0].state == optuna.trial.TrialState.FAIL and study.trials[0].value is None


def test_non_finite_advantage_stops_naming_it(tmp_path, monkeypatch):
    import numpy as np

    from gigpo import train as train_module

    real = train_module.compute_step_advantages

    def nan_advantages(cfg, batch, parts=None):
        advantages, stats = real(cfg, batch, parts)
        advantages[0] = np.nan
        return advantages, stats

    monkeypatch.setattr(train_module, "compute_step_advantages", nan_advantages)
    with pytest.raises(FloatingPointError, match="non-finite advantage"):
        train_module.train(compose_cfg([*TINY, "train.iterations=1"], tmp_path))
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text() if (tmp_path / "metrics.jsonl").exists() else True


def test_metrics_log_refuses_nan_naming_the_metric(tmp_path):
    from gigpo.tracking import MetricsLog

    log = MetricsLog(tmp_path, OmegaConf.create({"logger": {"name": "none"}}), resume_iteration=0)
    with pytest.raises(FloatingPointError, match="loss/policy_loss=nan"):
        log.write({"iter": 0, "loss/policy_loss": float("nan")})
    assert not (tmp_path / "metrics.jsonl").exists() or "NaN" not in (tmp_path / "metrics.jsonl").read_text()


# ---- 3. resume never adopts a different config ----

def test_resume_refuses_a_changed_config_and_a_finished_run_exits(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "train.iterations=2", f"run_dir={run_dir}"]
    assert run_py(args, tmp_path).returncode == 0
    config_before = (run_dir / "config.yaml").read_text()
    lines_before = (run_dir / "metrics.jsonl").read_text()

    changed = run_py([*args, "train.lr=0.01", "algo.gamma=0.9"], tmp_path)
    assert changed.returncode != 0
    assert "Differing keys" in changed.stderr and "train.lr: 0.001 -> 0.01" in changed.stderr
    assert "algo.gamma: 0.95 -> 0.9" in changed.stderr
    assert (run_dir / "config.yaml").read_text() == config_before  # not overwritten

    again = run_py([*args, "logger=wandb", "logger.mode=offline"], tmp_path)  # logging keys may change
    assert again.returncode == 0 and "run complete" in again.stdout
    assert (run_dir / "metrics.jsonl").read_text() == lines_before  # not re-validated
    assert not (run_dir / "wandb").exists()  # no second W&B run

    longer = run_py([*TINY, "train.iterations=3", f"run_dir={run_dir}"], tmp_path)  # raising iterations resumes
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert [r["iter"] for r in metrics(run_dir)] == [0, 1, 2, 3]


def test_resume_false_refuses_to_wipe_a_run_unless_overwrite(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "train.iterations=1", f"run_dir={run_dir}"]
    assert run_py(args, tmp_path).returncode == 0
    lines = (run_dir / "metrics.jsonl").read_text()
    refused = run_py([*args, "train.resume=false"], tmp_path)
    assert refused.returncode != 0 and str(run_dir) in refused.stderr and "train.overwrite=true" in refused.stderr
    assert (run_dir / "metrics.jsonl").read_text() == lines
    fresh = run_py([*args, "train.resume=false", "train.overwrite=true", "train.seed=1"], tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert OmegaConf.load(run_dir / "config.yaml").train.seed == 1 and len(metrics(run_dir)) == 2


def test_resume_diff_allows_logging_keys_and_growing_budgets_only():
    from gigpo.tracking import resume_diff

    saved = {"train": {"iterations": 10, "lr": 0.001, "threads": 1, "max_env_steps": 0}, "logger": {"name": "wandb"},
             "env": {"workers": 0, "groups": 8}, "run_dir": "a"}
    same = json.loads(json.dumps(saved))
    same["train"].update(iterations=20, threads=4)
    same.update(logger={"name": "none"}, run_dir="b")
    same["env"]["workers"] = 2
    assert resume_diff(saved, same) == []
    changed = json.loads(json.dumps(saved))
    changed["train"].update(iterations=5, lr=0.01)
    changed["env"]["groups"] = 4
    diff = resume_diff(saved, changed)
    assert [d.split(":")[0] for d in diff] == ["env.groups", "train.iterations", "train.lr"]


# ---- 5. loading a checkpoint never executes code ----

class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_checkpoint_is_refused_without_running_its_code(tmp_path):
    from gigpo.tracking import load_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "iteration": 1, "payload": Exploit(marker)}, path)
    with pytest.raises(RuntimeError, match=f"checkpoint {path} cannot be loaded safely"):
        load_checkpoint(path)
    assert not marker.exists()
    with path.open("wb") as f:  # a plain pickle too
        pickle.dump({"model": Exploit(marker)}, f)
    with pytest.raises(RuntimeError, match=str(path)):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_round_trips_rng_state_under_weights_only(tmp_path):
    import random

    import numpy as np

    from gigpo.tracking import load_checkpoint, save_checkpoint, set_rng_state

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    path = save_checkpoint(tmp_path, 1, torch.nn.Linear(2, 2), None, {"config": "{}"})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# ---- 6. errors name the file ----

def test_truncated_last_metrics_line_is_dropped_on_resume(tmp_path):
    run_dir = tmp_path / "run"
    assert run_py([*TINY, "train.iterations=2", "train.checkpoint_every=1", f"run_dir={run_dir}"], tmp_path).returncode == 0
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])  # killed mid-write
    resumed = run_py([*TINY, "train.iterations=3", "train.checkpoint_every=1", f"run_dir={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "truncated last line" in resumed.stdout + resumed.stderr
    assert "metrics.jsonl" in (run_dir / "run.log").read_text()
    assert [r["iter"] for r in metrics(run_dir)] == [0, 1, 2, 3]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really a zip"])
def test_corrupt_or_empty_checkpoint_is_named(tmp_path, content):
    from gigpo.tracking import CHECKPOINT

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / CHECKPOINT).write_bytes(content)
    out = run_py([*TINY, "train.iterations=1", f"run_dir={run_dir}"], tmp_path)
    assert out.returncode != 0 and f"checkpoint {run_dir / CHECKPOINT}" in out.stderr


def test_full_disk_names_the_path_and_leaves_no_temp_file(tmp_path, monkeypatch):
    from gigpo import tracking

    def full(obj, file, *args, **kwargs):  # tracking.torch_save hands torch.save an open file
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tracking.torch, "save", full)
    with pytest.raises(OSError, match=f"no space left on device while writing {tmp_path / tracking.CHECKPOINT}"):
        tracking.save_checkpoint(tmp_path, 1, torch.nn.Linear(2, 2), None)
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_corrupt_alfworld_game_file_is_named(tmp_path):
    pytest.importorskip("textworld")
    from gigpo.envs.alfworld import AlfWorldEnv

    game = tmp_path / "json_2.1.1" / "train" / "pick_and_place_simple-Apple-None-Desk-1" / "trial_1" / "game.tw-pddl"
    game.parent.mkdir(parents=True)
    game.write_text('{"pddl_domain": "trunc')
    env = AlfWorldEnv(data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=f"corrupt game file {game}"):
        env.reset(0)


def test_corrupt_alfworld_archive_is_named(tmp_path, monkeypatch):
    from gigpo.data import alfworld_data_dir

    archives = tmp_path / "shared" / "data" / "alfworld"
    archives.mkdir(parents=True)
    (archives / "train.tar.xz").write_bytes(b"\xfd7zXZ\x00 truncated")
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    monkeypatch.setenv("GIGPO_SHARED", str(tmp_path / "shared"))
    monkeypatch.setenv("GIGPO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=f"corrupt archive {archives / 'train.tar.xz'}"):
        alfworld_data_dir()
    assert not list((tmp_path / "cache" / "alfworld").glob(".unpack-*"))


def test_webshop_empty_product_file_and_exotic_prices(tmp_path):
    from gigpo.envs.webshop.data import load_catalog, parse_price

    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "items_shuffle_1000.json").write_text("[]")
    (directory / "items_ins_v2_1000.json").write_text("{}")
    (directory / "items_human_ins.json").write_text('{"B0": [{"instruction": "x"}]}')
    with pytest.raises(ValueError, match="items_shuffle_1000.json: top level: holds no products"):
        load_catalog(directory)
    (directory / "items_shuffle_1000.json").write_text("")
    with pytest.raises(ValueError, match="items_shuffle_1000.json: the file is empty"):
        load_catalog(directory)
    with pytest.raises(ValueError, match="not a price"):
        parse_price("$1e308")
    assert parse_price("$1,299.50 - $1,500") == (1299.5, "$1299.50 to $1500.00")


# ---- 7. provenance ----

def test_every_run_records_its_provenance(tmp_path):
    from gigpo.tracking import config_hash

    run_dir = tmp_path / "run"
    # train.threads=3: not torch's default on this machine, so the record shows the run's own setting
    out = run_py([*TINY, "train.iterations=1", "train.threads=3", "logger=wandb", "logger.mode=offline",
                  f"run_dir={run_dir}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((run_dir / "provenance.json").read_text())
    assert record["config"] == OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    assert record["config_sha256"] == config_hash(record["config"])
    assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)
    versions = record["versions"]
    for package in ("torch", "transformers", "tokenizers", "numpy", "hydra-core", "omegaconf", "python", "platform"):
        assert versions[package], package
    assert versions["torch"] == torch.__version__
    # The host: floating point drifts across CPUs, so a number names the CPU it came from.
    host = record["host"]
    assert host["cpu_model"] and host["cores"] >= 1 and host["gpu"] is None
    assert host["torch_threads"] == 3  # the threads the run computed with, set before the record
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx2" in cpuinfo:
        assert "avx2" in host["cpu_isa_flags"]
    assert record["harness"]["version"] and len(record["harness"]["source_sha256"]) == 64
    [offline] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")  # the W&B run's config holds it too
    assert record["config_sha256"].encode() in offline.read_bytes()


def test_provenance_names_torchs_own_build_when_its_metadata_omits_it(monkeypatch):
    """PyPI's CUDA wheel says "2.13.0" in its distribution metadata and "2.13.0+cu130" itself (seen on
    Python 3.12/3.13 here); the build changes the numbers, so the record takes torch's own word."""
    from importlib import metadata

    from gigpo import tracking

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "2.13.0" if name == "torch" else real(name))
    monkeypatch.setattr(torch, "__version__", "2.13.0+cu130")
    versions = tracking.package_versions()
    assert versions["torch"] == "2.13.0+cu130"
    assert "torch_cuda" in versions and versions["torch_cuda"] == torch.version.cuda


# ---- 10. peak memory is per run ----

def test_peak_memory_is_measured_per_run():
    import numpy as np

    from gigpo.tracking import peak_memory_mb, reset_peak_memory

    assert reset_peak_memory()
    big = np.ones(400 * 2**20 // 8)  # "run 1" touches 400 MiB
    first = peak_memory_mb()
    del big
    reset_peak_memory()  # "run 2" starts
    second = peak_memory_mb()
    assert first - second > 300, (first, second)


def test_second_run_in_a_process_reports_its_own_peak(tmp_path):
    import numpy as np

    from gigpo.train import train

    held = []

    def allocate(iteration, env_steps, val):  # run 1 touches 500 MiB during its first iteration
        if not held:
            held.append(np.ones(500 * 2**20 // 8))

    train(compose_cfg([*TINY, "train.iterations=1"], tmp_path / "first"), on_validation=allocate)
    held.clear()
    train(compose_cfg([*TINY, "train.iterations=1"], tmp_path / "second"))
    first, second = (metrics(tmp_path / name)[0]["perf/peak_mem_mb"] for name in ("first", "second"))
    assert first - second > 300, (first, second)


def test_a_run_keeps_its_setup_from_the_collector_and_hands_it_back(tmp_path):
    # During the loop the objects built before it are frozen (no full collections over them); after the
    # run nothing stays frozen, so a multirun's finished runs are collected like any garbage.
    import gc

    from gigpo.train import train

    frozen = []
    gc.unfreeze()
    train(compose_cfg([*TINY, "train.iterations=1"], tmp_path / "run"),
          on_validation=lambda iteration, env_steps, val: frozen.append(gc.get_freeze_count()))
    assert frozen and min(frozen) > 10_000, frozen
    assert gc.get_freeze_count() == 0


# ---- 12. process hygiene ----

def test_failed_check_leaves_no_folder_and_slashes_never_nest(tmp_path):
    out = run_py(["train.grad_clip=-1", "model.path=/x/y"], tmp_path)
    assert out.returncode != 0 and "train.grad_clip" in out.stderr
    assert list(tmp_path.iterdir()) == []
    explicit = tmp_path / "elsewhere" / "run"
    out = run_py([*TINY, "train.iterations=1", "model.path=/x/y", f"run_dir={explicit}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (explicit / "metrics.jsonl").exists() and not (tmp_path / "runs").exists()  # run_dir used as is
    out = run_py([*TINY, "train.iterations=1", "model.path=/x/y"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [run_dir] = [p.parent for p in (tmp_path / "runs").rglob("metrics.jsonl")]
    assert run_dir.parent == tmp_path / "runs" / "default" and "model.path=_x_y" in run_dir.name


# ---- 8. the environment is pinned ----

def test_constraints_lock_every_dependency_without_local_paths():
    import re
    import tomllib

    lines = [line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    pins = dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) and re.fullmatch(r"[0-9][0-9A-Za-z.!]*", version)
               for name, version in pins.items()), "only name==version lines (no paths, URLs or local labels)"
    assert pins["torch"] == "2.13.0"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(d for extra in ("dev", "alfworld", "scale", "sweep", "notebook")
                                          for d in project["optional-dependencies"][extra])]
    normal = {re.sub(r"[-_.]+", "-", name).lower() for name in pins}
    missing = [d for d in wanted if re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ]", d)[0]).lower() not in normal]
    assert not missing, f"not locked in constraints.txt: {missing}"
