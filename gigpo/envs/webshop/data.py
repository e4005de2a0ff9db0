"""Load a WebShop catalog and goal set from the benchmark's JSON files.

Files (princeton-nlp/WebShop ``data/``), looked up in ``data_dir``:
- products:     ``items_shuffle_1000.json`` (else ``items_shuffle.json``): a list of
                {asin, name, category, query, product_category "A › B › C", small_description
                (list of bullet strings or a string), full_description, pricing "$12.99" or
                "$12.99 - $15.99", customization_options {type: [{value, ...}] | null}}.
- attributes:   ``items_ins_v2_1000.json`` (else ``items_ins_v2.json``): {asin: {attributes: [str]}}.
- instructions: ``items_human_ins.json``: {asin: [{instruction, instruction_attributes: [str],
                instruction_options: [str] | {type: value}}]}.

Normalised records (plain dicts, read by ``reward.webshop_score`` and the env):
- product: asin, name, category, query, product_category, bullets, description, price,
  price_tag, options {type: [value]}, attributes.
- goal: asin, instruction, attributes, goal_options, price_upper, name, category, query,
  product_category.

Human goals, in the benchmark's order (``get_human_goals`` then one shuffle): products in
product-file order (first record of each asin; asins "nan" or longer than 10 characters
skipped, as its ``load_products`` does), each product's instructions in file order,
instructions without attributes skipped, then one ``random.Random(233).shuffle``. The shuffle's
permutation depends only on the number of goals, so with the real files goal i is the
benchmark's goal i and "goals 0-499" are its test goals. The price bound (drawn on its own
generator, so the shuffle is untouched) is the larger of two distinct draws from the first four
multiples of $10 above the product price, appended to the instruction as ", and price lower
than X dollars"; a range price buys at its lower bound. Bounds therefore differ from the
benchmark's (its draws come from the process-wide ``random`` state, and a range price is drawn
uniformly), the instructions and their order do not. Splits follow the GiGPO/verl-agent setup:
goals 0-499 are ``test``, the rest ``train`` (the benchmark's ``dev`` split, 500-1499, is inside
``train``; it is exposed as ``dev`` too).

Synthetic goals (``synthetic_goals``, the benchmark's ``get_synthetic_goals``): for every
product whose attribute-file entry has an ``instruction`` and ``instruction_attributes``, one
goal per combination of its option values (option types sorted), instruction
"<instruction> with type: value, and type: value<price text>", weighted by the mean over its
attributes of 1 / (goals naming that attribute); drawn at random with those weights.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

PRODUCT_FILES = ("items_shuffle_1000.json", "items_shuffle.json")
ATTRIBUTE_FILES = ("items_ins_v2_1000.json", "items_ins_v2.json")
INSTRUCTION_FILE = "items_human_ins.json"
SPLITS = {"test": (0, 500), "dev": (500, 1500), "train": (500, None)}
GOAL_SHUFFLE_SEED = 233
PRICE_DRAW_SEED = 0

_catalogs: dict[str, "Catalog"] = {}


class Catalog:
    """Products (list and by asin) and shuffled goals of one data directory."""

    def __init__(self, path: str, products: list[dict], goals: list[dict]):
        self.path = path
        self.products = products
        self.by_asin = {p["asin"]: p for p in products}
        self.goals = goals
        self._synthetic: list[dict] | None = None

    @property
    def synthetic(self) -> list[dict]:
        """The generated template goals (``synthetic_goals``), built on first use."""
        if self._synthetic is None:
            self._synthetic = synthetic_goals(self.products)
        return self._synthetic

    def split(self, name: str) -> list[dict]:
        """The goals of split ``name`` (test: 0-499, dev: 500-1499, train: 500-)."""
        if name not in SPLITS:
            raise ValueError(f"split: unknown split {name!r}; known: {sorted(SPLITS)}")
        start, stop = SPLITS[name]
        goals = self.goals[start:stop]
        if not goals:
            raise ValueError(f"split: {name!r} is empty ({len(self.goals)} goals in {self.path})")
        return goals


def load_catalog(data_dir: str | Path) -> Catalog:
    """Load (once per process, cached by resolved path) the catalog in ``data_dir``."""
    key = str(Path(data_dir).resolve())
    if key not in _catalogs:
        _catalogs[key] = _load(Path(key))
    return _catalogs[key]


def _pick(data_dir: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (data_dir / name).is_file():
            return data_dir / name
    raise FileNotFoundError(f"{data_dir}: none of {list(names)} found")


def _read_json(path: Path) -> Any:
    if path.stat().st_size == 0:
        raise ValueError(f"{path.name}: the file is empty (0 bytes) in {path.parent}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path.name}: not valid JSON ({err})") from err


def _need(cond: bool, path: Path, where: str, what: str) -> None:
    if not cond:
        raise ValueError(f"{path.name}: {where}: {what}")


def _is_str_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


PRICE = re.compile(r"\s*(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\d.,eE])")


def parse_price(pricing: str) -> tuple[float, str]:
    """("$12.99 - $15.99") -> (12.99, "$12.99 to $15.99"); the lower bound is the buying price.

    Each "$" must be followed by a plain decimal amount ("1,299.00" allowed); anything else
    ("$1e308", "$12.3.4") is an error, never a number made of the digits that happen to be there."""
    values = []
    for part in pricing.split("$")[1:]:
        if not re.search(r"\d", part):
            continue
        match = PRICE.match(part)
        if match is None:
            raise ValueError(f"not a price: {'$' + part.strip()!r} in {pricing!r}")
        values.append(float(match.group(1).replace(",", "") + (match.group(2) or "")))
    if not values:
        raise ValueError(f"no price in {pricing!r}")
    tag = f"${values[0]:.2f}" if len(values) == 1 else f"${values[0]:.2f} to ${values[1]:.2f}"
    return values[0], tag


def _product(record: Any, index: int, attributes: dict, path: Path, attr_path: Path) -> dict:
    where = f"record {index}"
    _need(isinstance(record, dict), path, where, "must be an object")
    _need(isinstance(record.get("asin"), str) and record["asin"], path, where, "field 'asin' must be a non-empty string")
    where = f"record {index} (asin {record['asin']})"
    for key in ("name", "product_category", "pricing"):
        _need(isinstance(record.get(key), str), path, where, f"field {key!r} must be a string")
    for key in ("category", "query", "full_description"):
        _need(isinstance(record.get(key, ""), str), path, where, f"field {key!r} must be a string")
    bullets = record.get("small_description") or []
    bullets = [bullets] if isinstance(bullets, str) else bullets
    _need(_is_str_list(bullets), path, where, "field 'small_description' must be a string or list of strings")
    try:
        price, price_tag = parse_price(record["pricing"])
    except ValueError as err:
        raise ValueError(f"{path.name}: {where}: field 'pricing': {err}") from err
    custom = record.get("customization_options") or {}
    _need(isinstance(custom, dict), path, where, "field 'customization_options' must be an object")
    options: dict[str, list[str]] = {}
    for kind, values in custom.items():
        if values is None:
            continue
        ok = isinstance(values, list) and all(isinstance(v, dict) and isinstance(v.get("value"), str) for v in values)
        _need(ok, path, where, f"field 'customization_options.{kind}' must be a list of {{value: str}}")
        options[kind.lower()] = [v["value"].strip().replace("/", " | ").lower() for v in values]
    entry = attributes.get(record["asin"], {"attributes": []})
    _need(isinstance(entry, dict) and _is_str_list(entry.get("attributes", [])), attr_path,
          f"asin {record['asin']}", "field 'attributes' must be a list of strings")
    return {
        "asin": record["asin"],
        "name": record["name"],
        "category": record.get("category", ""),
        "query": record.get("query", ""),
        "product_category": record["product_category"],
        "bullets": bullets,
        "description": record.get("full_description", ""),
        "price": price,
        "price_tag": price_tag,
        "options": options,
        "attributes": entry.get("attributes", []),
        "instruction": entry.get("instruction") if isinstance(entry.get("instruction"), str) else None,
        "instruction_attributes": entry.get("instruction_attributes") or [],
    }


def _price_upper(price: float, rng: random.Random) -> float | None:
    above = [10.0 * i for i in range(1, 100) if 10.0 * i > price][:4]
    return max(rng.sample(above, 2)) if len(above) >= 2 else None


def _goal(product: dict, instruction: str, attributes: list[str], goal_options, upper: float | None) -> dict:
    price_text = f", and price lower than {upper:.2f} dollars" if upper is not None else ""
    return {
        "asin": product["asin"],
        "instruction": instruction.strip().strip(".") + price_text,
        "attributes": attributes,
        "goal_options": goal_options,
        "price_upper": upper if upper is not None else 1e6,
        "name": product["name"],
        "category": product["category"],
        "query": product["query"],
        "product_category": product["product_category"],
    }


def synthetic_goals(products: list[dict]) -> list[dict]:
    """The benchmark's generated goals over ``products`` (see the module docstring), each with
    a ``weight``; raises ValueError when no product has an instruction template."""
    rng = random.Random(PRICE_DRAW_SEED)
    goals = []
    for product in products:
        if not product.get("instruction") or not product.get("instruction_attributes"):
            continue
        upper = _price_upper(product["price"], rng)
        names = sorted(product["options"])
        for values in itertools.product(*(product["options"][name] for name in names)):
            goal_options = dict(zip(names, values))
            options_text = ", and ".join(f"{k}: {v}" for k, v in goal_options.items())
            text = product["instruction"].strip().strip(".") + (f" with {options_text}" if options_text else "")
            goals.append(_goal(product, text, list(product["instruction_attributes"]), goal_options, upper))
    if not goals:
        raise ValueError("env.goals=synthetic: no product has 'instruction' and 'instruction_attributes' in the "
                         "attribute file (items_ins_v2*.json); the generated catalog has none: use goals=human")
    counts = Counter(att for goal in goals for att in goal["attributes"])
    for goal in goals:
        goal["weight"] = sum(1.0 / counts[att] for att in goal["attributes"]) / len(goal["attributes"])
    return goals


def _load(data_dir: Path) -> Catalog:
    product_path = _pick(data_dir, PRODUCT_FILES)
    attr_path = _pick(data_dir, ATTRIBUTE_FILES)
    ins_path = _pick(data_dir, (INSTRUCTION_FILE,))
    raw_products, attributes, instructions = (_read_json(p) for p in (product_path, attr_path, ins_path))
    _need(isinstance(raw_products, list), product_path, "top level", "must be a list of products")
    _need(bool(raw_products), product_path, "top level", "holds no products (an empty list)")
    _need(isinstance(attributes, dict), attr_path, "top level", "must be an object keyed by asin")
    _need(isinstance(instructions, dict), ins_path, "top level", "must be an object keyed by asin")

    products, seen = [], set()
    for i, record in enumerate(raw_products):
        product = _product(record, i, attributes, product_path, attr_path)
        if product["asin"] == "nan" or len(product["asin"]) > 10:
            continue  # the benchmark's loader skips these records
        if product["asin"] not in seen:
            seen.add(product["asin"])
            products.append(product)

    for asin, records in instructions.items():
        _need(isinstance(records, list), ins_path, f"asin {asin}", "must be a list of instructions")
    price_rng = random.Random(PRICE_DRAW_SEED)
    goals = []
    for product in products:  # the benchmark walks products in file order
        for j, rec in enumerate(instructions.get(product["asin"], [])):
            where = f"asin {product['asin']} instruction {j}"
            _need(isinstance(rec, dict) and isinstance(rec.get("instruction"), str), ins_path, where,
                  "field 'instruction' must be a string")
            _need(_is_str_list(rec.get("instruction_attributes", [])), ins_path, where,
                  "field 'instruction_attributes' must be a list of strings")
            goal_options = rec.get("instruction_options", [])
            if isinstance(goal_options, dict):
                goal_options = list(goal_options.values())
            _need(_is_str_list(goal_options), ins_path, where,
                  "field 'instruction_options' must be a list of strings or an object of strings")
            if not rec.get("instruction_attributes"):
                continue  # the benchmark skips instructions without attributes
            upper = _price_upper(product["price"], price_rng)
            goals.append(_goal(product, rec["instruction"], rec["instruction_attributes"], goal_options, upper))
    _need(bool(goals), ins_path, "top level", "no instruction refers to a product of the catalog")
    random.Random(GOAL_SHUFFLE_SEED).shuffle(goals)
    return Catalog(str(data_dir), products, goals)
