"""The prompting rows of the paper's Table 1: mode=eval without a checkpoint (the model as loaded,
model=tiny and model=hf) and the ReAct prompt (env.prompt_style=react)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gigpo.checks import check
from gigpo.config import register_configs
from gigpo.envs import prompt_renderer
from gigpo.envs.prompts import View

ROOT = Path(__file__).resolve().parents[1]
EVAL = ["mode=eval", "env.val_episodes=4", "logger=none"]


register_configs()


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_eval_without_checkpoint_evaluates_the_tiny_model_as_loaded_into_a_run_folder(tmp_path):
    from gigpo.analysis.load import load_runs

    out = run([*EVAL, f"run_dir={tmp_path}"])
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["checkpoint"] is None and result["iteration"] == 0 and result["val/episodes"] == 4
    [loaded] = load_runs(tmp_path)
    assert loaded.method == "Prompting" and loaded.finished and loaded.final["val/success"] == result["val/success"]
    # The same seed gives the same model and the same episodes: the row repeats exactly.
    again = tmp_path / "again"
    assert run([*EVAL, f"run_dir={again}"]).returncode == 0
    assert json.loads((again / "eval.json").read_text()) == result



def test_eval_without_checkpoint_refuses_a_training_run_folder(tmp_path):
    from hydra import compose, initialize_config_dir

    from gigpo.train import evaluate_as_loaded

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[*EVAL, f"run_dir={tmp_path}"])
    with pytest.raises(FileExistsError, match="holds a training run"):
        evaluate_as_loaded(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]  # nothing written


def test_eval_checkpoint_none_evaluates_a_local_hf_model(tmp_path):
    import torch

    from gigpo.config import ModelConfig
    from gigpo.policy.model import build_tiny
    from gigpo.policy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(["task: push X onto O <action>up</action> left right down"] * 50, 300)
    tokenizer.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}<|assistant|>"
    torch.manual_seed(0)
    checkpoint = tmp_path / "hf_model"
    build_tiny(ModelConfig(), tokenizer).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    out = run([*EVAL, "checkpoint=none", "model=hf", f"model.path={checkpoint}", "model.dtype=float32",
               "model.max_response_tokens=8", f"run_dir={tmp_path / 'eval'}"])
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["checkpoint"] is None and result["val/episodes"] == 4 and "val/success/sokoban" in result
    config = OmegaConf.load(tmp_path / "eval" / "config.yaml")
    assert config.model.path == str(checkpoint) and config.checkpoint == "none"


def _env_cfg(name: str, k: int, **extra):
    from gigpo.config import ENV_SCHEMAS

    return OmegaConf.merge(OmegaConf.structured(ENV_SCHEMAS[name]),
                           {"prompt_style": "react", "react_examples": k, **extra})


def _view(step: int = 0):
    return View(0, 0, 0, step, "find a red dress", "the page", ["search[<your query>]"], [])


@pytest.mark.parametrize("k", [1, 2])
def test_react_prompt_puts_k_solved_expert_episodes_before_the_plain_prompt(k):
    cfg = _env_cfg("webshop", k)
    react = prompt_renderer(cfg)(_view())
    plain = prompt_renderer(OmegaConf.merge(cfg, {"prompt_style": "plain"}))(_view())
    assert react.endswith("\n\n" + plain)
    assert react.count("(task completed)") == k and f"Example {k}." in react and f"Example {k + 1}." not in react
    # Each example is the expert's episode: it searches first and buys last.
    first = react.split("Example 1.")[1].split("Example 2.")[0]
    answers = [line for line in first.splitlines() if line.startswith("Answer: ")]
    assert answers[0].startswith("Answer: <action>search[") and answers[-1] == "Answer: <action>click[buy now]</action>"


def test_react_examples_replay_the_sokoban_solver_and_win():
    from gigpo.envs.render import expert_episode

    task, pairs, last, won = expert_episode("sokoban", 0, easy=True, max_steps=8)
    assert won and 1 <= len(pairs) <= 8 and "√" in last
    cfg = _env_cfg("sokoban", 1, easy=True, max_steps=8, compact_prompt=True)
    assert f"Answer: <action>{pairs[0][1]}</action>" in prompt_renderer(cfg)(_view())


def test_react_is_refused_for_an_env_without_an_expert():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=["env=gridnav", "env.prompt_style=react"])
    with pytest.raises(ValueError, match="gridnav.*no expert_policy"):
        check(cfg, runtime=False)


def test_react_examples_for_alfworld_are_walkthrough_episodes():
    if sys.version_info >= (3, 13):
        pytest.skip("textworld 1.7 does not run on Python 3.13+")
    pytest.importorskip("textworld", reason="textworld not installed (pip install 'gigpo[alfworld]')")
    from gigpo.data import alfworld_data_dir

    try:
        alfworld_data_dir()
    except FileNotFoundError as error:
        pytest.skip(f"ALFWorld game data absent: {error}")
    prompt = prompt_renderer(_env_cfg("alfworld", 1))(_view())
    example = prompt.split("Example 1.")[1].split("Now your episode.")[0]
    assert example.count("Answer: <action>") >= 2 and "(task completed)" in example
    assert example.lstrip().startswith("Task: ")


def test_react_evaluation_refuses_examples_that_do_not_fit_the_prompt(tmp_path):
    from hydra import compose, initialize_config_dir

    from gigpo.train import evaluate_as_loaded

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[*EVAL, "env.prompt_style=react", "model.max_prompt_tokens=40",
                                           f"run_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"examples \(env.react_examples\) take \d+ tokens, model.max_prompt_tokens=40") \
            as refused:
        evaluate_as_loaded(cfg)
    assert not (tmp_path / "metrics.jsonl").exists()
    # Room for the examples but not for the prompt after them: every prompt is cut, found after the episodes.
    tokens = int(str(refused.value).split(" take ")[1].split(" tokens")[0])
    cfg.model.max_prompt_tokens = tokens + 5
    with pytest.raises(ValueError, match=r"100.0% of the prompts reached model.max_prompt_tokens"):
        evaluate_as_loaded(cfg)
    assert not (tmp_path / "metrics.jsonl").exists()
