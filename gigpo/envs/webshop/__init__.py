"""WebShop (Yao et al. 2022) as a gigpo text environment, with its prompts.

``WebShopEnv`` runs over the benchmark's JSON files (``data_dir``) or, by default, over a
seeded generated catalog of the same schema (``catalog.py``); see ``env.py`` for pages,
actions and anchors and ``reward.py`` for the score.
"""

from __future__ import annotations

from dataclasses import replace

from gigpo.envs.prompts import PromptSet, View, project_tagged
from gigpo.envs.webshop.data import SPLITS
from gigpo.envs.webshop.env import SEARCH_ACTION, SEP, WebShopEnv


def check_options(env) -> None:
    """Splits, goals, reward mode and catalog size the env accepts (checked at composition)."""
    if env.goals not in ("human", "synthetic"):
        raise ValueError(f"env.goals={env.goals!r} is not one of ['human', 'synthetic']")
    for key in ("split", "val_split"):
        if env[key] not in SPLITS:
            raise ValueError(f"env.{key}={env[key]!r} is not one of {sorted(SPLITS)}")
    if env.reward_mode not in ("success", "score"):
        raise ValueError(f"env.reward_mode={env.reward_mode!r} is not one of ['success', 'score']")
    if env.num_products < 1:
        raise ValueError(f"env.num_products={env.num_products!r} must be >= 1")

# Characters of an untagged answer sent to the env (the paper code's WebShop fallback; the env
# then finds no action in them).
UNTAGGED_TAIL_CHARS = 20

# The paper code's prompt structure (verl-agent, prompts/webshop.py) in this project's words:
# a no-history template at step 0, then one with the step count and the numbered history.
PROMPT_FIRST = """You are an expert autonomous shopping agent in WebShop, a text-based e-commerce environment.
Your task is to: {task_description}.
Your current observation is: {current_observation}.
The admissible actions in this situation are:
[
{admissible_actions}
].

It is your turn to take one action for this step.
First think step by step about the current situation and about which admissible action best serves the shopping goal; enclose that reasoning within <think> </think> tags.
Then choose one admissible action for this step and enclose it within <action> </action> tags ("search[<your query>]" means search[...] with a query you write)."""

PROMPT = """You are an expert autonomous shopping agent in WebShop, a text-based e-commerce environment.
Your task is to: {task_description}.
Prior to this step, you have already taken {step_count} step(s). Here are your last {history_length} observations and the action you took after each: {action_history}
You are now at step {current_step} and your current observation is: {current_observation}.
The admissible actions in this situation are:
[
{admissible_actions}
].

It is your turn to take one action for this step.
First think step by step about the current situation and about which admissible action best serves the shopping goal; enclose that reasoning within <think> </think> tags.
Then choose one admissible action for this step and enclose it within <action> </action> tags ("search[<your query>]" means search[...] with a query you write)."""

COMPACT_PROMPT = "task: {task}\nlast: {recent_actions}\npage: {observation}\nactions: {admissible}\naction:"


def paper_page(observation: str, task: str) -> str:
    """The page as the paper code shows it: the parts after the instruction, each quoted,
    joined by " [SEP] " (the whole page when the instruction is not found)."""
    parts = observation.split(SEP)
    if task not in parts:
        return observation
    return SEP.join(f"'{part}'" for part in parts[parts.index(task) + 1:])


def paper_admissible(admissible: list[str]) -> str:
    """Admissible actions as the paper code lists them for WebShop: quoted, a comma after each,
    one per line."""
    return "\n".join(f"'{action}'," for action in admissible)


def project_action(response: str, admissible: list[str]) -> tuple[str, bool]:
    """``env.projection=paper``: the paper code's WebShop projection (``prompts.project_tagged``):
    format-only validity (tags, <think></think>, no CJK); ``admissible`` is not consulted."""
    return project_tagged(response, UNTAGGED_TAIL_CHARS)


def paper_view(view: View) -> View:
    """The view as the paper code shows it: pages (current and in the history) as ``paper_page``."""
    return replace(view, observation=paper_page(view.observation, view.task),
                   history=[(paper_page(o, view.task), a) for o, a in view.history])


PROMPTS = PromptSet(full=PROMPT, compact=COMPACT_PROMPT, first=PROMPT_FIRST, paper_view=paper_view,
                    admissible_format=paper_admissible)
"""The policy's prompts: ``COMPACT_PROMPT`` for tiny models, else ``PROMPT_FIRST`` without history
and ``PROMPT`` with it; full prompts and user templates show pages as ``paper_page`` and actions as
``paper_admissible``, as the paper code does."""

def decodable_actions(view: View) -> list[str]:
    """Concrete actions for constrained decoding: a model that can only pick from a list cannot
    write a query, so the search placeholder becomes one search with the instruction's words
    (up to its price clause), the query a shopper would type first."""
    query = view.task.split(", and price lower than")[0].strip()
    return [f"search[{query}]" if a == SEARCH_ACTION else a for a in view.admissible]


__all__ = ["COMPACT_PROMPT", "PROMPT", "PROMPT_FIRST", "WebShopEnv", "decodable_actions", "project_action",
           "PROMPTS"]


def expert_policy(env: WebShopEnv, first):
    """A known-good policy for ``env`` just reset: the scripted expert that knows the goal's product
    (``expert.py``; the benchmark's human demonstrations are not shipped here)."""
    from gigpo.envs.webshop.expert import expert_action

    return lambda t: expert_action(env)
