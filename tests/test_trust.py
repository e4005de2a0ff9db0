"""Trust, third pass (issue #22): no code execution from DeepSpeed files, evaluation of the run that
was trained, no silent no-ops, no leaked passwords. Each test fails on a1054bd."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from test_scale import HAS_DEEPSPEED, extensions_dir, run_resume_check  # noqa: F401 -- a fixture

ROOT = Path(__file__).resolve().parents[1]


class Exploit:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---- 1. no code execution from a DeepSpeed checkpoint ----

@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed not installed")
def test_a_crafted_deepspeed_shard_is_refused_without_running_its_code(tmp_path, extensions_dir):  # noqa: F811
    """A real 1-rank gloo DeepSpeed checkpoint, a payload added to its model-states shard: resuming
    stops naming the shard and the global, and the payload never runs."""
    first = run_resume_check(tmp_path, "run", 2, extensions_dir, processes=1, stop_after=1)
    assert first.returncode == 0, first.stderr[-3000:]
    shard = tmp_path / "run" / "checkpoints" / "deepspeed" / "iter_1" / "mp_rank_00_model_states.pt"
    marker = tmp_path / "pwned"
    state = torch.load(shard, weights_only=False)  # the test's own file: trusted
    state["payload"] = Exploit(marker)
    torch.save(state, shard)
    resumed = run_resume_check(tmp_path, "again", 2, extensions_dir, processes=1, run_dir=tmp_path / "run")
    assert resumed.returncode != 0
    assert not marker.exists()
    assert (f"DeepSpeed checkpoint file {shard} cannot be loaded safely: it holds the global posix.system"
            in resumed.stderr), resumed.stderr[-3000:]


# ---- 10. the unsafe-checkpoint message names the offending global, uncut ----

def test_an_unsafe_checkpoint_is_refused_naming_the_global_in_a_whole_sentence(tmp_path):
    from gigpo.tracking import load_checkpoint

    marker, path = tmp_path / "pwned", tmp_path / "last.pt"
    torch.save({"model": {}, "iteration": 1, "payload": Exploit(marker)}, path)
    with pytest.raises(RuntimeError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"checkpoint {path} cannot be loaded safely: it holds the global posix.system")
    assert message.endswith("the file was not loaded") and "Weights only load failed" not in message
    assert not marker.exists()


# ---- 3. values that silently change or stop training are refused at composition ----

def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from gigpo.config import register_configs

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return hydra_compose("config", overrides=overrides)


def _bad_values_script():
    """scripts/bad_values.py, the one list of issue #22's probe values (it also re-measures the count)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bad_values", ROOT / "scripts" / "bad_values.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The probe's values (issue #22, item 3) and the key each refusal must name; train.grad_clip=0 is
# accepted by design (no clipping, as DeepSpeed reads 0).
SILENT_VALUES = [case for case in _bad_values_script().ISSUE_ITEM_3 if case[0] != ["train.grad_clip=0"]]


@pytest.mark.parametrize("overrides, key", SILENT_VALUES, ids=[" ".join(o) for o, _ in SILENT_VALUES])
def test_values_that_silently_change_or_stop_training_fail_the_check_naming_the_key(overrides, key):
    from gigpo.checks import check

    with pytest.raises(ValueError, match=f"^{key}="):
        check(compose(overrides), runtime=False)


def test_env_checks_live_in_the_env_modules_and_accept_the_shipped_configs():
    """Each env module declares its option check; the defaults of every shipped env config pass it."""
    from gigpo.checks import check
    from gigpo.envs import ENVS, env_module

    assert all(hasattr(env_module(name), "check_options") for name in ENVS)
    for env in ("sokoban", "sokoban_easy", "gridnav", "webshop", "alfworld"):
        check(compose([f"env={env}"]), runtime=False)
    check(compose(["model.temperature=1", "model.val_temperature=0"]), runtime=False)  # greedy validation is fine


