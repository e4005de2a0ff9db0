"""ALFWorld (text mode) on the real TextWorld PDDL engine, offline.

Games are the ``game.tw-pddl`` files under ``json_2.1.1/<split>/<task folder>/<trial>/``, listed
by a sorted glob (ALFWorld's own discovery wants ``traj_data.json``, which the train split here
lacks). Each game file embeds its PDDL domain and its grammar with the goal text already filled
in, so the engine is started from the game file itself, exactly as ALFWorld's
``AlfredTWEnv.init_env`` does; the package's ``alfworld.info.ALFRED_PDDL_PATH`` / ``..._TWL2_PATH``
are the templates those embedded copies were generated from. The env is wrapped with ALFWorld's
``AlfredDemangler`` (readable object names such as "desk 1") and ``AlfredInfos``.

Deliberate choices:

- The first observation is the engine's raw reset text, as in the paper code: the
  "-= Welcome to TextWorld, ALFRED! =-" banner, the room and the "Your task is to: ..." sentence
  are kept; the task is also parsed into ``info["task"]`` for the prompt's history template.
- The anchor is the current observation text, no history (as the paper does for ALFWorld).
- On the train split ``reset(seed)`` plays game ``order[seed % n]``, ``order`` a fixed
  permutation of the sorted games drawn with ``shuffle_seed``: consecutive seeds (one training
  iteration) see games of mixed task types, and every game comes once per cycle of n seeds.
  Validation splits keep the sorted order (validation draws its seeds at random itself).
- ``admissible`` is the engine's full admissible list, "look", "inventory" and "examine ..."
  included.
- An action that is not admissible is still passed to the engine, which answers
  "Nothing happens." without changing the state; ``info["valid"]`` is False and it counts as a
  step.
- Reward is ``success_reward`` on the winning step, 0 otherwise; done on a win or at
  ``max_steps``.

Speed, measured here with `python -m benchmarks.envs` on one core: 12.0 steps/s over 20-step
episodes, resets included (the data README reports 6-8 steps/s); two worker processes gave 1.96x.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from gigpo.data import GAMES_FOLDER, alfworld_data_dir
from gigpo.envs.base import Step
from gigpo.envs.prompts import PromptSet, project_tagged

# Env split name -> folder under json_2.1.1.
SPLITS = {"train": "train", "eval_in_distribution": "valid_seen", "eval_out_of_distribution": "valid_unseen"}


def check_options(env) -> None:
    """``env.split`` and ``env.val_split`` name known splits (checked at composition)."""
    for key in ("split", "val_split"):
        if env[key] not in SPLITS:
            raise ValueError(f"env.{key}={env[key]!r} is not one of {sorted(SPLITS)}")


# Game folder prefix -> the paper's task type name.
TASK_TYPES = {
    "pick_and_place_simple": "pick",
    "look_at_obj_in_light": "look",
    "pick_clean_then_place_in_recep": "clean",
    "pick_heat_then_place_in_recep": "heat",
    "pick_cool_then_place_in_recep": "cool",
    "pick_two_obj_and_place": "pick2",
}

BANNER = "-= Welcome to TextWorld, ALFRED! =-"
TASK_MARKER = "Your task is to: "

# Characters of an untagged answer sent to the engine (the paper code's fallback).
UNTAGGED_TAIL_CHARS = 30

# The paper code's prompt structure (verl-agent, prompts/alfworld.py) in this project's words:
# a no-history template over the raw reset text at step 0, then a template with the task, the
# step count, the numbered history and the current observation. Field names: prompts.FIELDS.
PROMPT_FIRST = """You are an expert agent acting in ALFRED, a text-based embodied household environment.
Your current observation is: {current_observation}
The admissible actions in this situation are: [{admissible_actions}].

It is your turn to act. First think step by step about the current situation, and enclose that reasoning within <think> </think> tags.
Then choose one admissible action for this step and enclose it within <action> </action> tags.
"""

PROMPT = """You are an expert agent acting in ALFRED, a text-based embodied household environment. Your task is to: {task_description}
Prior to this step, you have already taken {step_count} step(s). Here are your last {history_length} observations and the action you took after each: {action_history}
You are now at step {current_step} and your current observation is: {current_observation}
The admissible actions in this situation are: [{admissible_actions}].

It is your turn to act. First think step by step about the current situation, and enclose that reasoning within <think> </think> tags.
Then choose one admissible action for this step and enclose it within <action> </action> tags.
"""

COMPACT_PROMPT = "task: {task}\nlast: {recent_actions}\nobs: {observation}\nactions: {admissible}\n"


def project_action(response: str, admissible: list[str]) -> tuple[str, bool]:
    """``env.projection=paper``: the paper code's ALFWorld projection (``prompts.project_tagged``):
    lower-cased text of the first ``<action>`` pair, valid iff tagged, with ``<think>``/``</think>``
    and no CJK; ``admissible`` is not consulted (the engine answers "Nothing happens.")."""
    return project_tagged(response, UNTAGGED_TAIL_CHARS)


def task_type(game_file: Path) -> str:
    """The paper's task type (pick, look, clean, heat, cool, pick2) of a game, from its folder."""
    folder = game_file.parent.parent.name
    for prefix, name in TASK_TYPES.items():
        if folder.startswith(prefix):
            return name
    raise ValueError(f"alfworld: unknown task type for game folder {folder!r}")


