"""WebShop env speed at several generated catalog sizes: ``python -m benchmarks.webshop``.

For each size: catalog generation (or cache hit), load, BM25 index build, uncached search
latency over goal queries, and env steps/s of a random policy (uniform over admissible actions,
searching the goal's query) and of the scripted expert, on one process. Prints a table and,
with ``--out``, writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from gigpo.envs.webshop import WebShopEnv
from gigpo.envs.webshop.catalog import ensure_catalog
from gigpo.envs.webshop.data import load_catalog
from gigpo.envs.webshop.expert import expert_action, expert_query
from gigpo.envs.webshop.search import search_index


def steps_per_second(env: WebShopEnv, policy, num_steps: int) -> tuple[float, float]:
    """(steps/s, success rate) of ``policy(env, step) -> action`` over ``num_steps`` steps."""
    seed, wins, episodes, count = 0, 0, 0, 0
    step = env.reset(seed)
    start = time.perf_counter()
    while count < num_steps:
        step = env.step(policy(env, step))
        count += 1
        if step.done:
            wins, episodes, seed = wins + step.won, episodes + 1, seed + 1
            step = env.reset(seed)
    return count / (time.perf_counter() - start), wins / max(episodes, 1)


def random_policy(rng: random.Random):
    def act(env: WebShopEnv, step) -> str:
        action = rng.choice(step.admissible)
        return f"search[{expert_query(env.goal)}]" if action.startswith("search[") else action
    return act


def bench(num_products: int, num_steps: int, num_queries: int) -> dict:
    row: dict = {"num_products": num_products}
    t = time.perf_counter()
    directory = ensure_catalog(num_products)
    row["generate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    catalog = load_catalog(directory)
    row["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    index = search_index(catalog)
    row["index_s"] = time.perf_counter() - t
    queries = [expert_query(g) for g in catalog.goals[:num_queries]]
    latencies = []
    for q in queries:
        t = time.perf_counter()
        index._search(q)  # uncached
        latencies.append(time.perf_counter() - t)
    row["search_ms_median"] = 1000 * statistics.median(latencies)
    row["search_ms_p95"] = 1000 * sorted(latencies)[int(0.95 * (len(latencies) - 1))]
    env = WebShopEnv(num_products=num_products, split="train")
    row["random_steps_per_s"], row["random_success"] = steps_per_second(env, random_policy(random.Random(0)), num_steps)
    row["expert_steps_per_s"], row["expert_success"] = steps_per_second(env, lambda e, s: expert_action(e), num_steps)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--steps", type=int, default=5000, help="env steps per policy and size")
    parser.add_argument("--queries", type=int, default=200, help="uncached searches per size")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    rows = [bench(n, args.steps, args.queries) for n in args.sizes]
    keys = list(rows[0])
    print(" ".join(f"{k:>20}" for k in keys))
    for row in rows:
        print(" ".join(f"{row[k]:>20.3f}" if isinstance(row[k], float) else f"{row[k]:>20}" for k in keys))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
