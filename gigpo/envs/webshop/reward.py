"""The WebShop purchase score (Yao et al. 2022, "WebShop", Sec. 3.2; `get_reward` in
princeton-nlp/WebShop ``web_agent_site/engine/goal.py``), re-implemented.

    score = r_type * (n_att + n_opt + 1[price <= price_upper]) / (|U_att| + |U_opt| + 1)

n_att: goal attributes u in U_att matched by the bought product: some product attribute y with
       rapidfuzz ``token_set_ratio(y, u) > 85``, else ``u`` is a substring of the lower-cased
       title, bullet points or description.
n_opt: goal options u in U_opt matched by some chosen option value y with
       ``token_set_ratio(y, u) > 85``.
r_type in {1, 0.5, 0.1, 0}: with T = the goal title's nouns and s = |T & nouns(bought title)| / |T|
       (s = 0.2 when T is empty),
       r_type = 1 if (same search query, or >= 2 shared category-path levels, or s > 0.2) else 0.5;
       then r_type = 0.1 if s < 0.1, and r_type = 0 if s == 0.

Deviations from the benchmark:
- Nouns come from a heuristic (alphabetic words of >= 3 letters, minus stop words and a short
  list of adjectives and units) instead of spaCy part-of-speech tags.
- The benchmark's colour normalisation of option values is not applied.
- The thresholds are the benchmark's strict ``> 85`` (not ``>= 85``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable, Mapping

from rapidfuzz import fuzz

FUZZY_THRESHOLD = 85.0

_STOP_WORDS = frozenset(
    """a an and the of for with in on to by from at as or is are be this that it its your you our
    we my me pack count set size color colour style inch inches ounce ounces oz fl ft feet lb lbs
    pound pounds piece pieces pcs gram grams ml liter new free best premium great high low
    small medium large extra long short light heavy dark soft hard natural organic original
    perfect easy quick fast super ultra mini multi plus pro black white red blue green grey gray
    brown pink purple yellow orange navy beige gold silver clear""".split()
)
_WORD = re.compile(r"[a-z]+")


@lru_cache(maxsize=65536)
def title_nouns(title: str) -> frozenset[str]:
    """Heuristic noun set of a product title (stands in for spaCy's NOUN/PROPN tags)."""
    return frozenset(w for w in _WORD.findall(title.lower()) if len(w) >= 3 and w not in _STOP_WORDS)


def type_reward(product: Mapping, goal: Mapping) -> float:
    """r_type of the score: does the bought product have the goal's product type."""
    query_match = bool(product.get("query")) and product.get("query") == goal.get("query")
    bought_levels = {x.strip() for x in product.get("product_category", "").split("›")} - {""}
    goal_levels = {x.strip() for x in goal.get("product_category", "").split("›")} - {""}
    category_match = len(bought_levels & goal_levels) >= 2
    goal_nouns = title_nouns(goal.get("name", ""))
    if goal_nouns:
        title_score = len(goal_nouns & title_nouns(product.get("name", ""))) / len(goal_nouns)
    else:
        title_score = 0.2
    r_type = 1.0 if (query_match or category_match or title_score > 0.2) else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type


def attribute_matches(product: Mapping, goal_attributes: Iterable[str]) -> int:
    """n_att: goal attributes found among the product attributes (fuzzy) or in its text."""
    attributes = product.get("attributes", [])
    text = " ".join([product.get("name", ""), *product.get("bullets", []), product.get("description", "")]).lower()
    matches = 0
    for wanted in goal_attributes:
        if any(fuzz.token_set_ratio(have, wanted) > FUZZY_THRESHOLD for have in attributes) or wanted.lower() in text:
            matches += 1
    return matches


def option_matches(chosen_options: Iterable[str], goal_options: Iterable[str]) -> int:
    """n_opt: goal option values matched (fuzzy) by some chosen option value."""
    chosen = [c.lower() for c in chosen_options]
    return sum(any(fuzz.token_set_ratio(c, g.lower()) > FUZZY_THRESHOLD for c in chosen) for g in goal_options)


def webshop_score(product: Mapping, goal: Mapping, price: float, chosen_options: Mapping[str, str]) -> float:
    """The WebShop score in [0, 1] of buying ``product`` at ``price`` with ``chosen_options``.

    product: dict with name, product_category, query, attributes, bullets, description.
    goal:    dict with name, product_category, query, attributes, goal_options, price_upper.
    """
    goal_attributes = list(goal.get("attributes", []))
    goal_options = goal.get("goal_options", [])
    goal_options = list(goal_options.values()) if isinstance(goal_options, Mapping) else list(goal_options)
    n_att = attribute_matches(product, goal_attributes)
    n_opt = option_matches(chosen_options.values(), goal_options)
    price_ok = float(price <= goal["price_upper"])
    total = (n_att + n_opt + price_ok) / (len(goal_attributes) + len(goal_options) + 1)
    return type_reward(product, goal) * total
