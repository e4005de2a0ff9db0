"""Figures from run logs, one PNG per environment and figure kind.

    python -m analysis.plots multirun/main --out analysis_out [--band std]

- ``curves_<env>.png``: validation and training success vs environment steps and vs wall time;
  per method the mean over seeds as a line and the min-max (or ±std) band over seeds. Seeds are
  interpolated onto a common x grid over the range all of them cover.
- ``step_groups_<env>.png``: the step-group size distribution over training, stacked shares of
  groups of size 1, 2-5, 6-9 and >=10 per iteration, averaged over seeds (the paper's analysis of
  anchor-state groups).
- ``advantage_<env>.png``: the spread of episode- vs step-level advantages (their std) over training.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state), rendered by Agg.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gigpo.analysis.load import history_frame, load_runs
from gigpo.analysis.tables import order_methods

SIZE_BUCKETS = {"1": "step_groups/size_hist/1", "2-5": "step_groups/size_hist/2-5",
                "6-9": "step_groups/size_hist/6-9", ">=10": "step_groups/size_hist/10+"}
X_AXES = {"env_steps": "environment steps", "time/wall_s": "wall time (s)"}


def points(run: pd.DataFrame, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one run where ``y`` was logged, sorted by x.

    Validation runs at the start of an iteration, before its rollout, while the line's ``env_steps``
    and ``time/wall_s`` are read after it; so a validation point sits at the previous line's x
    (0 for the first), except the final validation, which runs after everything.
    """
    run = run.sort_values("iter")
    xs = run[x].astype(float)
    if y.startswith("val/"):
        before = xs.shift(1).fillna(0.0)
        final = run["final"].fillna(False).astype(bool) if "final" in run.columns else False
        xs = before.where(~final, xs)
    keep = run[y].notna() & xs.notna() if y in run.columns else pd.Series(False, index=run.index)
    order = np.argsort(xs[keep].to_numpy(), kind="stable")
    return xs[keep].to_numpy()[order], run.loc[keep, y].astype(float).to_numpy()[order]


def seed_band(curves: list[tuple[np.ndarray, np.ndarray]], band: str = "minmax"):
    """Common grid, mean, lower and upper edge of the band over seeds (min-max or mean ± std)."""
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return None
    lo, hi = max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves)
    grid = np.unique(np.concatenate([x[(x >= lo) & (x <= hi)] for x, _ in curves]))
    if len(grid) == 0:  # the seeds' ranges do not overlap: show the longest one alone
        grid = max(curves, key=lambda c: len(c[0]))[0]
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])  # [seeds, grid]
    mean = ys.mean(axis=0)
    if band == "std":
        std = ys.std(axis=0)
        return grid, mean, mean - std, mean + std
    return grid, mean, ys.min(axis=0), ys.max(axis=0)


def learning_curves(history: pd.DataFrame, env: str, band: str = "minmax") -> Figure:
    metrics = [m for m in ("val/success", "train/success") if m in history.columns]
    fig = Figure(figsize=(11, 3.6 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), len(X_AXES), squeeze=False)
    for row, metric in enumerate(metrics):
        for col, (x, xlabel) in enumerate(X_AXES.items()):
            ax = axes[row][col]
            for method in order_methods(history["method"].unique()):
                runs = history[history["method"] == method]
                curves = [points(run, x, metric) for _, run in runs.groupby("source")]
                result = seed_band(curves, band)
                if result is None:
                    continue
                grid, mean, lower, upper = result
                line, = ax.plot(grid, mean, label=f"{method} (n={len(curves)})")
                ax.fill_between(grid, lower, upper, color=line.get_color(), alpha=0.2, linewidth=0)
            ax.set(xlabel=xlabel, ylabel=metric, ylim=(-0.02, 1.02))
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    band_name = "min-max" if band == "minmax" else "±std"
    fig.suptitle(f"{env}: success, mean over seeds with {band_name} band")
    return fig


def step_group_sizes(history: pd.DataFrame, env: str) -> Figure:
    methods = [m for m in order_methods(history["method"].unique())
               if history.loc[history["method"] == m, list(SIZE_BUCKETS.values())].notna().any().any()]
    fig = Figure(figsize=(4.5 * max(len(methods), 1), 3.6), layout="constrained")
    axes = fig.subplots(1, max(len(methods), 1), squeeze=False)[0]
    for ax, method in zip(axes, methods):
        shares = (history[history["method"] == method].dropna(subset=[SIZE_BUCKETS["1"]])
                  .groupby("iter")[list(SIZE_BUCKETS.values())].mean())  # [iters, buckets], mean over seeds
        ax.stackplot(shares.index, shares.to_numpy().T, labels=[f"size {b}" for b in SIZE_BUCKETS], alpha=0.85)
        ax.set(title=method, xlabel="iteration", ylabel="share of step groups", ylim=(0, 1))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], fontsize=8, loc="outside right upper")
    fig.suptitle(f"{env}: step-group size distribution over training")
    return fig


def advantage_spread(history: pd.DataFrame, env: str) -> Figure:
    methods = order_methods(history["method"].unique())
    fig = Figure(figsize=(4.5 * len(methods), 3.6), layout="constrained")
    axes = fig.subplots(1, len(methods), squeeze=False, sharey=True)[0]
    for ax, method in zip(axes, methods):
        runs = history[history["method"] == method]
        for metric, label in (("adv/episode_std", "episode std"), ("adv/step_std", "step std")):
            if metric not in runs.columns or runs[metric].isna().all():
                continue
            per_iter = runs.dropna(subset=[metric]).groupby("iter")[metric].agg(["mean", "min", "max"])
            line, = ax.plot(per_iter.index, per_iter["mean"], label=label)
            ax.fill_between(per_iter.index, per_iter["min"], per_iter["max"], color=line.get_color(), alpha=0.2,
                            linewidth=0)
        ax.set(title=method, xlabel="iteration", ylabel="advantage std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{env}: advantage spread, episode vs step level (min-max band over seeds)")
    return fig


def plot_all(runs_or_paths, out: Path, band: str = "minmax") -> list[Path]:
    """Write every figure for every environment into ``out``; returns the PNG paths."""
    history = history_frame(runs_or_paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for env, runs in history.groupby("env"):
        figures = {"curves": learning_curves(runs, env, band), "advantage": advantage_spread(runs, env)}
        if SIZE_BUCKETS["1"] in runs.columns:
            figures["step_groups"] = step_group_sizes(runs, env)
        for kind, fig in figures.items():
            path = out / f"{kind}_{env}.png"
            fig.savefig(path, dpi=110)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(prog="python -m analysis.plots", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run, multirun or sweep directories, or wandb:ENTITY/PROJECT")
    parser.add_argument("--out", type=Path, default=Path("analysis_out"), help="output folder")
    parser.add_argument("--band", choices=["minmax", "std"], default="minmax", help="band over seeds")
    args = parser.parse_args(argv)
    written = plot_all(load_runs(args.runs), args.out, args.band)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
