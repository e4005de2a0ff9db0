"""Text-mode WebShop (Yao et al. 2022), behaving like the benchmark's ``WebAgentTextEnv``.

Pages: search -> results (top 50 BM25 hits, 10 per page, ``Next >`` / ``< Prev``) -> item
(option values grouped by option type, ``Description`` / ``Features`` / ``Reviews`` /
``Attributes`` sub-pages, ``Buy Now``) -> ``Buy Now`` ends the episode with the purchase score.
Every page shows the instruction first and is flattened with `` [SEP] `` like the benchmark's
text observation (``observation_mode="text"``: no ``[clicked button]`` markers around chosen
options, those belong to its text_rich mode). The ``Attributes`` sub-page is hidden unless
``show_attrs`` (the benchmark's default hides it too).

Actions: ``search[query]`` (from any page, as the benchmark's text env allows) and ``click[x]``
where x is a button text, a product id on the results page or an option value on the item page,
case-insensitive. Anything else is invalid: ``info["valid"] = False``, the page is unchanged,
the step counts.
``admissible`` lists ``click[x]`` for every clickable (lower-cased, as the benchmark's
``get_available_actions``) plus the literal ``search[<your query>]`` when there is a search bar;
the env validates search actions itself, so ``search[anything]`` is accepted there.

Anchor (history-free): (page, query, results page number, asin, sub-page, sorted chosen
options); the same page reached by different paths has the same anchor.

Reward: ``reward_mode="success"`` gives ``success_reward`` when the score is 1 (else 0);
``"score"`` gives ``success_reward * score``. ``won`` is score == 1 (within 1e-6).

Goals: ``goals="human"`` plays the human instructions of ``split``; on the train split seed s
plays goal ``order[s % n]``, ``order`` a fixed permutation drawn with ``shuffle_seed`` (training
goals come at random, not in file order); test/dev keep the benchmark's order (validation draws
its seeds at random itself). ``goals="synthetic"`` draws a generated template goal with the
benchmark's weights, ``random.Random(seed)`` picking it, for every split (no held-out split).
``info["catalog"]`` is "synthetic" on the generated catalog and "real" on the benchmark's files;
``info["type_reward"]`` names the noun finder of the score ("spacy:<pipeline>" or "heuristic").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from gigpo.envs.base import Step
from gigpo.envs.webshop.catalog import ensure_catalog
from gigpo.envs.webshop.data import load_catalog
from gigpo.envs.webshop.reward import type_reward_source, webshop_score
from gigpo.envs.webshop.search import search_index

SEP = " [SEP] "
RESULTS_PER_PAGE = 10
SUB_PAGES = ("description", "features", "reviews", "attributes")
GOAL_MODES = ("human", "synthetic")
SEARCH_ACTION = "search[<your query>]"
_ACTION = re.compile(r"^\s*(search|click)\[(.*)\]\s*$", re.IGNORECASE | re.DOTALL)


@dataclass
class PageState:
    """Where the agent is: everything the next observation depends on besides the goal."""

    page: str = "search"  # search | results | item | sub | done
    query: str = ""
    page_num: int = 0
    asin: str = ""
    sub: str = ""
    options: dict[str, str] = field(default_factory=dict)


class WebShopEnv:
    """Seeded text WebShop over a real (``data_dir``) or generated (``num_products``) catalog.

    num_products: size of the generated catalog (ignored when ``data_dir`` is given).
    data_dir:     directory with the benchmark's JSON files (see ``data.py``).
    split:        "train" (goals 500-), "test" (goals 0-499) or "dev" (500-1499).
    max_steps:    the episode ends (done, reward 0) after this many actions.
    reward_mode:  "success" (``success_reward`` iff score == 1) or "score" (``success_reward * score``).
    seed:         the generated catalog's seed.
    cache_dir:    root for generated catalogs (default ``$GIGPO_CACHE`` or ``~/.cache/gigpo``).
    goals:        "human" (instructions, split by index) or "synthetic" (generated, weighted draws).
    shuffle_seed: train split, human goals: seed of the goal permutation; None: goal order.
    show_attrs:   show the item page's Attributes sub-page.
    """

    def __init__(self, num_products: int = 1000, data_dir: str | Path | None = None, split: str = "train",
                 max_steps: int = 15, reward_mode: str = "success", success_reward: float = 10.0,
                 seed: int = 0, cache_dir: str | Path | None = None, goals: str = "human",
                 shuffle_seed: int | None = 0, show_attrs: bool = False):
        if reward_mode not in ("success", "score"):
            raise ValueError(f"reward_mode: expected 'success' or 'score', got {reward_mode!r}")
        if goals not in GOAL_MODES:
            raise ValueError(f"goals: expected one of {list(GOAL_MODES)}, got {goals!r}")
        if max_steps < 1:
            raise ValueError(f"max_steps: must be >= 1, got {max_steps}")
        directory = data_dir if data_dir is not None else ensure_catalog(num_products, seed, cache_dir)
        self.catalog = load_catalog(directory)
        self.catalog_kind = "real" if data_dir is not None else "synthetic"
        self.goal_mode = goals
        self.goals = self.catalog.synthetic if goals == "synthetic" else self.catalog.split(split)
        self.weights = [goal["weight"] for goal in self.goals] if goals == "synthetic" else None
        self.order = list(range(len(self.goals)))
        if goals == "human" and split == "train" and shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(self.order)
        self.sub_pages = SUB_PAGES if show_attrs else tuple(p for p in SUB_PAGES if p != "attributes")
        self.index = search_index(self.catalog)
        self.max_steps = max_steps
        self.reward_mode = reward_mode
        self.success_reward = success_reward
        self.goal: dict = self.goals[0]
        self.state = PageState()
        self.steps = 0
        self.done = False
        self.score = 0.0
        self._clicks: dict[str, tuple[str, str]] = {}

    # ---- protocol -------------------------------------------------------------------------

    def reset(self, seed: int) -> Step:
        """Start goal ``order[seed mod len(goals)]`` (synthetic: a weighted draw seeded by ``seed``)
        on the search page."""
        if self.weights is not None:
            self.goal = random.Random(seed).choices(self.goals, weights=self.weights)[0]
        else:
            self.goal = self.goals[self.order[seed % len(self.goals)]]
        self.state = PageState()
        self.steps = 0
        self.done = False
        self.score = 0.0
        return self._step_result(0.0, valid=True, score=0.0, bought="")

    def step(self, action: str) -> Step:
        if self.done:
            raise RuntimeError("step() after the episode ended; call reset()")
        self.steps += 1
        valid, bought = self._apply(action)
        score = 0.0
        if bought:
            product = self.catalog.by_asin[bought]
            score = webshop_score(product, self.goal, product["price"], self.state.options)
            self.state = PageState(page="done", asin=bought, options=self.state.options)
            self.done, self.score = True, score
        won = score >= 1.0 - 1e-6
        reward = (self.success_reward * won) if self.reward_mode == "success" else self.success_reward * score
        self.done = self.done or self.steps >= self.max_steps
        return self._step_result(float(reward), valid=valid, score=score, bought=bought, won=won)

    def close(self) -> None:
        pass

    # ---- transitions ------------------------------------------------------------------------

    def _apply(self, action: str) -> tuple[bool, str]:
        """Apply ``action`` to ``self.state``; returns (valid, asin bought or "")."""
        match = _ACTION.match(action)
        if not match:
            return False, ""
        kind, arg = match.group(1).lower(), match.group(2).strip()
        s = self.state
        if kind == "search":
            if not arg or arg == "<your query>":
                return False, ""
            self.state = PageState(page="results", query=arg, page_num=1)
            return True, ""
        target = self._clicks.get(arg.lower())
        if target is None:
            return False, ""
        what, value = target
        if what == "back":
            self.state = PageState()
        elif what == "next":
            s.page_num += 1
        elif what == "prev":
            if s.page == "results":
                s.page_num -= 1
            elif s.page == "item":
                self.state = PageState(page="results", query=s.query, page_num=s.page_num)
            else:
                s.page, s.sub = "item", ""
        elif what == "product":
            self.state = PageState(page="item", query=s.query, page_num=s.page_num, asin=value)
        elif what == "sub":
            s.page, s.sub = "sub", value
        elif what == "buy":
            return True, s.asin
        else:  # an option value, ``what`` is its type
            s.options[what] = value
        return True, ""

    # ---- rendering --------------------------------------------------------------------------

    def _step_result(self, reward: float, valid: bool, score: float, bought: str, won: bool = False) -> Step:
        observation = self._render()
        admissible = [] if self.done else self._admissible()
        s = self.state
        anchor = (s.page, s.query, s.page_num, s.asin, s.sub, tuple(sorted(s.options.items())))
        info = {"task": self.goal["instruction"], "task_type": "webshop", "valid": valid, "score": score,
                "asin": bought, "goal_asin": self.goal["asin"], "steps": self.steps,
                "catalog": self.catalog_kind, "type_reward": type_reward_source()}
        return Step(observation, anchor, admissible, reward, self.done, won, info)

    def page_asins(self) -> list[str]:
        """The product ids listed on the current results page."""
        hits = self.index.search(self.state.query)
        start = (self.state.page_num - 1) * RESULTS_PER_PAGE
        return list(hits[start:start + RESULTS_PER_PAGE])

    def _render(self) -> str:
        """The page as text; also records its clickables in ``self._clicks`` (lower-cased)."""
        s, clicks = self.state, {}
        parts = ["Instruction:", self.goal["instruction"]]
        if s.page == "search":
            parts = ["WebShop", *parts, "Search"]
        elif s.page == "done":
            parts += ["Thank you for shopping with us!", "Your score (min 0.0, max 1.0)",
                      f"{self.score:.2f}"]
        elif s.page == "results":
            total = len(self.index.search(s.query))
            parts += ["Back to Search", f"Page {s.page_num} (Total results: {total})"]
            clicks["back to search"] = ("back", "")
            if s.page_num > 1:
                parts.append("< Prev")
                clicks["< prev"] = ("prev", "")
            if s.page_num * RESULTS_PER_PAGE < total:
                parts.append("Next >")
                clicks["next >"] = ("next", "")
            for asin in self.page_asins():
                product = self.catalog.by_asin[asin]
                parts += [asin, product["name"], product["price_tag"]]
                clicks[asin.lower()] = ("product", asin)
        else:
            product = self.catalog.by_asin[s.asin]
            parts += ["Back to Search", "< Prev"]
            clicks["back to search"], clicks["< prev"] = ("back", ""), ("prev", "")
            if s.page == "item":
                for kind, values in product["options"].items():
                    parts.append(kind)
                    for value in values:
                        parts.append(value)
                        clicks.setdefault(value.lower(), (kind, value))
                parts += [product["name"], f"Price: {product['price_tag']}", "Rating: N.A.",
                          *(sub.capitalize() for sub in self.sub_pages), "Buy Now"]
                clicks.update({sub: ("sub", sub) for sub in self.sub_pages})
                clicks["buy now"] = ("buy", "")
            elif s.sub == "description":
                parts.append(product["description"] or "None")
            elif s.sub == "features":
                parts += product["bullets"] or ["None"]
            elif s.sub == "attributes":
                parts += product["attributes"] or ["None"]
            else:
                parts.append("None")  # no reviews in the catalog
        self._clicks = clicks
        return SEP.join(parts)

    def _admissible(self) -> list[str]:
        actions = [SEARCH_ACTION] if self.state.page == "search" else []
        return actions + [f"click[{label}]" for label in self._clicks]