def list_games(data_dir: Path, split: str) -> list[Path]:
    """Sorted game files of ``split`` (an env split name, see ``SPLITS``)."""
    if split not in SPLITS:
        raise ValueError(f"alfworld split: unknown split {split!r}; known: {sorted(SPLITS)}")
    split_dir = data_dir / GAMES_FOLDER / SPLITS[split]
    games = sorted(split_dir.glob("*/*/game.tw-pddl"))
    if not games:
        raise FileNotFoundError(f"alfworld: no games for split {split!r} in {split_dir}/*/*/game.tw-pddl")
    return games


def split_intro(feedback: str) -> tuple[str, str]:
    """(room text, task) of the first observation: banner removed, task sentence cut out."""
    text = feedback.replace(BANNER, "").strip()
    observation, _, task = text.partition(TASK_MARKER)
    return observation.strip(), task.strip()


class AlfWorldEnv:
    """One ALFWorld game at a time; ``reset(seed)`` plays game ``order[seed % len(games)]``.

    split:          ``train``, ``eval_in_distribution`` (valid_seen) or
                    ``eval_out_of_distribution`` (valid_unseen).
    data_dir:       folder holding ``json_2.1.1``; None finds or unpacks it (gigpo.data).
    max_steps:      step limit of an episode.
    success_reward: reward of the winning step.
    num_games:      use only the first ``num_games`` games of the sorted list (None: all).
    shuffle_seed:   train split: seed of the fixed game permutation ``order``; None (and the
                    validation splits): ``order`` is the sorted list.
    """

    def __init__(
        self,
        split: str = "train",
        data_dir: str | None = None,
        max_steps: int = 50,
        success_reward: float = 10.0,
        num_games: int | None = None,
        shuffle_seed: int | None = 0,
    ):
        self.games = list_games(alfworld_data_dir(data_dir), split)[:num_games]
        self.order = list(range(len(self.games)))
        if split == "train" and shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(self.order)
        self.split = split
        self.max_steps = max_steps
        self.success_reward = success_reward
        self._engine = None
        self._loaded: Path | None = None
        self._task = ""
        self._task_type = ""
        self._admissible: list[str] = []
        self.steps = 0
        self.done = True

    def _load(self, game_file: Path) -> None:
        """Start the engine on ``game_file``, reusing it when the same game is replayed."""
        if self._loaded == game_file:
            return
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

        try:
            if self._engine is None:
                request_infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
                self._engine = textworld.start(str(game_file), request_infos,
                                               wrappers=[AlfredDemangler(), AlfredInfos])
            else:
                self._engine.load(str(game_file))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            self.close()
            raise ValueError(f"alfworld: corrupt game file {game_file} ({type(error).__name__}: {error}); "
                             "delete it or re-extract the split's archive") from error
        except (KeyError, TypeError) as error:  # a file missing fields, or a bug: name the file, advise nothing
            self.close()
            raise ValueError(f"alfworld: loading game file {game_file} failed ({type(error).__name__}: {error})") \
                from error
        self._loaded = game_file

    def _observe(self, observation: str, reward: float, won: bool, valid: bool) -> Step:
        return Step(
            observation=observation,
            anchor=observation,
            admissible=list(self._admissible),
            reward=reward,
            done=self.done,
            won=won,
            info={"task": self._task, "task_type": self._task_type, "valid": valid,
                  "game_file": str(self._loaded)},
        )

    def reset(self, seed: int) -> Step:
        game_file = self.games[self.order[seed % len(self.games)]]
        self._load(game_file)
        state = self._engine.reset()
        observation = state.feedback.strip()
        self._task = split_intro(state.feedback)[1]
        self._task_type = task_type(game_file)
        self._admissible = list(state["admissible_commands"])
        self.steps = 0
        self.done = False
        return self._observe(observation, 0.0, won=False, valid=True)

    def step(self, action: str) -> Step:
        if self.done:
            raise RuntimeError("alfworld: step() after the episode ended; call reset(seed)")
        valid = action in self._admissible
        state, _, _ = self._engine.step(action)
        self.steps += 1
        won = bool(state["won"])
        self._admissible = list(state["admissible_commands"])
        self.done = won or self.steps >= self.max_steps
        return self._observe(state.feedback.strip(), self.success_reward if won else 0.0, won=won, valid=valid)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
            self._loaded = None


PROMPTS = PromptSet(full=PROMPT, compact=COMPACT_PROMPT, first=PROMPT_FIRST)
"""The policy's prompts (``prompts.renderer`` chooses among them)."""

def expert_policy(env: AlfWorldEnv, first: Step):
    """A known-good policy for ``env`` just reset: the game file's stored expert walkthrough, then
    "look" (ReAct examples and ``python -m gigpo.envs.render``)."""
    walkthrough = json.loads(Path(first.info["game_file"]).read_text())["walkthrough"]
    return lambda t: walkthrough[t] if t < len(walkthrough) else "look"