def test_grad_clip_zero_means_no_clipping_and_the_weights_change():
    """train.grad_clip=0 used to zero every gradient (clip_grad_norm_(max_norm=0)); now it means what
    DeepSpeed reads it as: no clipping, the same update as an unreachable bound."""
    from types import SimpleNamespace

    from gigpo.ppo import update
    from gigpo.scale.dp_check import make_cfg, make_problem

    def updated(grad_clip: float) -> tuple[dict, dict, dict]:
        cfg = make_cfg(SimpleNamespace(zero_stage=2, strategy="single", loss_agg="token_mean"))
        cfg.train.grad_clip = grad_clip
        policy, reference, batch, advantages = make_problem()
        before = {n: p.detach().clone() for n, p in policy.named_parameters()}
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr)
        metrics = update(cfg, policy, reference, optimizer, batch, advantages, iteration=0)
        return before, {n: p.detach().clone() for n, p in policy.named_parameters()}, metrics

    before, after, metrics = updated(0.0)
    assert metrics["loss/grad_norm"] > 0
    assert any(not torch.equal(before[n], after[n]) for n in before)
    _, unbounded, _ = updated(1e12)
    assert all(torch.equal(after[n], unbounded[n]) for n in after)


# ---- 4. a run killed before its first metrics line is still a run ----

@pytest.mark.parametrize("left", ["config.yaml", "provenance.json", "tokenizer"])
def test_a_run_killed_before_its_first_metrics_line_is_not_reused_under_another_config(tmp_path, left):
    """A gridnav start wrote config.yaml, provenance.json and tokenizer/ and was killed: a sokoban start in
    the folder is refused (naming env.name, or saying there is no config to compare with), never reuses them."""
    import shutil

    from omegaconf import OmegaConf

    from gigpo.tracking import atomic_write_text, prepare_run, write_provenance

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    gridnav = compose(["env=gridnav"])
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(gridnav, resolve=True))
    write_provenance(run_dir, gridnav)
    (run_dir / "tokenizer").mkdir()
    (run_dir / "tokenizer" / "tokenizer.json").write_text("{}")
    for name in {"config.yaml", "provenance.json", "tokenizer"} - {left}:
        shutil.rmtree(run_dir / name) if (run_dir / name).is_dir() else (run_dir / name).unlink()
    sokoban = OmegaConf.to_container(compose(["env=sokoban"]), resolve=True)
    expected = "env.name: 'gridnav' -> 'sokoban'" if left == "config.yaml" else "no config to compare with"
    with pytest.raises((ValueError, FileNotFoundError), match=expected):
        prepare_run(run_dir, sokoban, resume=True, overwrite=False)
    with pytest.raises(FileExistsError, match="already holds a run"):
        prepare_run(run_dir, sokoban, resume=False, overwrite=False)
    assert prepare_run(run_dir, sokoban, resume=False, overwrite=True).checkpoint is None
    assert not any((run_dir / name).exists() for name in ("config.yaml", "provenance.json", "tokenizer"))


# ---- 10. tables say how many runs they left out, and show each cell's seed count ----

def test_tables_count_the_unfinished_runs_they_leave_out_and_show_seed_counts(caplog):
    import logging

    import pandas as pd

    from analysis.tables import build_tables, to_markdown

    frame = pd.DataFrame({"source": ["a", "b", "c", "d"], "method": ["GRPO"] * 4, "env": ["sokoban"] * 4,
                          "seed": [0, 1, 2, 3], "finished": [True, True, False, False],
                          "val/success": [0.5, 0.7, 0.1, 0.2]})
    with caplog.at_level(logging.WARNING, logger="analysis.tables"):
        table = build_tables(frame)["sokoban"]
    assert "left out 2 unfinished run(s)" in caplog.text
    header, rule, row = to_markdown(table).splitlines()
    assert header == "| Method | Success | seeds |" and row == "| GRPO | 60.0 ± 14.1 | 2 |"


class ExitsWhenUnpickled:
    """An env option whose unpickling in the spawned worker ends it with exit code 3, before "ready"."""

    def __reduce__(self):
        return (os._exit, (3,))


def test_a_worker_that_dies_at_start_says_so_with_its_exit_code():
    from gigpo.envs import ENVS
    from gigpo.runner import GroupRunner

    ENVS["resetfails"] = "failing_envs:ResetFailsEnv"
    try:
        with GroupRunner("resetfails", {"hang": ExitsWhenUnpickled()}, num_workers=1, step_timeout_s=30) as runner:
            assert runner.run([0], group_size=1, act=lambda views: [("<action>inc</action>", None)] * len(views)) == []
            failures = runner.take_stats()["failures"]
    finally:
        del ENVS["resetfails"]
    assert [f["stage"] for f in failures] == ["reset"]
    assert failures[0]["error"].startswith("worker 0 unusable: env worker 0 exited before it was ready (exit code 3;")


