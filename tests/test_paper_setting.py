"""The paper experiments compose to the paper's setting: pins, prompt format vs parser, projection
in the runner, validation draws and the history/template checks at composition."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gigpo.config import env_options, register_configs
from gigpo.checks import ALFWORLD_MAX_PYTHON, check
from gigpo.envs import ENVS, make, projection, prompt_renderer
from gigpo.envs.alfworld import project_action as alfworld_projection
from gigpo.envs.base import Step
from gigpo.envs.prompts import View
from gigpo.runner import GroupRunner
from gigpo.train import validation_seeds

CONF = Path(__file__).resolve().parents[1] / "conf"
register_configs()
PAPER_EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*_qwen*.yaml"))


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("experiment", [e for e in PAPER_EXPERIMENTS if e.startswith("alfworld")])
def test_alfworld_experiments_pin_the_reference_settings(experiment):
    cfg = compose_cfg([f"experiment={experiment}", "model.path=/models/qwen"])
    check(cfg, runtime=False)  # GPU experiment files: composition only on this CPU machine
    assert (cfg.algo.mode, cfg.algo.episode_stats, cfg.algo.entropy_coef) == ("mean_std", "step", 0.001)
    assert (cfg.train.weight_decay, cfg.train.val_every) == (0.01, 5)
    assert (cfg.env.val_episodes, cfg.env.val_pool, cfg.env.projection) == (128, 140, "paper")
    assert cfg.env.shuffle_seed is not None


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_paper_prompt_asks_for_what_the_parser_accepts(experiment, tmp_path, monkeypatch):
    """Render the experiment's prompt on a real env, answer in the format the prompt asks for,
    and check the experiment's projection accepts the answer."""
    monkeypatch.setenv("GIGPO_CACHE", str(tmp_path))
    cfg = compose_cfg([f"experiment={experiment}", "model.path=/models/qwen"])
    check(cfg, runtime=False)
    assert cfg.env.projection == "paper" and not cfg.env.compact_prompt and not cfg.model.constrained
    options = env_options(cfg.env, validation=True)
    if cfg.env.name == "alfworld":
        if sys.version_info >= ALFWORLD_MAX_PYTHON:
            pytest.skip("textworld 1.7 does not run on Python 3.13+ (PEP 667); env=alfworld is refused there")
        pytest.importorskip("textworld")
        from gigpo.data import alfworld_data_dir

        try:
            alfworld_data_dir()
        except FileNotFoundError as error:
            pytest.skip(f"ALFWorld game data absent: {error}")
    env = make(cfg.env.name, **options)
    try:
        step = env.reset(0)
        history = []
        for t in range(2):
            view = View(0, 0, 0, t, step.info["task"], step.observation, list(step.admissible),
                        history[-cfg.env.history_len:])
            prompt = prompt_renderer(cfg.env)(view)
            assert "<think> </think>" in prompt and "<action> </action>" in prompt
            admissible = [a for a in step.admissible if a != "help"]
            action = "search[a red mug]" if admissible[0] == "search[<your query>]" else admissible[0]
            assert f"'{admissible[0]}'" in prompt
            answer = f"<think>I will do {action}.</think>\n<action>{action}</action>"
            projected, valid = projection(cfg.env.name, cfg.env.projection)(answer, step.admissible)
            assert valid and projected == action.lower()
            history.append((step.observation, projected))
            step = env.step(projected)
            assert step.info["valid"]
        assert "Prior to this step, you have already taken 1 step(s)" in prompt
    finally:
        env.close()


def test_history_without_a_history_field_fails_at_composition(tmp_path):
    check(compose_cfg([]))  # the tiny default: compact prompts show history now
    template = tmp_path / "no_history.txt"
    template.write_text("{task}\n{observation}\n{admissible}")
    with pytest.raises(ValueError, match="env.history_len=2"):
        check(compose_cfg([f"env.prompt_template={template}"]))
    check(compose_cfg([f"env.prompt_template={template}", "env.history_len=0"]))
    with pytest.raises(ValueError, match="unknown fields"):
        (tmp_path / "typo.txt").write_text("{task} {histroy}")
        check(compose_cfg([f"env.prompt_template={tmp_path / 'typo.txt'}"]))


def test_paper_projection_rejects_constrained_decoding_and_sokoban():
    with pytest.raises(ValueError, match="constrained"):
        check(compose_cfg(["env=alfworld", "env.projection=paper"]))
    with pytest.raises(ValueError, match="no paper projection"):
        check(compose_cfg(["env.projection=paper", "model.constrained=false"]))


def test_validation_draws_a_seeded_random_subset():
    cfg = compose_cfg(["experiment=webshop_qwen1.5b", "model.path=/models/qwen"])
    seeds = validation_seeds(cfg.env)
    assert len(seeds) == len(set(seeds)) == 128 and all(0 <= s < 500 for s in seeds)
    assert seeds == validation_seeds(cfg.env) and seeds != list(range(128))
    assert validation_seeds(cfg.env, evaluate=True) == list(range(500))
    legacy = OmegaConf.create({"val_pool": 0, "val_episodes": 3, "val_seed_offset": 10})
    assert validation_seeds(legacy) == [10, 11, 12]


# ---- the runner applies the env's projection --------------------------------------------------

project_action = alfworld_projection


class EchoEnv:
    """Admits only "look"; reports every other action as not valid (like ALFWorld's engine)."""

    max_steps = 2

    def reset(self, seed):
        self.t = 0
        return Step("start", "start", ["look"])

    def step(self, action):
        self.t += 1
        return Step(action, action, ["look"], done=self.t >= self.max_steps, info={"valid": action == "look"})

    def close(self):
        pass


@pytest.mark.parametrize("mode, expected", [("paper", [True, False]), ("strict", [False, True])])
def test_runner_uses_the_env_projection(mode, expected):
    ENVS["echo"] = f"{EchoEnv.__module__}:EchoEnv"
    answers = iter(["<think>t</think><action>Go To Desk 7</action>", "<action>look</action>"])
    try:
        with GroupRunner("echo", {}, num_workers=0, projection=mode) as runner:
            records = runner.run([0], 1, lambda views: [(next(answers), None) for _ in views])
    finally:
        del ENVS["echo"]
    # paper: a non-admissible command is valid (format only), a missing <think> is not;
    # strict: the reverse
    assert [r.valid for r in records] == expected
    assert records[0].action == ("go to desk 7" if mode == "paper" else "Go To Desk 7")
