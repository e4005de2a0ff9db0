"""Every real config composes; typos and bad values fail at composition with the key named."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from gigpo.config import check, env_options, register_configs
from gigpo.envs import make

CONF = Path(__file__).resolve().parents[1] / "conf"
register_configs()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("algo, env, model, logger",
                         list(itertools.product(options("algo"), options("env"), options("model"), options("logger"))))
def test_every_group_combination_composes(algo, env, model, logger):
    overrides = [f"algo={algo}", f"env={env}", f"model={model}", f"logger={logger}"]
    if model == "hf":
        overrides.append("model.path=/models/qwen")
    cfg = compose_cfg(overrides)
    check(cfg)
    assert OmegaConf.missing_keys(cfg) == set()


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose_cfg([f"+experiment={experiment}", "model.path=/models/qwen"])
    check(cfg)
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
    ("algo=ppo", "algo"),
])
def test_typos_fail_at_composition(override, culprit):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg([override])
    assert culprit in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("override, culprit", [
    ("algo.name=ppo", "algo.name"),
    ("algo.mode=std", "algo.mode"),
    ("logger.mode=sometimes", "logger.mode"),
    ("env.groups=0", "env.groups"),
    ("algo.gamma=1.5", "algo.gamma"),
])
def test_bad_values_fail_the_check(override, culprit):
    with pytest.raises(ValueError, match=culprit):
        check(compose_cfg([override]))


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
