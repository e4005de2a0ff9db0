"""A seeded generator of WebShop-shaped catalogs, for when the real data cannot be downloaded.

It writes the three benchmark files (see ``data.py``) with the same schema: products in six
categories with their own vocabularies, grouped in *families* of near-duplicates (same product
type and mostly the same attributes, options and price, differing in one or two of them), so
the search results of a goal are crowded with distractors that earn partial scores; and
shopper-style instructions ("i am looking for a gluten free protein bar that is sugar free, in
peanut butter flavor") naming a subset of the target's attributes and one value per option type.

``ensure_catalog`` generates a catalog once into ``$GIGPO_CACHE/webshop/<hash>`` (default root
``~/.cache/gigpo``), keyed by the generator's parameters, writing into a temporary directory
that is renamed into place so concurrent callers never read a partial catalog.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

GENERATOR_VERSION = 1
MAX_GOALS = 12087  # as many as the benchmark's human instructions

# Each category: path root, product types (title noun, sub-category, price range), attributes
# (with the bullet sentence that explains them), option types and values, brands, filler text.
CATEGORIES: dict[str, dict] = {
    "grocery": {
        "root": "Grocery & Gourmet Food",
        "types": [("protein bar", "Snack Bars", (12, 45)), ("granola bar", "Snack Bars", (6, 25)),
                  ("beef jerky", "Jerky & Dried Meats", (8, 40)), ("potato chips", "Chips & Crisps", (4, 30)),
                  ("herbal tea", "Tea", (5, 28)), ("ground coffee", "Coffee", (8, 35)),
                  ("dark chocolate", "Candy & Chocolate", (5, 30)), ("almond butter", "Nut Butters", (7, 26))],
        "attributes": ["gluten free", "sugar free", "keto friendly", "low carb", "non gmo", "high protein",
                       "dairy free", "plant based", "low calorie", "certified organic", "kosher", "caffeine free"],
        "options": {"flavor": ["chocolate chip", "peanut butter", "sea salt caramel", "vanilla almond", "mixed berry",
                               "cinnamon", "lemon ginger", "double chocolate", "honey roasted", "original"],
                    "size": ["6 count (pack of 1)", "12 count (pack of 1)", "24 count (pack of 1)",
                             "2.5 ounce (pack of 4)", "8 ounce (pack of 2)", "1 pound (pack of 1)"]},
        "brands": ["NatureBite", "Crunchwell", "GreenHarvest", "Trailmix Co", "Bellamora", "Kettle Ridge"],
        "filler": ["a satisfying snack for work, school and the gym", "made in small batches",
                   "resealable packaging keeps it fresh", "great for lunch boxes and road trips"],
    },
    "beauty": {
        "root": "Beauty & Personal Care",
        "types": [("shampoo", "Hair Care", (6, 40)), ("conditioner", "Hair Care", (6, 40)),
                  ("face serum", "Skin Care", (10, 60)), ("moisturizer", "Skin Care", (8, 55)),
                  ("lip balm", "Lip Care", (3, 18)), ("hair oil", "Hair Care", (7, 35)),
                  ("eau de parfum", "Fragrance", (20, 95)), ("nail polish", "Nail Care", (4, 20))],
        "attributes": ["paraben free", "cruelty free", "long lasting", "sulfate free", "fragrance free",
                       "dermatologist tested", "natural ingredients", "for dry skin", "for sensitive skin",
                       "hyaluronic acid", "tea tree", "vitamin c"],
        "options": {"scent": ["lavender", "coconut", "unscented", "rose", "eucalyptus mint", "citrus", "sandalwood"],
                    "size": ["1 fl oz (pack of 1)", "3.4 fl oz (pack of 1)", "8 fl oz (pack of 1)",
                             "16 fl oz (pack of 2)", "6.76 fl oz (pack of 1)"]},
        "brands": ["Lumielle", "PureRoot", "Velvetine", "Oceanic Glow", "Botaniq", "Derma Nova"],
        "filler": ["gentle enough for daily use", "absorbs quickly without a greasy feel",
                   "formulated by skin care experts", "a travel friendly bottle"],
    },
    "fashion": {
        "root": "Clothing, Shoes & Jewelry",
        "types": [("t-shirt", "Men › Clothing › Shirts", (9, 35)), ("hoodie", "Women › Clothing › Sweaters", (20, 65)),
                  ("jeans", "Men › Clothing › Jeans", (20, 80)), ("sneakers", "Women › Shoes › Fashion Sneakers", (30, 110)),
                  ("leggings", "Women › Clothing › Active", (12, 45)), ("dress", "Women › Clothing › Dresses", (18, 90)),
                  ("rain jacket", "Men › Clothing › Outerwear", (30, 120)), ("socks", "Men › Clothing › Socks", (6, 25))],
        "attributes": ["machine wash", "slim fit", "long sleeve", "quick drying", "moisture wicking", "button closure",
                       "elastic waistband", "relaxed fit", "short sleeve", "rubber sole", "polyester spandex",
                       "cotton blend"],
        "options": {"color": ["black", "navy blue", "heather grey", "white", "burgundy", "olive green", "khaki",
                              "charcoal", "royal blue"],
                    "size": ["small", "medium", "large", "x-large", "xx-large", "3x-large"]},
        "brands": ["Urbanline", "Northpeak", "Sofia Lane", "Stride & Co", "Marlowe", "Ridgeway"],
        "filler": ["a wardrobe staple for every season", "soft fabric that keeps its shape wash after wash",
                   "pairs easily with casual and dressy outfits", "true to size fit"],
    },
    "home": {
        "root": "Home & Kitchen",
        "types": [("bookshelf", "Furniture › Home Office Furniture › Bookcases", (40, 200)),
                  ("coffee table", "Furniture › Living Room Furniture › Tables", (50, 250)),
                  ("office chair", "Furniture › Home Office Furniture › Chairs", (60, 300)),
                  ("nightstand", "Furniture › Bedroom Furniture › Nightstands", (30, 150)),
                  ("floor lamp", "Lighting & Ceiling Fans › Lamps", (25, 140)),
                  ("storage ottoman", "Furniture › Living Room Furniture › Ottomans", (30, 120)),
                  ("throw pillow", "Home Décor › Decorative Pillows", (8, 40)),
                  ("bath towel", "Bath › Towels", (10, 50))],
        "attributes": ["easy assembly", "solid wood", "space saving", "height adjustable", "living room",
                       "metal frame", "easy clean", "storage space", "mid century", "lumbar support",
                       "non slip", "engineered wood"],
        "options": {"color": ["espresso", "white oak", "rustic brown", "walnut", "gray wash", "black", "natural"],
                    "size": ["2-tier", "3-tier", "5-tier", "small", "large", "18 x 18 inch", "20 x 20 inch"]},
        "brands": ["Hearthwood", "Casa Linea", "Nordhaus", "Oakridge Living", "Brightnest", "Homestyle Lab"],
        "filler": ["fits apartments, dorms and offices", "sturdy construction for everyday use",
                   "all hardware and instructions included", "a timeless look that matches any decor"],
    },
    "electronics": {
        "root": "Electronics",
        "types": [("wireless earbuds", "Headphones › Earbud Headphones", (15, 120)),
                  ("phone case", "Cell Phones & Accessories › Cases", (6, 30)),
                  ("usb c cable", "Computers & Accessories › Cables", (5, 25)),
                  ("bluetooth speaker", "Portable Audio › Speakers", (18, 130)),
                  ("hdmi cable", "Television & Video › Cables", (6, 30)),
                  ("power bank", "Cell Phones & Accessories › Chargers", (15, 70)),
                  ("security camera", "Camera & Photo › Surveillance", (25, 160)),
                  ("wireless mouse", "Computers & Accessories › Mice", (8, 45))],
        "attributes": ["fast charging", "noise cancelling", "high speed", "water resistant", "long battery life",
                       "easy install", "high definition", "wireless bluetooth", "shockproof", "plug and play",
                       "night vision", "dual band"],
        "options": {"color": ["black", "white", "midnight blue", "rose gold", "space gray", "red"],
                    "size": ["3 ft", "6 ft", "10 ft", "1 pack", "2 pack", "4 pack"],
                    "style": ["standard", "pro", "with charging case", "bundle"]},
        "brands": ["Voltix", "Soundara", "Nexcell", "Cabletron", "Auralink", "Gridwave"],
        "filler": ["compatible with most phones, tablets and laptops", "backed by an 18 month warranty",
                   "tested for thousands of uses", "compact enough to carry anywhere"],
    },
    "pets": {
        "root": "Pet Supplies",
        "types": [("dog treats", "Dogs › Treats", (6, 35)), ("cat litter", "Cats › Litter & Housebreaking", (10, 40)),
                  ("dog bed", "Dogs › Beds & Furniture", (20, 90)), ("cat toy", "Cats › Toys", (4, 20)),
                  ("dog leash", "Dogs › Collars, Harnesses & Leashes", (8, 30)),
                  ("aquarium filter", "Fish & Aquatic Pets › Filters", (12, 60))],
        "attributes": ["grain free", "clumping", "odor control", "orthopedic", "machine washable", "reflective",
                       "dust free", "natural ingredients", "chew resistant", "made in usa"],
        "options": {"flavor": ["chicken", "beef", "salmon", "peanut butter", "unscented"],
                    "size": ["small", "medium", "large", "10 pound", "20 pound", "5 ounce (pack of 3)"]},
        "brands": ["Pawsome", "Whisker & Tail", "BarkBay", "Furbound", "AquaPure", "Happy Hound"],
        "filler": ["loved by pets of every age", "vet recommended", "easy to use and easy to store",
                   "a happy pet guarantee"],
    },
}

TEMPLATES = [
    "i am looking for a {attrs} {noun}{opts}",
    "i need a {noun} that is {attrs}{opts}",
    "i want to buy a {noun} which is {attrs}{opts}",
    "find me a {attrs} {noun}{opts}",
    "i'm searching for {attrs} {noun}{opts}",
    "get me a {noun}, it should be {attrs}{opts}",
]


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _option_phrase(rng: random.Random, goal_options: dict[str, str]) -> str:
    if not goal_options:
        return ""
    parts = [rng.choice([f"{value} {kind}", f"{kind} {value}"]) for kind, value in goal_options.items()]
    return rng.choice([", in ", " with ", ", "]) + _join(parts)


class _Generator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.asins: set[str] = set()

    def asin(self) -> str:
        while True:
            code = "B0" + "".join(self.rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", k=8))
            if code not in self.asins:
                self.asins.add(code)
                return code

    def family(self, size: int) -> list[dict]:
        """``size`` near-duplicate products of one type: variants of a shared base."""
        rng = self.rng
        name = rng.choice(sorted(CATEGORIES))
        cat = CATEGORIES[name]
        noun, sub, (low, high) = rng.choice(cat["types"])
        base_attrs = rng.sample(cat["attributes"], rng.randint(3, 5))
        kinds = rng.sample(sorted(cat["options"]), rng.randint(1, min(2, len(cat["options"]))))
        base_options = {k: rng.sample(cat["options"][k], min(len(cat["options"][k]), rng.randint(2, 5))) for k in kinds}
        base_price = rng.uniform(low, high)
        brand = rng.choice(cat["brands"])
        products = []
        for _ in range(size):
            attrs = [a for a in base_attrs if rng.random() > 0.25]
            extra = [a for a in cat["attributes"] if a not in attrs]
            attrs += rng.sample(extra, rng.randint(0, 2))
            attrs = attrs or [rng.choice(cat["attributes"])]
            options = {}
            for k, values in base_options.items():
                pool = [v for v in values if rng.random() > 0.3] or [values[0]]
                if rng.random() < 0.3:
                    pool.append(rng.choice([v for v in cat["options"][k] if v not in pool] or pool))
                options[k] = pool
            if rng.random() < 0.15:
                options.pop(rng.choice(sorted(options)))
            products.append(self.product(name, cat, noun, sub, attrs, options,
                                         base_price * rng.uniform(0.8, 1.25),
                                         brand if rng.random() < 0.6 else rng.choice(cat["brands"])))
        return products

    def product(self, name, cat, noun, sub, attrs, options, price, brand) -> dict:
        rng = self.rng
        in_title = rng.sample(attrs, min(len(attrs), rng.randint(1, 2)))
        title_bits = [w.title() for w in in_title]
        spec = next(iter(options.values()))[0] if options and rng.random() < 0.5 else ""
        title = f"{brand} {noun.title()}" + (" - " + ", ".join(title_bits)) + (f", {spec.title()}" if spec else "")
        bullets = [f"{a.upper()}: this {noun} is {a}, {rng.choice(cat['filler'])}" for a in attrs]
        rng.shuffle(bullets)
        description = (f"{brand} {noun}: {rng.choice(cat['filler'])}. {rng.choice(cat['filler']).capitalize()}, "
                       f"and {rng.choice(cat['filler'])}.")
        if rng.random() < 0.15:
            pricing = f"${price:.2f} - ${price * rng.uniform(1.05, 1.4):.2f}"
        else:
            pricing = f"${price:.2f}"
        return {
            "asin": self.asin(),
            "name": title,
            "category": name,
            "query": noun,
            "product_category": f"{cat['root']} › {sub}",
            "small_description": bullets,
            "full_description": description,
            "pricing": pricing,
            "customization_options": {k: [{"value": v, "image": None} for v in vs] for k, vs in options.items()},
            "attributes": attrs,  # moved to the attribute file by ``generate``
        }

    def instruction(self, product: dict) -> dict:
        rng = self.rng
        attrs = product["attributes"]
        goal_attrs = rng.sample(attrs, min(len(attrs), rng.randint(1, 3)))
        goal_options = {k: rng.choice(vs)["value"] for k, vs in product["customization_options"].items()
                        if rng.random() < 0.85}
        text = rng.choice(TEMPLATES).format(attrs=_join(goal_attrs), noun=product["query"],
                                            opts=_option_phrase(rng, goal_options))
        return {"asin": product["asin"], "instruction": text, "instruction_attributes": goal_attrs,
                "instruction_options": list(goal_options.values())}


def generate(out_dir: str | Path, num_products: int = 1000, seed: int = 0, num_goals: int | None = None) -> None:
    """Write items_shuffle_1000.json, items_ins_v2_1000.json, items_human_ins.json into ``out_dir``.

    num_goals defaults to min(2 * num_products, 12087); targets are drawn without replacement
    while products last.
    """
    gen = _Generator(seed)
    products: list[dict] = []
    while len(products) < num_products:
        products += gen.family(gen.rng.randint(3, 10))
    products = products[:num_products]
    gen.rng.shuffle(products)
    num_goals = min(2 * num_products, MAX_GOALS) if num_goals is None else num_goals
    targets = [products[i % num_products] for i in gen.rng.sample(range(num_products), min(num_goals, num_products))]
    targets += [gen.rng.choice(products) for _ in range(num_goals - len(targets))]
    instructions: dict[str, list] = {}
    for product in targets:
        instructions.setdefault(product["asin"], []).append(gen.instruction(product))
    attributes = {p["asin"]: {"attributes": p.pop("attributes")} for p in products}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fname, payload in (("items_shuffle_1000.json", products), ("items_ins_v2_1000.json", attributes),
                           ("items_human_ins.json", instructions)):
        (out / fname).write_text(json.dumps(payload))


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$GIGPO_CACHE``, else ``~/.cache/gigpo``; catalogs go under ``webshop/``."""
    root = cache_dir or os.environ.get("GIGPO_CACHE") or Path.home() / ".cache" / "gigpo"
    return Path(root) / "webshop"


def ensure_catalog(num_products: int = 1000, seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """Directory of the generated catalog for these parameters, generating it on first use."""
    params = {"num_products": num_products, "seed": seed, "version": GENERATOR_VERSION}
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    final = cache_root(cache_dir) / f"{num_products}p-seed{seed}-{digest}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    try:
        generate(tmp, num_products=num_products, seed=seed)
        (tmp / "params.json").write_text(json.dumps(params))
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # lost a race only if another process finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
