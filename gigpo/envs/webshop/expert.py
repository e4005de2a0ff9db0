"""A scripted expert that knows the goal's product: for tests, benchmarks and sanity checks.

It searches the instruction (without the price clause), pages through the results until the
goal's asin is listed, opens it, clicks each goal option value the product offers, and buys.
"""

from __future__ import annotations

from gigpo.envs.webshop.env import WebShopEnv


def expert_query(goal: dict) -> str:
    """The instruction text up to ", and price lower than"."""
    return goal["instruction"].split(", and price lower than")[0]


def expert_action(env: WebShopEnv) -> str:
    """The expert's next action in ``env``'s current state."""
    s, goal = env.state, env.goal
    if s.page == "search":
        return f"search[{expert_query(goal)}]"
    if s.page == "results":
        if goal["asin"] in env.page_asins():
            return f"click[{goal['asin']}]"
        return "click[next >]"  # invalid on the last page: the expert then runs out of steps
    if s.page != "item" or s.asin != goal["asin"]:
        return "click[< prev]"
    wanted = {o.lower() for o in goal["goal_options"]}
    for kind, values in env.catalog.by_asin[s.asin]["options"].items():
        for value in values:
            if value in wanted and s.options.get(kind) != value:
                return f"click[{value}]"
    return "click[buy now]"
