"""The horizon study's analysis, exactly as pre-registered in analysis/results/horizon/PROTOCOL.md.

    python -m analysis.horizon multirun/horizon_d2 multirun/horizon_d3 multirun/horizon_d5 --out analysis/results/horizon

Per setting (``env.distance`` = d, the optimal solution length) and method: final validation
success and the area under the validation-success curve over env steps (trapezoid over the
validation points, divided by the budget ``train.max_env_steps``), mean ± std over seeds.

Primary test, per setting: GiGPO (mean) vs GRPO on final success by Welch's t-test and a 95%
bootstrap interval of the difference (``analysis.study``), p-values Holm-corrected over the
settings. Trend: gap(d_max) - gap(d_min) with a 95% bootstrap interval, seeds resampled within
each of the four cells. Decision (H1: the gap grows with d): support when the gap's point
estimates increase with d and the trend interval lies above 0; refutation when it lies below 0,
or contains 0 while the largest setting's gap interval lies at or below 0; else inconclusive. A
setting where both methods end below 5% mean success is uninformative (floor rule); when the
smallest or the largest setting is, the trend, and so the decision, is uninformative.
Secondary: every other method vs GRPO per setting (Holm over all of them) and AUC comparisons.

Writes ``RESULTS.md`` (tables, tests, decision), ``horizon.csv`` (per-run rows), the
gap-vs-horizon plot with intervals, learning curves per setting with min-max seed bands, and
each run's raw logs under ``runs/`` (``analysis.study.keep_raw_logs``).

The primary comparison must be matched (``analysis.tables.unmatched_keys``): the committed study
compared GiGPO (mean) with GRPO at its default mean_std, so it differs in the normaliser too, and
the analysis refuses it unless ``--allow-unmatched`` is given (its RESULTS.md then says so).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gigpo.analysis.load import Run, history_frame, load_runs, runs_frame
from gigpo.analysis.plots import learning_curves, points
from gigpo.analysis.stats import holm
from gigpo.analysis.study import GROUPS as GROUP_STATS
from gigpo.analysis.study import keep_raw_logs, plain_markdown, refuse_unmatched, significance
from gigpo.analysis.tables import order_methods

PRIMARY, BASELINE = "GiGPO (mean)", "GRPO"
FLOOR = 0.05


def auc(run: Run) -> float:
    """Area under the validation-success curve over env steps (trapezoid over the validation
    points, iteration 0 to the final validation) divided by the budget ``train.max_env_steps``."""
    x, y = points(run.history, "env_steps", "val/success")
    budget = float(run.get("train.max_env_steps") or 0)
    if budget <= 0 or len(x) < 2:
        raise SystemExit(f"{run.source}: the AUC needs a budget (train.max_env_steps > 0) and two validations; "
                         f"got max_env_steps={run.get('train.max_env_steps')}, {len(x)} validation(s)")
    return float(np.trapezoid(y, x) / budget)


def per_run(run: Run) -> dict:
    """Distance, method, seed, final success, normalised AUC and mean step-group statistics."""
    row = {"distance": int(run.get("env.distance")), "method": run.method, "seed": run.seed,
           "final success": float(run.final["val/success"]), "auc": auc(run)}
    train = run.history[run.history["time/rollout_s"].notna()] if "time/rollout_s" in run.history else None
    for key, label in GROUP_STATS.items():
        row[label] = float(train[key].mean()) if train is not None and key in train else np.nan
    return row


def trend_interval(frame: pd.DataFrame, low_d: int, high_d: int, resamples: int = 10_000, seed: int = 0,
                   metric: str = "final success", arm: str = PRIMARY, base: str = BASELINE
                   ) -> tuple[float, float, float]:
    """gap(high_d) - gap(low_d), gap = mean(arm) - mean(base) of ``metric``, with a 95% percentile
    bootstrap interval resampling seeds within each of the four (setting, method) cells."""
    rng = np.random.default_rng(seed)

    def values(d, method):
        return frame.loc[(frame["distance"] == d) & (frame["method"] == method), metric].to_numpy()

    cells = [values(high_d, arm), values(high_d, base), values(low_d, arm), values(low_d, base)]
    means = [rng.choice(c, (resamples, len(c))).mean(1) for c in cells]
    diffs = (means[0] - means[1]) - (means[2] - means[3])
    point = (cells[0].mean() - cells[1].mean()) - (cells[2].mean() - cells[3].mean())
    return float(point), float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def decide(primary: pd.DataFrame, trend: tuple[float, float, float], floors: dict[int, bool]) -> str:
    """The protocol's decision rule, in words."""
    ends = (primary.index[0], primary.index[-1])
    if any(floors[d] for d in ends):
        return (f"uninformative: the trend's end settings d={ends[0]} and d={ends[-1]} are not both above "
                "the floor rule")
    informative = primary.loc[[d for d in primary.index if not floors[d]]]
    _, low, high = trend
    rising = bool(np.all(np.diff(informative["diff"].to_numpy()) > 0))
    top = primary.loc[ends[-1]]
    if rising and low > 0:
        return "support for H1"
    if high < 0 or (low <= 0 <= high and top["ci95 high"] <= 0):
        return "refutation of H1"
    return "inconclusive at this budget and seed count"


