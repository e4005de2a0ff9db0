"""WebShop (Yao et al. 2022) as a gigpo text environment, with its prompts.

``WebShopEnv`` runs over the benchmark's JSON files (``data_dir``) or, by default, over a
seeded generated catalog of the same schema (``catalog.py``); see ``env.py`` for pages,
actions and anchors and ``reward.py`` for the score.
"""

from __future__ import annotations

from gigpo.envs.prompts import View, render
from gigpo.envs.webshop.env import SEARCH_ACTION, WebShopEnv

PROMPT = """You are an expert autonomous agent shopping on WebShop. Your task: {task}
Search for products, open one, choose the options the task asks for (size, color, flavor, ...) and buy it with "click[buy now]". It must match the task's attributes, options and price limit.

Your last steps:
{history}

Current page (step {step}):
{observation}

Admissible actions: {admissible}
("search[<your query>]" means search[...] with a query you write.)

Think about which product and options fit the task inside <think>...</think>, then give exactly one action inside <action>...</action>, e.g. <action>search[gluten free protein bar]</action> or <action>click[buy now]</action>."""

COMPACT_PROMPT = "task: {task}\npage: {observation}\nactions: {admissible}\naction:"


def render_prompt(view: View, compact: bool) -> str:
    """The policy's prompt for ``view``: ``COMPACT_PROMPT`` for tiny models, else ``PROMPT``."""
    return render(COMPACT_PROMPT if compact else PROMPT, view)


def decodable_actions(view: View) -> list[str]:
    """Concrete actions for constrained decoding: a model that can only pick from a list cannot
    write a query, so the search placeholder becomes one search with the instruction's words
    (up to its price clause), the query a shopper would type first."""
    query = view.task.split(", and price lower than")[0].strip()
    return [f"search[{query}]" if a == SEARCH_ACTION else a for a in view.admissible]


__all__ = ["COMPACT_PROMPT", "PROMPT", "WebShopEnv", "decodable_actions", "render_prompt"]
