"""The reproduction study's summary: final success, cost and significance per method.

    python -m analysis.study multirun/repro_sokoban --out analysis/results/sokoban [--baseline GRPO]

Writes, beside the paper-style tables of ``analysis.tables`` and the plots of ``analysis.plots``:
- ``methods.csv`` / ``methods.md``: per method, seeds, final validation success (mean, std), median
  iteration time and its split, peak memory, env steps, and the step-group statistics averaged over
  training (count, mean size, singleton share);
- ``significance.md`` / ``significance.csv``: each method against ``--baseline`` by Welch's t-test
  on final success across seeds (scipy ``ttest_ind(equal_var=False)``) and a 95% percentile
  bootstrap interval of the difference in means (10,000 resamples of seeds, seeded); none with a
  single seed on either side;
- ``runs/<cell>_s<seed>/``: each run's raw logs (config.yaml, metrics.jsonl, provenance.json,
  summary.json; no checkpoints), small enough to commit beside the tables, so that
  ``python -m analysis.tables <out>/runs`` recomputes every table from them.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from gigpo.analysis.load import Run, load_runs, runs_frame
from gigpo.analysis.plots import plot_all
from gigpo.analysis.tables import build_tables, label_cells, order_methods, write_tables

RAW_LOGS = ("config.yaml", "metrics.jsonl", "provenance.json", "summary.json")

COST = {"time/rollout_s": "rollout s", "time/advantage_s": "advantage s", "time/update_s": "update s"}
GROUPS = {"step_groups/count": "step groups", "step_groups/mean_size": "mean group size",
          "step_groups/singleton_share": "singleton share"}


def per_run(run: Run) -> dict:
    """One row per run: final success plus training-time medians and means from its history."""
    h = run.history
    train = h[h["time/rollout_s"].notna()] if "time/rollout_s" in h else h.iloc[0:0]
    row = {"method": run.method, "seed": run.seed, "final success": run.final.get("val/success", np.nan),
           "env steps": float(h["env_steps"].max()) if "env_steps" in h else np.nan,
           "peak MiB": float(h["perf/peak_mem_mb"].max()) if "perf/peak_mem_mb" in h else np.nan}
    if len(train):
        parts = train[list(COST)].sum(axis=1)
        row["iteration s"] = float(parts.iloc[1:].median() if len(parts) > 1 else parts.median())
        row.update({label: float(train[key].median()) for key, label in COST.items()})
        row.update({label: float(train[key].mean()) for key, label in GROUPS.items() if key in train})
    return row


def method_summary(frame: pd.DataFrame) -> pd.DataFrame:
    grouped = frame.groupby("method")
    out = grouped.agg(seeds=("seed", "count"), success_mean=("final success", "mean"),
                      success_std=("final success", "std"))
    numeric = [c for c in frame.columns if c not in ("method", "seed", "final success")]
    out = out.join(grouped[numeric].mean())
    return out.loc[order_methods(out.index)]


def bootstrap_diff(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(a) - mean(b), resampling seeds within each method."""
    rng = np.random.default_rng(seed)
    diffs = rng.choice(a, (resamples, len(a))).mean(1) - rng.choice(b, (resamples, len(b))).mean(1)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def significance(frame: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each method vs ``baseline``: difference in mean final success, Welch's t and p, bootstrap CI."""
    if baseline not in set(frame["method"]):
        raise ValueError(f"--baseline {baseline!r} is not among the methods {sorted(set(frame['method']))}")
    base = frame.loc[frame["method"] == baseline, "final success"].to_numpy()
    rows = []
    for method in order_methods(set(frame["method"]) - {baseline}):
        values = frame.loc[frame["method"] == method, "final success"].to_numpy()
        several = len(values) > 1 and len(base) > 1  # one seed: no spread, so no test and no interval
        t, p = stats.ttest_ind(values, base, equal_var=False) if several else (np.nan, np.nan)
        low, high = bootstrap_diff(values, base) if several else (np.nan, np.nan)
        rows.append({"method": method, "vs": baseline, "diff": values.mean() - base.mean(), "welch t": t,
                     "p": p, "ci95 low": low, "ci95 high": high, "seeds": f"{len(values)} vs {len(base)}"})
    return pd.DataFrame(rows).set_index("method")


def keep_raw_logs(runs: list[Run], folder: Path) -> list[Path]:
    """Copy each local run's small raw logs (``RAW_LOGS``) to ``folder/<cell>_s<seed>/``; runs
    already inside ``folder`` stay as they are. Returns the run folders there."""
    frame = label_cells(runs_frame(runs))
    kept = []
    for run, cell in zip(runs, frame["cell"]):
        source = Path(run.source)
        if not source.is_dir():  # a W&B run: nothing on disk to keep
            continue
        if folder.resolve() in source.resolve().parents:
            kept.append(source)
            continue
        slug = re.sub(r"[^A-Za-z0-9.=+-]+", "_", cell).strip("_").lower()
        target = folder / f"{slug}_s{run.seed}"
        target.mkdir(parents=True, exist_ok=True)
        for name in RAW_LOGS:
            if (source / name).is_file():
                shutil.copy2(source / name, target / name)
        kept.append(target)
    return kept


def plain_markdown(table: pd.DataFrame) -> str:
    """A Markdown table of plain values (numbers rounded to 4 significant digits)."""
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join([str(table.index.name or ""), *map(str, table.columns)]) + " |",
             "|" + "|".join(["---"] * (len(table.columns) + 1)) + "|"]
    lines += ["| " + " | ".join([str(i), *map(fmt, row)]) + " |" for i, row in table.iterrows()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--baseline", default="GRPO")
    parser.add_argument("--include-unfinished", action="store_true", help="also count runs without a final validation")
    args = parser.parse_args(argv)
    runs = load_runs(args.runs)
    unfinished = [r.source for r in runs if not r.finished]
    if unfinished and not args.include_unfinished:
        print(f"leaving out {len(unfinished)} unfinished run(s) (no final validation): {unfinished}")
        runs = [r for r in runs if r.finished]
    args.out.mkdir(parents=True, exist_ok=True)
    keep_raw_logs(runs, args.out / "runs")
    frame = pd.DataFrame([per_run(r) for r in runs])
    summary = method_summary(frame)
    sig = significance(frame, args.baseline)
    frame.to_csv(args.out / "runs.csv", index=False)
    summary.to_csv(args.out / "methods.csv")
    sig.to_csv(args.out / "significance.csv")
    (args.out / "methods.md").write_text(plain_markdown(summary))
    (args.out / "significance.md").write_text(plain_markdown(sig))
    write_tables(build_tables(runs_frame(runs), include_unfinished=args.include_unfinished), args.out)
    plot_all(runs, args.out)
    print(plain_markdown(summary))
    print(plain_markdown(sig))


if __name__ == "__main__":
    main()