def gap_plot(tests: pd.DataFrame) -> Figure:
    """Difference to GRPO in final success (points) with 95% bootstrap intervals, per method, vs d."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    methods = order_methods(tests["method"].unique())
    width = 0.12
    for k, method in enumerate(methods):
        rows = tests[tests["method"] == method].sort_values("distance")
        x = rows["distance"].to_numpy() + (k - (len(methods) - 1) / 2) * width
        diff = 100 * rows["diff"].to_numpy()
        err = np.vstack([diff - 100 * rows["ci95 low"].to_numpy(), 100 * rows["ci95 high"].to_numpy() - diff])
        ax.errorbar(x, diff, yerr=err, marker="o", capsize=3, label=method, linestyle="-" if method == PRIMARY else ":")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(sorted(tests["distance"].unique()))
    ax.set_xlabel("horizon: optimal solution length d (GridNav)")
    ax.set_ylabel("final success - GRPO's (points), 95% CI")
    ax.legend(fontsize=8)
    return fig


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--allow-unmatched", action="store_true",
                        help="report an unmatched primary comparison (arms differing beyond the method) instead of refusing")
    args = parser.parse_args(argv)
    runs = load_runs(args.runs)
    unfinished = [r.source for r in runs if not r.finished]
    if unfinished:
        raise SystemExit(f"{len(unfinished)} run(s) have no final validation (finish them first): {unfinished[:3]}")
    frame = pd.DataFrame([per_run(r) for r in runs]).sort_values(["distance", "method", "seed"])
    configs = runs_frame(runs)
    distances = sorted(frame["distance"].unique())
    notes, tests, auc_tests = [], [], []
    for d in distances:  # every test once; an unmatched primary comparison refuses before anything is written
        sub, at_d = frame[frame["distance"] == d], configs[configs["env.distance"] == d]
        table = significance(sub, BASELINE, at_d)
        notes += [f"d={d}: {n}" for n in refuse_unmatched(table, [PRIMARY], args.allow_unmatched)]
        tests.append(table.reset_index().assign(distance=d))
        auc_tests.append(significance(sub, BASELINE, metric="auc").reset_index().assign(distance=d))
    args.out.mkdir(parents=True, exist_ok=True)
    keep_raw_logs(runs, args.out / "runs")  # also refuses a seed counted twice in a cell
    frame.to_csv(args.out / "horizon.csv", index=False)

    summary = frame.groupby(["distance", "method"]).agg(
        seeds=("seed", "count"), success=("final success", "mean"), success_std=("final success", "std"),
        auc=("auc", "mean"), auc_std=("auc", "std"), **{label.replace(" ", "_"): (label, "mean")
                                                        for label in GROUP_STATS.values()})
    tests, auc_tests = pd.concat(tests, ignore_index=True), pd.concat(auc_tests, ignore_index=True)
    is_primary = tests["method"] == PRIMARY
    tests["p holm"] = np.nan
    tests.loc[is_primary, "p holm"] = holm(tests.loc[is_primary, "p"])
    tests.loc[~is_primary, "p holm"] = holm(tests.loc[~is_primary, "p"])
    auc_tests["p holm"] = holm(auc_tests["p"])
    primary = tests[is_primary].set_index("distance")
    success = summary["success"]
    floors = {d: bool(success.get((d, PRIMARY), 0) < FLOOR and success.get((d, BASELINE), 0) < FLOOR)
              for d in distances}
    trend = trend_interval(frame, distances[0], distances[-1])
    decision = decide(primary, trend, floors)

    for d in distances:
        history = history_frame([r for r in runs if int(r.get("env.distance")) == d])
        learning_curves(history, f"gridnav d={d}").savefig(args.out / f"curves_d{d}.png", dpi=110)
    gap_plot(tests).savefig(args.out / "gap_vs_horizon.png", dpi=110)

    report = "\n".join([
        "# Horizon study: results", "",
        "Computed by `python -m analysis.horizon` as pre-registered in PROTOCOL.md.", "",
        *[f"**Unmatched primary comparison (not evidence for step-level credit):** {n}.\n" for n in notes],
        "## Final validation success and AUC (mean, std over seeds)", "", plain_markdown(summary), "",
        f"## Primary test: {PRIMARY} vs {BASELINE} per setting (Holm over settings)", "",
        plain_markdown(primary[["diff", "welch t", "p", "p holm", "ci95 low", "ci95 high", "seeds"]]), "",
        f"Trend, gap(d={distances[-1]}) - gap(d={distances[0]}): {trend[0]:+.4f} "
        f"(95% bootstrap interval [{trend[1]:+.4f}, {trend[2]:+.4f}])", "",
        "Floor rule (both below 5% success): " + ", ".join(f"d={d}: {'yes' if f else 'no'}" for d, f in floors.items()),
        "", f"**Decision: {decision}.**", "",
        "## Secondary: every other method vs GRPO on final success (Holm over all of them)", "",
        plain_markdown(tests[~is_primary].set_index(["distance", "method"])[
            ["diff", "p", "p holm", "ci95 low", "ci95 high", "seeds"]]), "",
        "## Secondary: AUC vs GRPO (Holm over all)", "",
        plain_markdown(auc_tests.set_index(["distance", "method"])[["diff", "p", "p holm", "ci95 low", "ci95 high"]]),
    ])
    (args.out / "RESULTS.md").write_text(report + "\n")
    print(report)
    return decision


if __name__ == "__main__":
    main()