# ---- 8. a resumed sweep continues its sampler instead of replaying its first points ----

def test_a_resumed_study_does_not_replay_the_parameters_of_its_first_trials(tmp_path):
    """Both entry points (sweeps.run and the Hydra sweeper) open the study through load_study."""
    from gigpo.sweeps.run import SweepOptions, load_study

    options = SweepOptions(sampler_seed=0, storage=None)

    def one_trial() -> float:
        study = load_study(options, tmp_path, "s")  # a new start of the sweep: a fresh sampler
        trial = study.ask()
        value = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        study.tell(trial, 0.5)
        return value

    first, resumed, again = one_trial(), one_trial(), one_trial()
    assert len({first, resumed, again}) == 3
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    study = load_study(options, fresh, "s")  # a fresh study with the same seed still starts where the first did
    assert study.ask().suggest_float("lr", 1e-5, 1e-1, log=True) == first


# ---- 6. the env-step deadline is per env, and a hang names its own seed ----

def test_a_hung_env_is_named_by_its_seed_and_its_deadline_is_per_env_step():
    """One worker holds four envs (seeds 7, 7, 8, 8); seed 8's step 1 takes 3 s against a 2 s timeout.
    Before, the deadline was 2 s x 4 envs, so the hang went unnoticed, and a hang blamed every env
    alike; now the slow env fails as hung and the others fail naming seed 8 as the cause."""
    from gigpo.envs import ENVS
    from gigpo.runner import GroupRunner

    ENVS["slow"] = "failing_envs:SlowEnv"
    try:
        with GroupRunner("slow", {"slow_seed": 8, "slow_at_step": 1, "seconds": 3.0}, num_workers=1,
                         step_timeout_s=2.0) as runner:
            records = runner.run([7, 8], group_size=2, act=lambda views: [("<action>inc</action>", None)] * len(views))
            stats = runner.take_stats()
    finally:
        del ENVS["slow"]
    errors = {f["traj_id"]: (f["seed"], f["stage"], f["error"]) for f in stats["failures"]}
    assert stats["worker_restarts"] == 1 and sorted(errors) == [0, 1, 2, 3]
    assert errors[2] == (8, "step 1", "env hung (no answer within env.step_timeout_s=2.0 s) during step")
    for slot in (0, 1, 3):
        assert errors[slot][2] == ("lost when worker 0 was restarted: the env of seed 8 (trajectory 2) hung (no answer "
                                   "within env.step_timeout_s=2.0 s) during step")
    assert all(r.info.get("crashed") for r in records if r.step == 1)


# ---- 7. a full disk names the path, on a real (small) filesystem ----

