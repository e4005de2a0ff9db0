"""Print the policy's full prompt at chosen steps of one episode, to diff against the paper code's.

    python -m gigpo.envs.render alfworld --game 0 --steps 0,3
    python -m gigpo.envs.render webshop --game 7 --steps 0,2 --split test
    python -m gigpo.envs.render alfworld --game 0 --steps 3 --template paper_alfworld.txt \
        --template-first paper_alfworld_no_his.txt

The episode is played by a known-good policy so later steps show realistic pages: ALFWorld's
stored walkthrough (the game file's "walkthrough"), WebShop's scripted expert. ``--game N`` is
the reset seed (ALFWorld train split: game ``order[N]``). The prompt is rendered exactly as
training renders it (``gigpo.envs.prompt_renderer``, history of the last ``--history-len`` steps);
``--template``/``--template-first`` take the same files as ``env.prompt_template`` and
``env.prompt_template_first``.

``react_examples`` renders the k in-context example trajectories of ``env.prompt_style=react``
(ReAct, Yao et al. 2023) from the same known-good policies: each env module's ``expert_policy``.
"""

from __future__ import annotations

import argparse
from functools import lru_cache
from types import SimpleNamespace

from gigpo.envs import env_module, make, prompt_renderer
from gigpo.envs.prompts import play_episode

POLICIES = ("alfworld", "webshop")
"""Envs the command line renders; each module's ``expert_policy(env, first_step)`` plays the episode."""
REACT_MAX_TRIES = 20
"""Episodes tried per example wanted: an expert that fails (a WebShop goal past the last results
page) gives no example; after k * REACT_MAX_TRIES tries the build stops, naming the env."""


def expert_episode(env_name: str, seed: int, **env_options) -> tuple[str, list[tuple[str, str]], str, bool]:
    """(task, [(observation, action), ...], final observation, won) of the expert's episode of ``seed``
    (at most ``env_options["max_steps"]`` steps)."""
    env = make(env_name, **env_options)
    try:
        step = env.reset(seed)
        task = step.info.get("task", "")
        act = env_module(env_name).expert_policy(env, step)
        pairs: list[tuple[str, str]] = []
        for t in range(env_options["max_steps"]):
            if step.done:
                break
            action = act(t)
            pairs.append((step.observation, action))
            step = env.step(action)
        return task, pairs, step.observation, bool(step.won)
    finally:
        env.close()


@lru_cache(maxsize=8)
def _react_block(env_name: str, k: int, options: tuple) -> str:
    examples, seed = [], 0
    while len(examples) < k:
        if seed >= k * REACT_MAX_TRIES:
            raise RuntimeError(f"env.prompt_style=react: the {env_name} expert won {len(examples)} of {seed} "
                               f"training episodes, fewer than env.react_examples={k}")
        task, pairs, last, won = expert_episode(env_name, seed, **dict(options))
        seed += 1
        if not won:
            continue
        lines = [f"Example {len(examples) + 1}.", f"Task: {task}"]
        for observation, action in pairs:
            lines += [f"Observation: {observation}", f"Answer: <action>{action}</action>"]
        lines += [f"Observation: {last}", "(task completed)"]
        examples.append("\n".join(lines))
    return "\n\n".join(["Solved examples of this task (each observation, then the expert's action; the examples "
                          "show the action only: answer in the format asked for below):", *examples,
                          "Now your episode."])


def react_examples(env_cfg, options: dict) -> str:
    """The ReAct prompt's examples: the first ``env_cfg.react_examples`` won episodes of the env's
    expert on training seeds 0, 1, ... (``options``: the env constructor's kwargs, training split),
    each as its task and alternating observation / ``<action>`` lines. Built once per process."""
    return _react_block(env_cfg.name, int(env_cfg.react_examples), tuple(sorted(options.items())))


def prompts_at(env_name: str, seed: int, steps: list[int], env_cfg, **env_options) -> dict[int, str]:
    """{t: prompt at step t} for the episode of ``seed``, acting with the env's known-good policy."""
    env = make(env_name, **env_options)
    policy: list = []  # built from the first step (ALFWorld's walkthrough is in its game file)
    render = prompt_renderer(env_cfg)
    try:
        out = {}
        for view, step in play_episode(env, seed, env_cfg.history_len, max(steps) + 1, lambda t, _: policy[0](t)):
            if not policy:
                policy.append(env_module(env_name).expert_policy(env, step))
            if view.step in steps:
                out[view.step] = render(view)
        return out
    finally:
        env.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("env", choices=sorted(POLICIES))
    parser.add_argument("--game", type=int, default=0, help="reset seed")
    parser.add_argument("--steps", default="0,3", help="comma-separated 0-based steps")
    parser.add_argument("--split", default="train")
    parser.add_argument("--history-len", type=int, default=2)
    parser.add_argument("--compact", action="store_true", help="the tiny model's compact prompt")
    parser.add_argument("--template", default=None, help="env.prompt_template file")
    parser.add_argument("--template-first", default=None, help="env.prompt_template_first file")
    parser.add_argument("--data-dir", default=None, help="env.data_dir")
    args = parser.parse_args(argv)
    env_cfg = SimpleNamespace(name=args.env, history_len=args.history_len, compact_prompt=args.compact,
                              prompt_template=args.template, prompt_template_first=args.template_first)
    options = {"split": args.split}
    if args.data_dir:
        options["data_dir"] = args.data_dir
    steps = sorted({int(s) for s in args.steps.split(",")})
    for t, prompt in prompts_at(args.env, args.game, steps, env_cfg, **options).items():
        print(f"===== {args.env} game {args.game} step {t} =====")
        print(prompt)


if __name__ == "__main__":
    main()
