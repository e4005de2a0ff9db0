"""The reproduction study's summary: final success, cost and significance per method.

    python -m analysis.study multirun/repro_sokoban --out analysis/results/sokoban [--baseline GRPO]
        [--primary "GiGPO (mean)"] [--last-k 3] [--allow-unmatched]

Writes, beside the paper-style tables of ``analysis.tables`` and the plots of ``analysis.plots``:
- ``methods.csv`` / ``methods.md``: per method, seeds, final validation success (mean, std), the
  mean of the last k validations (k = ``--last-k``, declared), the interquartile mean of final
  success over seeds with its 95% bootstrap interval (``analysis.stats``), median iteration time
  and its split, peak memory, env steps, and the step-group statistics averaged over training;
- ``significance.md`` / ``significance.csv``: each method against ``--baseline`` on final success
  by Welch's t-test, a 95% bootstrap interval of the difference in means (seeds resampled within
  each arm), Holm-adjusted p over the comparisons shown (``p holm``), and the config keys in which
  the two arms differ beyond the estimator (``also differ in``; ``analysis.tables.unmatched_keys``);
  none with a single seed on either side;
- ``runs/<cell>_s<seed>/``: each run's raw logs (config.yaml, metrics.jsonl, provenance.json,
  summary.json; no checkpoints), small enough to commit beside the tables, so that
  ``python -m analysis.tables <out>/runs`` recomputes every table from them.

A comparison whose arms differ in more than the method is printed with those keys named; when a
primary comparison (``--primary``, default: every method against the baseline) is unmatched, the
study refuses to write anything unless ``--allow-unmatched`` is given, and then says so in its files.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from gigpo.analysis import stats
from gigpo.analysis.load import Run, load_runs, runs_frame
from gigpo.analysis.plots import plot_all
from gigpo.analysis.tables import (build_tables, label_cells, order_methods, table_notes, unmatched_keys,
                                   write_tables)

RAW_LOGS = ("config.yaml", "metrics.jsonl", "provenance.json", "summary.json")

COST = {"time/rollout_s": "rollout s", "time/advantage_s": "advantage s", "time/update_s": "update s"}
GROUPS = {"step_groups/count": "step groups", "step_groups/mean_size": "mean group size",
          "step_groups/singleton_share": "singleton share"}


LAST_K = 3
"""Default k of the last-k validation mean."""


def per_run(run: Run, last_k: int = LAST_K) -> dict:
    """One row per run: final success, the last-k validation mean, and training-time medians and
    means from its history."""
    h = run.history
    train = h[h["time/rollout_s"].notna()] if "time/rollout_s" in h else h.iloc[0:0]
    row = {"method": run.method, "seed": run.seed, "final success": run.final.get("val/success", np.nan),
           f"last {last_k} mean": stats.last_k_mean(h, last_k, run.source),
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
    intervals = {method: stats.iqm_interval(values) for method, values in grouped["final success"]}
    out["success_iqm"] = [intervals[m][0] for m in out.index]
    out["iqm ci95 low"] = [intervals[m][1] for m in out.index]
    out["iqm ci95 high"] = [intervals[m][2] for m in out.index]
    numeric = [c for c in frame.columns if c not in ("method", "seed", "final success")]
    out = out.join(grouped[numeric].mean())
    return out.loc[order_methods(out.index)]


def significance(frame: pd.DataFrame, baseline: str, configs: pd.DataFrame | None = None,
                 metric: str = "final success") -> pd.DataFrame:
    """Each method vs ``baseline``: difference in the mean of ``metric`` (a column of ``frame``), Welch's t
    and p, bootstrap CI, Holm over the rows, and (given the runs' ``configs``, ``runs_frame`` rows in the
    same order as ``frame``) the keys the two arms differ in beyond the estimator."""
    if baseline not in set(frame["method"]):
        raise ValueError(f"--baseline {baseline!r} is not among the methods {sorted(set(frame['method']))}")
    base = frame.loc[frame["method"] == baseline, metric].to_numpy()
    rows = []
    for method in order_methods(set(frame["method"]) - {baseline}):
        values = frame.loc[frame["method"] == method, metric].to_numpy()
        several = len(values) > 1 and len(base) > 1  # one seed: no spread, so no test and no interval
        t, p = stats.welch(values, base)
        low, high = stats.bootstrap_diff(values, base) if several else (np.nan, np.nan)
        differ = ", ".join(unmatched_keys(configs, method, baseline)) if configs is not None else ""
        rows.append({"method": method, "vs": baseline, "diff": values.mean() - base.mean(), "welch t": t,
                     "p": p, "ci95 low": low, "ci95 high": high, "seeds": f"{len(values)} vs {len(base)}",
                     "also differ in": differ or "-"})
    table = pd.DataFrame(rows).set_index("method")
    table.insert(list(table.columns).index("p") + 1, "p holm", stats.holm(table["p"]))
    return table


def refuse_unmatched(sig: pd.DataFrame, primary: list[str], allow: bool) -> list[str]:
    """The primary comparisons whose arms differ beyond the method, as notes; refuses (SystemExit)
    unless ``allow``."""
    unknown = [m for m in primary if m not in sig.index]
    if unknown:
        raise SystemExit(f"--primary {unknown}: not compared with the baseline; compared: {list(sig.index)}")
    notes = [f"{m} vs {sig.loc[m, 'vs']} also differ in: {sig.loc[m, 'also differ in']}"
             for m in primary if sig.loc[m, "also differ in"] != "-"]
    if notes and not allow:
        raise SystemExit("unmatched primary comparison(s): " + "; ".join(notes) + ". The difference would not be "
                         "the method's alone: run matched arms (e.g. the baseline with the same algo.mode), or "
                         "pass --allow-unmatched to report them as unmatched, exploratory comparisons.")
    return notes


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
    parser.add_argument("--primary", action="append", default=[],
                        help="a primary comparison: this method vs the baseline (repeatable; default: every method)")
    parser.add_argument("--last-k", type=int, default=LAST_K, help="k of the last-k validation mean")
    parser.add_argument("--allow-unmatched", action="store_true",
                        help="report primary comparisons whose arms differ beyond the method instead of refusing")
    parser.add_argument("--include-unfinished", action="store_true", help="also count runs without a final validation")
    args = parser.parse_args(argv)
    runs = load_runs(args.runs)
    unfinished = [r.source for r in runs if not r.finished]
    if unfinished and not args.include_unfinished:
        print(f"leaving out {len(unfinished)} unfinished run(s) (no final validation): {unfinished}")
        runs = [r for r in runs if r.finished]
    frame = pd.DataFrame([per_run(r, args.last_k) for r in runs])
    configs = runs_frame(runs)
    sig = significance(frame, args.baseline, configs)
    notes = refuse_unmatched(sig, args.primary or list(sig.index), args.allow_unmatched)
    args.out.mkdir(parents=True, exist_ok=True)
    keep_raw_logs(runs, args.out / "runs")
    summary = method_summary(frame)
    frame.to_csv(args.out / "runs.csv", index=False)
    summary.to_csv(args.out / "methods.csv")
    sig.to_csv(args.out / "significance.csv")
    warning = "".join(f"\n**Unmatched (exploratory, not evidence for the method):** {n}.\n" for n in notes)
    (args.out / "methods.md").write_text(plain_markdown(summary))
    (args.out / "significance.md").write_text(plain_markdown(sig) + warning)
    write_tables(build_tables(configs, include_unfinished=args.include_unfinished), args.out,
                 table_notes(configs, args.include_unfinished))
    plot_all(runs, args.out)
    print(plain_markdown(summary))
    print(plain_markdown(sig) + warning)


if __name__ == "__main__":
    main()
