"""Every real config composes; typos and bad values fail at composition with the key named."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from gigpo.config import env_options, register_configs
from gigpo.checks import ALFWORLD_MAX_PYTHON, check
from gigpo.envs import make

CONF = Path(__file__).resolve().parents[1] / "conf"
register_configs()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


ALFWORLD_RUNS = importlib.util.find_spec("textworld") is not None and sys.version_info < ALFWORLD_MAX_PYTHON


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("algo, env, model, logger",
                         list(itertools.product(options("algo"), options("env"), options("model"), options("logger"))))
def test_every_group_combination_composes(algo, env, model, logger, tmp_path):
    overrides = [f"algo={algo}", f"env={env}", f"model={model}", f"logger={logger}"]
    if model == "hf":  # the runtime check wants a checkpoint folder: one with a config.json passes it
        (tmp_path / "qwen").mkdir()
        (tmp_path / "qwen" / "config.json").write_text("{}")
        overrides.append(f"model.path={tmp_path / 'qwen'}")
    cfg = compose_cfg(overrides)
    # Where ALFWorld cannot run (extra not installed, Python 3.13+) its runtime check refuses it by design
    # (test_machine_requirements_fail_the_check_with_the_fix); composition and values are still checked.
    check(cfg, runtime=env != "alfworld" or ALFWORLD_RUNS)
    assert OmegaConf.missing_keys(cfg) == set()


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose_cfg([f"experiment={experiment}", "model.path=/models/qwen"])
    check(cfg, runtime=False)  # GPU experiments: CUDA and torchrun are checked at launch
    assert OmegaConf.missing_keys(cfg) == set()


def test_contract_keys_exist():
    cfg = compose_cfg([])
    for key in ("algo.group_size", "algo.step_weight", "algo.gamma", "algo.mode", "env.groups", "env.max_steps",
                "train.iterations", "train.seed", "logger.mode"):
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key


@pytest.mark.parametrize("override, culprit", [
    ("algo.step_wieght=1", "step_wieght"),
    ("train.iterations=ten", "train.iterations"),
    ("env.dim=three", "env.dim"),
    ("algo=ppg", "algo"),
])
def test_typos_fail_at_composition(override, culprit):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg([override])
    assert culprit in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("override, culprit", [
    ("algo.name=ppg", "algo.name"),
    ("algo.mode=std", "algo.mode"),
    ("logger.mode=sometimes", "logger.mode"),
    ("env.groups=0", "env.groups"),
    ("algo.gamma=1.5", "algo.gamma"),
])
def test_bad_values_fail_the_check(override, culprit):
    with pytest.raises(ValueError, match=culprit):
        check(compose_cfg([override]))


def test_an_env_refuses_its_own_bad_options_at_composition():
    # WebShop's goal source is checked by the env module's check_options, where its other options are
    with pytest.raises(ValueError, match=r"env.goals='bogus' is not one of \['human', 'synthetic'\]"):
        check(compose_cfg(["env=webshop", "env.goals=bogus"]))


@pytest.mark.parametrize("override, culprit, allowed", [
    ("train.grad_clip=-1", "train.grad_clip", ">= 0"),
    ("train.lr=-0.001", "train.lr", ">= 0"),
    ("algo.clip_low=-0.2", "algo.clip_low", ">= 0"),
    ("algo.clip_high=-0.2", "algo.clip_high", ">= 0"),
    ("algo.kl_coef=-1", "algo.kl_coef", ">= 0"),
    ("algo.entropy_coef=-0.01", "algo.entropy_coef", ">= 0"),
    ("model.temperature=-0.5", "model.temperature", ">= 0"),
    ("model.val_temperature=-1", "model.val_temperature", ">= 0"),
    ("model.top_p=0", "model.top_p", "(0.0, 1.0]"),
    ("model.top_p=1.5", "model.top_p", "(0.0, 1.0]"),
    ("train.iterations=0", "train.iterations", ">= 1"),
    ("train.iterations=-3", "train.iterations", ">= 1"),
    ("train.max_env_steps=-1", "train.max_env_steps", ">= 0"),
    ("env.history_len=-1", "env.history_len", ">= 0"),
    ("algo.max_resample=-1", "algo.max_resample", ">= 0"),
    ("model.lora_rank=-4", "model.lora_rank", ">= 0"),
    ("env.workers=-1", "env.workers", ">= 0"),
    ("env.step_timeout_s=0", "env.step_timeout_s", "> 0"),
    ("env.step_timeout_s=-5", "env.step_timeout_s", "> 0"),
    ("model.heads=3", "model.heads", "divide model.hidden_size=64"),
    ("model.max_prompt_tokens=0", "model.max_prompt_tokens", ">= 1"),
    ("train.lr=nan", "train.lr", "finite"),
])
def test_values_that_corrupt_training_fail_the_check(override, culprit, allowed):
    with pytest.raises(ValueError) as err:
        check(compose_cfg([override]))
    assert culprit in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_group_baselines_need_two_trajectories(algo):
    with pytest.raises(ValueError, match=f"algo.group_size=1 must be >= 2 for algo.name={algo}"):
        check(compose_cfg([f"algo={algo}", "algo.group_size=1"]))
    check(compose_cfg(["algo=gigpo", "algo.group_size=1"]))  # GiGPO's step groups still carry signal


def test_machine_requirements_fail_the_check_with_the_fix(monkeypatch):
    import importlib.util

    import torch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ValueError, match="train.strategy=deepspeed.*torchrun"):
        check(compose_cfg(["train.strategy=deepspeed"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="train.device=cuda: CUDA is not available"):
        check(compose_cfg(["train.device=cuda"]))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "textworld" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match=r"env=alfworld needs .*'textworld'.*pip install -c constraints.txt -e \"\.\[alfworld\]\""):
        check(compose_cfg(["env=alfworld"]))


def test_alfworld_on_python_313_is_refused_naming_the_cause(monkeypatch):
    """textworld 1.7.0 fails on Python 3.13 (PEP 667; seen by hand): refused at the check, not mid-run."""
    import sys

    cfg = compose_cfg(["env=alfworld"])
    check(cfg, runtime=False)  # the config itself is fine
    monkeypatch.setattr(sys, "version_info", (3, 13, 0, "final", 0))
    with pytest.raises(ValueError, match=r"env=alfworld does not run on Python .*PEP 667.*3\.11 or 3\.12"):
        check(cfg)


def test_env_options_build_the_env():
    cfg = compose_cfg(["env=sokoban_easy"])
    env = make(cfg.env.name, **env_options(cfg.env))
    step = env.reset(seed=3)
    assert step.admissible and not step.done


@pytest.mark.parametrize("validation, split", [(False, "train"), (True, "test")])
def test_env_options_swap_in_the_validation_split(validation, split):
    cfg = compose_cfg(["env=webshop"])
    options = env_options(cfg.env, validation)
    assert options["split"] == split and "val_split" not in options
    env = make(cfg.env.name, **options)
    assert not env.reset(seed=0).done