@pytest.fixture
def small_filesystem(tmp_path):
    """A 256 KiB tmpfs (needs root: mount); skipped where it cannot be mounted."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_a_full_disk_names_the_checkpoint_path_on_a_real_filesystem(small_filesystem):
    from gigpo.tracking import CHECKPOINT, save_checkpoint

    with pytest.raises(OSError, match=f"no space left on device while writing {small_filesystem / CHECKPOINT}"):
        save_checkpoint(small_filesystem, 1, torch.nn.Linear(300, 300), None)  # 360 KB of weights
    assert list((small_filesystem / "checkpoints").iterdir()) == []


# ---- 2. mode=eval evaluates the run that was trained ----

TINY_GRIDNAV = ["env=gridnav", "env.groups=2", "algo.group_size=4", "env.val_episodes=4", "train.val_every=2",
                "train.mini_batch_size=32", "train.iterations=1", "logger=none"]


def run_py(args: list[str], cwd: Path):
    import subprocess
    import sys

    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def gridnav_run(tmp_path_factory) -> Path:
    """A finished one-iteration GridNav run (tiny model)."""
    run_dir = tmp_path_factory.mktemp("gridnav") / "run"
    out = run_py([*TINY_GRIDNAV, f"run_dir={run_dir}"], run_dir.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir


def test_a_finished_run_rerun_says_run_complete_once(gridnav_run):
    out = run_py([*TINY_GRIDNAV, f"run_dir={gridnav_run}"], gridnav_run.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (out.stdout + out.stderr).count("run complete") == 1
    import json

    first = json.loads((gridnav_run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["train/skipped_updates"] in (0.0, 1.0)


def test_eval_plays_the_trained_env_and_refuses_training_keys(gridnav_run, tmp_path):
    """The command line's default env is Sokoban: eval still plays GridNav (the checkpoint's config),
    records env, model, config hash and overrides, and leaves no runs/ folder behind; an override of a
    training key is refused naming it; evaluation keys apply."""
    import json

    from gigpo.tracking import config_hash, load_checkpoint

    out = run_py(["mode=eval", f"checkpoint={gridnav_run}", "env.val_episodes=3"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((gridnav_run / "eval.json").read_text())
    state = load_checkpoint(gridnav_run / "checkpoints" / "last.pt")
    assert result["env"] == "gridnav" and result["model"] == "tiny" and result["val/episodes"] == 3
    assert result["config_sha256"] == config_hash(json.loads(state["config"]))
    assert result["overrides"] == ["mode=eval", f"checkpoint={gridnav_run}", "env.val_episodes=3"]
    assert "val/success/gridnav_d4" in result
    assert not (tmp_path / "runs").exists() and (gridnav_run / "eval.log").exists()

    refused = run_py(["mode=eval", f"checkpoint={gridnav_run}", "env=sokoban", "algo.step_weight=0.5"], tmp_path)
    assert refused.returncode != 0
    assert "env.name: trained with 'gridnav', given 'sokoban'" in refused.stderr
    assert "algo.step_weight: trained with 1.0, given 0.5" in refused.stderr
    assert not (tmp_path / "runs").exists()
    same = run_py([*TINY_GRIDNAV, "mode=eval", f"checkpoint={gridnav_run}"], tmp_path)  # the training command
    assert same.returncode == 0, same.stderr[-3000:]


# ---- 5. a sweep storage password is never recorded ----

SECRET_URL = "postgresql://user:secret@host/db"


def test_redact_hides_the_password_of_any_url():
    from gigpo.tracking import redact

    assert redact(SECRET_URL) == "postgresql://user:***@host/db"
    assert redact({"a": [f"x {SECRET_URL} y", "mysql+pymysql://u:p%40ss@h:3306/d"], "b": 1}) == {
        "a": ["x postgresql://user:***@host/db y", "mysql+pymysql://u:***@h:3306/d"], "b": 1}
    assert redact("/runs/journal.log") == "/runs/journal.log" and redact("https://host/a:b@c") == "https://host/a:b@c"


def files_holding(folder: Path, secret: bytes) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret in p.read_bytes()]


def test_a_sweep_storage_password_is_in_no_file_the_run_writes(tmp_path):
    """A run carrying sweep.storage (as the Hydra sweeper's jobs do) records it redacted in config.yaml,
    provenance.json, the checkpoint and the W&B (offline) files."""
    from omegaconf import open_dict

    from gigpo.train import train
    from gigpo.tracking import load_checkpoint

    cfg = compose(["env.groups=2", "algo.group_size=4", "env.val_episodes=2", "train.iterations=1",
                   "train.mini_batch_size=32", "logger=wandb", "logger.mode=offline",
                   f"sweep.storage={SECRET_URL}"])
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "run")
    train(cfg)
    run_dir = tmp_path / "run"
    assert (run_dir / "wandb").is_dir() and (run_dir / "checkpoints" / "last.pt").exists()
    assert files_holding(run_dir, b"secret") == []
    assert "postgresql://user:***@host/db" in (run_dir / "config.yaml").read_text()
    assert "postgresql://user:***@host/db" in (run_dir / "provenance.json").read_text()
    assert "postgresql://user:***@host/db" in load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]


def test_an_evaluation_of_the_model_as_loaded_records_no_storage_password(tmp_path):
    from omegaconf import open_dict

    from gigpo.train import evaluate_as_loaded

    cfg = compose(["mode=eval", "env.val_episodes=2", "logger=none", f"sweep.storage={SECRET_URL}"])
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "eval")
    evaluate_as_loaded(cfg)
    assert (tmp_path / "eval" / "eval.json").exists() and files_holding(tmp_path / "eval", b"secret") == []
    assert "postgresql://user:***@host/db" in (tmp_path / "eval" / "config.yaml").read_text()


def test_hydra_files_of_a_job_hold_no_storage_password(tmp_path):
    """Hydra saves a job's overrides in .hydra/*.yaml before the job runs; the job rewrites them redacted
    (here a job refused because no sweeper launched it)."""
    out = run_py([f"sweep.storage={SECRET_URL}", "logger=none", f"run_dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode != 0 and "sweep.storage='postgresql://user:***@host/db'" in out.stderr
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").exists()
    assert files_holding(tmp_path, b"secret") == []


# ---- 9. tests keep their caches in pytest's tmp dir, and blame only their own writes ----

def test_the_alfworld_cache_is_under_pytests_temporary_directory(tmp_path_factory):
    from gigpo.data import cache_alfworld_dir

    assert tmp_path_factory.getbasetemp() in cache_alfworld_dir().parents


def test_the_checkout_guard_blames_the_tests_writes_not_a_persons(tmp_path):
    """A folder made by a test's process (the session's umask, inherited by subprocesses) counts; one
    made meanwhile by a person's shell (umask 022) does not."""
    import subprocess
    import sys

    from conftest import written_by_tests

    ours = tmp_path / "runs" / "by_a_test"
    subprocess.run([sys.executable, "-c", f"import os; os.makedirs({str(ours)!r})"], check=True)
    (ours / "metrics.jsonl").write_text("{}")
    persons = tmp_path / "runs" / "by_a_person"
    subprocess.run(["sh", "-c", f"umask 022 && mkdir -p {persons} && touch {persons}/metrics.jsonl"], check=True)
    entries = [ours, ours / "metrics.jsonl", persons, persons / "metrics.jsonl"]
    assert written_by_tests(entries) == [ours, ours / "metrics.jsonl"]


