"""The WebShop purchase score (Yao et al. 2022, "WebShop", Sec. 3.2; `get_reward` in
princeton-nlp/WebShop ``web_agent_site/engine/goal.py``), re-implemented.

    score = r_type * (n_att + n_opt + 1[price <= price_upper]) / (|U_att| + |U_opt| + 1)

n_att: goal attributes u in U_att matched by the bought product: some product attribute y with
       ``ratio(y, u) > 85``, else ``u`` is a substring of the lower-cased title, or of the
       bullet points, or of the description (each checked on its own).
n_opt: goal options u in U_opt matched by some chosen option value y with ``ratio(y, u) > 85``,
       both first normalised to a base colour when they contain one (``normalize_color``).
r_type in {1, 0.5, 0.1, 0}: with T = the goal title's nouns (a list: repeats count) and
       s = |set(T) & set(nouns(bought title))| / |T| (s = 0.2 when T is empty),
       r_type = 1 if (same search query, or >= 2 shared category-path levels, or s > 0.2) else 0.5;
       then r_type = 0.1 if s < 0.1, and r_type = 0 if s == 0.

ratio is thefuzz's ``token_set_ratio`` as the benchmark calls it: rapidfuzz ``token_set_ratio``
on lower-cased, punctuation-stripped text (``default_process``), rounded to an integer; the
threshold is strict (``> 85``). Nouns are spaCy's NOUN/PROPN tokens when ``en_core_web_lg`` (the
benchmark's pipeline) or ``en_core_web_sm`` is installed, else a heuristic (alphabetic words of
>= 3 letters minus stop words, adjectives and units); ``type_reward_source()`` says which
("spacy:<pipeline>" or "heuristic") and the env reports it in ``info["type_reward"]``.
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from typing import Iterable, Mapping

from rapidfuzz import fuzz, utils

FUZZY_THRESHOLD = 85

# Base colour names: an option value containing one is compared as that colour ("navy blue
# heather" -> "navy"), the first listed match winning. A list of common colour words, in the
# spirit of the benchmark's COLOR_SET (not a copy of it).
COLORS = ("alabaster", "apricot", "aqua", "ash", "azure", "beige", "black", "blue", "blush", "bronze", "brown",
          "burgundy", "camel", "camo", "caramel", "champagne", "charcoal", "chocolate", "coffee", "copper",
          "coral", "cream", "denim", "espresso", "fuchsia", "gold", "gray", "green", "grey", "heather", "indigo",
          "ivory", "khaki", "lavender", "lilac", "lime", "magenta", "maroon", "mauve", "mint", "mocha", "multicolor",
          "mustard", "navy", "nude", "olive", "orange", "peach", "pink", "plum", "purple", "red", "rose", "rust",
          "sand", "silver", "slate", "tan", "taupe", "teal", "turquoise", "violet", "walnut", "white", "wine",
          "yellow")

_STOP_WORDS = frozenset(
    """a an and the of for with in on to by from at as or is are be this that it its your you our
    we my me pack count set size color colour style inch inches ounce ounces oz fl ft feet lb lbs
    pound pounds piece pieces pcs gram grams ml liter new free best premium great high low
    small medium large extra long short light heavy dark soft hard natural organic original
    perfect easy quick fast super ultra mini multi plus pro black white red blue green grey gray
    brown pink purple yellow orange navy beige gold silver clear""".split()
)
_WORD = re.compile(r"[a-z]+")


def ratio(a: str, b: str) -> int:
    """thefuzz's token_set_ratio: lower-cased, punctuation stripped, rounded to an integer."""
    return round(fuzz.token_set_ratio(a, b, processor=utils.default_process))


def normalize_color(value: str) -> str:
    """The first base colour (``COLORS``) contained in ``value``, else ``value``."""
    for color in COLORS:
        if color in value:
            return color
    return value


# spaCy pipelines tried in order: the benchmark's goal.py loads en_core_web_lg.
SPACY_MODELS = ("en_core_web_lg", "en_core_web_sm")


@lru_cache(maxsize=1)
def _spacy_model() -> str | None:
    return next((name for name in SPACY_MODELS if importlib.util.find_spec(name) is not None), None)


@lru_cache(maxsize=1)
def _spacy_nlp():
    """The first installed spaCy pipeline of ``SPACY_MODELS`` (loaded on first use), or None."""
    name = _spacy_model()
    if name is None:
        return None
    import spacy

    return spacy.load(name, disable=["parser", "ner", "lemmatizer"])


def type_reward_source() -> str:
    """Which noun finder the type reward uses: "spacy:<pipeline>" or "heuristic"."""
    name = _spacy_model()
    return f"spacy:{name}" if name is not None else "heuristic"


@lru_cache(maxsize=65536)
def title_nouns(title: str) -> tuple[str, ...]:
    """Nouns of a product title, in order with repeats: spaCy NOUN/PROPN tokens (lower-cased)
    when en_core_web_sm is installed, else the heuristic word filter."""
    nlp = _spacy_nlp()
    if nlp is not None:
        return tuple(t.text.lower() for t in nlp(title) if t.pos_ in ("NOUN", "PROPN"))
    return tuple(w for w in _WORD.findall(title.lower()) if len(w) >= 3 and w not in _STOP_WORDS)


def type_reward(product: Mapping, goal: Mapping) -> float:
    """r_type of the score: does the bought product have the goal's product type."""
    query_match = bool(product.get("query")) and product.get("query") == goal.get("query")
    bought_levels = {x.strip() for x in product.get("product_category", "").split("›")} - {""}
    goal_levels = {x.strip() for x in goal.get("product_category", "").split("›")} - {""}
    category_match = len(bought_levels & goal_levels) >= 2
    goal_nouns = title_nouns(goal.get("name", ""))
    if goal_nouns:
        shared = set(goal_nouns) & set(title_nouns(product.get("name", "")))
        title_score = len(shared) / len(goal_nouns)
    else:
        title_score = 0.2
    r_type = 1.0 if (query_match or category_match or title_score > 0.2) else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type


def attribute_matches(product: Mapping, goal_attributes: Iterable[str]) -> int:
    """n_att: goal attributes found among the product attributes (fuzzy), or in its title, its
    bullet points or its description (each on its own, so no match spans two of them)."""
    attributes = product.get("attributes", [])
    texts = [product.get("name", "").lower(), " ".join(product.get("bullets", [])).lower(),
             product.get("description", "").lower()]
    matches = 0
    for wanted in goal_attributes:
        if (any(ratio(have, wanted) > FUZZY_THRESHOLD for have in attributes)
                or any(wanted in text for text in texts)):
            matches += 1
    return matches


def option_matches(chosen_options: Iterable[str], goal_options: Iterable[str]) -> int:
    """n_opt: goal option values matched (fuzzy, after colour normalisation) by a chosen value."""
    chosen = [normalize_color(c) for c in chosen_options]
    return sum(any(ratio(c, normalize_color(g)) > FUZZY_THRESHOLD for c in chosen) for g in goal_options)


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