# ---- Also: an update whose loss is provably zero skips the forward and backward passes ----

def test_an_all_zero_advantage_update_is_skipped_and_changes_nothing_else(monkeypatch):
    """After an ordinary update (so AdamW carries momentum) and with weight decay, an all-zero-advantage
    update run in full and one skipped leave bitwise equal weights and optimizer states; the skipped
    one logs train/skipped_updates 1 and the same pg_loss, policy_loss and grad_norm (all 0)."""
    from types import SimpleNamespace

    import numpy as np

    from gigpo import ppo
    from gigpo.scale.dp_check import make_cfg, make_problem

    def two_updates(skip: bool):
        cfg = make_cfg(SimpleNamespace(zero_stage=2, strategy="single", loss_agg="token_mean"))
        cfg.algo.update(kl_coef=0.0, entropy_coef=0.0)
        cfg.train.weight_decay = 0.1
        policy, reference, batch, advantages = make_problem()
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr, weight_decay=0.1)
        ppo.update(cfg, policy, None, optimizer, batch, advantages, iteration=0)
        with monkeypatch.context() as patch:
            if not skip:  # the reference: the full computation, as before the skip existed
                patch.setattr(ppo, "loss_is_zero", lambda *args: False)
            metrics = ppo.update(cfg, policy, None, optimizer, batch, np.zeros_like(advantages), iteration=1)
        return metrics, policy.state_dict(), optimizer.state_dict()["state"]

    skipped, weights, state = two_updates(skip=True)
    full, full_weights, full_state = two_updates(skip=False)
    assert skipped["train/skipped_updates"] == 1.0 and full["train/skipped_updates"] == 0.0
    assert {k: full[k] for k in ("loss/pg_loss", "loss/policy_loss", "loss/grad_norm")} == {
        "loss/pg_loss": 0.0, "loss/policy_loss": 0.0, "loss/grad_norm": 0.0}
    assert {k: v for k, v in skipped.items() if k != "train/skipped_updates"} == {
        k: full[k] for k in ("loss/pg_loss", "loss/policy_loss", "loss/grad_norm")}
    assert all(torch.equal(weights[k], full_weights[k]) for k in weights)
    assert state.keys() == full_state.keys()
    assert all(torch.equal(state[i][k], full_state[i][k]) for i in state for k in state[i])


def test_a_zero_advantage_update_with_a_kl_or_entropy_term_is_not_skipped():
    from types import SimpleNamespace

    import numpy as np

    from gigpo import ppo
    from gigpo.scale.dp_check import make_cfg, make_problem

    cfg = make_cfg(SimpleNamespace(zero_stage=2, strategy="single", loss_agg="token_mean"))  # kl and entropy on
    policy, reference, batch, advantages = make_problem()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr)
    metrics = ppo.update(cfg, policy, reference, optimizer, batch, np.zeros_like(advantages), iteration=0)
    assert metrics["train/skipped_updates"] == 0.0 and "loss/kl" in metrics and metrics["loss/entropy"] > 0
