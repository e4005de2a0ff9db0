"""Figures from run logs, one PNG per environment and figure kind.

    python -m analysis.plots multirun/main --out analysis_out [--band std]

- ``curves_<env>.png``: validation and training success (and the WebShop score, where logged) vs
  environment steps and vs wall time; per method the mean over seeds as a line and the min-max (or
  ±std) band over seeds. Seeds are interpolated onto a common x grid over the range all of them cover.
- ``step_groups_<env>.png``: the step-group size distribution over training, stacked shares of
  groups of size 1, 2-5, 6-9 and >=10 per iteration, averaged over seeds (the paper's analysis of
  anchor-state groups).
- ``advantage_<env>.png``: the spread of episode- vs step-level advantages (their std) over training.

A line (and its band, labelled as the spread over seeds) pools only runs that differ in the seed
alone: runs of one method that differ in any setting (a sweep's N and w, the horizon's d) are
separate lines labelled ``GiGPO (mean), algo.step_weight=0.5``, exactly the cells of
``analysis.tables`` (``label_cells``). WebShop figures are named by catalog (``webshop-synthetic``).

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state), rendered by Agg.
Readability rules: each method has its own line style and marker (overlapping curves stay apart);
validation points carry markers, so a line between two far-apart validations reads as an
interpolation, not as data; y axes span the data with a margin; iteration axes tick at integers;
a panel without data is not drawn.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gigpo.analysis.load import as_runs, history_frame, load_runs, runs_frame
from gigpo.analysis.tables import label_cells, order_methods

SIZE_BUCKETS = {"1": "step_groups/size_hist/1", "2-5": "step_groups/size_hist/2-5",
                "6-9": "step_groups/size_hist/6-9", ">=10": "step_groups/size_hist/10+"}
X_AXES = {"env_steps": "environment steps", "time/wall_s": "wall time (s)"}
CURVE_METRICS = ("val/success", "train/success", "val/score", "train/score")
# Per method, in order: line style and marker, so lines that overlap stay distinguishable.
STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 1)), "P")]
SPARSE_POINTS = 40  # curves with at most this many points show a marker at each


def style(index: int) -> dict:
    linestyle, marker = STYLES[index % len(STYLES)]
    return {"linestyle": linestyle, "marker": marker}


def fit_ylim(ax, lows: list[np.ndarray], highs: list[np.ndarray], bounds: tuple[float, float] | None = None,
             min_span: float = 0.05) -> None:
    """Scale the y axis to the plotted data with a margin (at least ``min_span`` tall), kept inside
    ``bounds`` plus the margin (a share never shows below 0 or above 1 by more than that)."""
    lo, hi = float(min(np.min(v) for v in lows)), float(max(np.max(v) for v in highs))
    span = max(hi - lo, min_span)
    centre = (lo + hi) / 2
    lo, hi = centre - span / 2, centre + span / 2
    if bounds is not None:  # a too-short range grows away from the bound it would cross
        shift = max(bounds[0] - lo, 0.0) - max(hi - bounds[1], 0.0)
        lo, hi = lo + shift, hi + shift
    margin = 0.08 * span
    ax.set_ylim(lo - margin, hi + margin)


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
    methods = order_methods(history["method"].unique())
    panels = {}  # (metric, x) -> [(method, n seeds, grid, mean, lower, upper)], panels with data only
    for metric in (m for m in CURVE_METRICS if m in history.columns):
        for x in (x for x in X_AXES if x in history.columns):
            drawn = []
            for method in methods:
                runs = history[history["method"] == method]
                curves = [points(run, x, metric) for _, run in runs.groupby("source")]
                result = seed_band(curves, band)
                if result is not None:
                    drawn.append((method, len(curves), *result))
            if drawn:
                panels[(metric, x)] = drawn
    rows = list(dict.fromkeys(metric for metric, _ in panels))
    cols = list(dict.fromkeys(x for _, x in panels))
    fig = Figure(figsize=(5.5 * max(len(cols), 1), 3.6 * max(len(rows), 1)), layout="constrained")
    axes = fig.subplots(max(len(rows), 1), max(len(cols), 1), squeeze=False)
    for row, metric in enumerate(rows):
        for col, x in enumerate(cols):
            ax = axes[row][col]
            if (metric, x) not in panels:  # this metric was never logged against this x
                fig.delaxes(ax)
                continue
            lows, highs = [], []
            for method, seeds, grid, mean, lower, upper in panels[(metric, x)]:
                index = methods.index(method)
                line_style = style(index)
                if not metric.startswith("val/") and len(grid) > SPARSE_POINTS:
                    line_style["marker"] = None
                line, = ax.plot(grid, mean, label=f"{method} (n={seeds})", markersize=4, **line_style)
                ax.fill_between(grid, lower, upper, color=line.get_color(), alpha=0.15, linewidth=0)
                lows.append(lower)
                highs.append(upper)
            fit_ylim(ax, lows, highs, bounds=(0.0, 1.0))
            ax.set(xlabel=X_AXES[x], ylabel=metric)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no success or score logged", ha="center", va="center")
        axes[0][0].set_axis_off()
    band_name = "min-max" if band == "minmax" else "±std"
    fig.suptitle(f"{env}: {'success and score' if any('score' in m for m in rows) else 'success'}, "
                 f"mean over seeds with {band_name} band")
    return fig


def step_group_sizes(history: pd.DataFrame, env: str, columns: int = 3) -> Figure:
    """One panel per method (cell), at most ``columns`` a row: stacked shares of step-group sizes per
    iteration, averaged over the seeds on the iterations every seed reached, so an area ends where
    the shortest run ends instead of averaging fewer seeds; the x axis spans exactly those iterations."""
    buckets = list(SIZE_BUCKETS.values())
    methods = [m for m in order_methods(history["method"].unique())
               if history.loc[history["method"] == m, buckets].notna().any().any()]
    n_cols = min(max(len(methods), 1), columns)
    n_rows = -(-max(len(methods), 1) // n_cols)
    fig = Figure(figsize=(4.5 * n_cols + 1.5, 3.4 * n_rows), layout="constrained")  # + the legend
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, method in zip(axes, methods):
        runs = history[history["method"] == method].dropna(subset=[SIZE_BUCKETS["1"]])
        last = runs.groupby("source")["iter"].max().min()  # the shortest run's last iteration
        shares = runs[runs["iter"] <= last].groupby("iter")[buckets].mean()  # [iters, buckets], mean over seeds
        seeds = runs["source"].nunique()
        ax.stackplot(shares.index, shares.to_numpy().T, labels=[f"size {b}" for b in SIZE_BUCKETS], alpha=0.85)
        ax.set(title=f"{method} (n={seeds})", xlabel="iteration", ylabel="share of step groups", ylim=(0, 1))
        ax.set_xlim(shares.index.min(), max(shares.index.max(), shares.index.min() + 1))
        ax.title.set_fontsize(9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(methods):]:
        fig.delaxes(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], fontsize=8, loc="outside right upper")
    fig.suptitle(f"{env}: step-group size distribution over training (mean over seeds)")
    return fig


def advantage_spread(history: pd.DataFrame, env: str) -> Figure:
    metrics = {"adv/episode_std": "episode std", "adv/step_std": "step std"}
    methods = [m for m in order_methods(history["method"].unique())
               if history.loc[history["method"] == m, [k for k in metrics if k in history.columns]].notna().any().any()]
    fig = Figure(figsize=(4.5 * max(len(methods), 1), 3.6), layout="constrained")
    axes = fig.subplots(1, max(len(methods), 1), squeeze=False, sharey=True)[0]
    lows, highs = [], []
    for ax, method in zip(axes, methods):
        runs = history[history["method"] == method]
        for index, (metric, label) in enumerate(metrics.items()):
            if metric not in runs.columns or runs[metric].isna().all():
                continue
            per_iter = runs.dropna(subset=[metric]).groupby("iter")[metric].agg(["mean", "min", "max"])
            line_style = style(index)
            if len(per_iter) > SPARSE_POINTS:
                line_style["marker"] = None
            line, = ax.plot(per_iter.index, per_iter["mean"], label=label, markersize=4, **line_style)
            ax.fill_between(per_iter.index, per_iter["min"], per_iter["max"], color=line.get_color(), alpha=0.2,
                            linewidth=0)
            lows.append(per_iter["min"].to_numpy())
            highs.append(per_iter["max"].to_numpy())
        ax.set(title=method, xlabel="iteration", ylabel="advantage std")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if lows:
        fit_ylim(axes[0], lows, highs, bounds=(0.0, np.inf))  # shared y: one call scales every panel
    else:
        axes[0].text(0.5, 0.5, "no advantage statistics logged", ha="center", va="center")
        axes[0].set_axis_off()
    fig.suptitle(f"{env}: advantage spread, episode vs step level (min-max band over seeds)")
    return fig


def pooled_history(runs_or_paths) -> pd.DataFrame:
    """``history_frame`` whose ``method`` column is each run's table cell (``label_cells``): the method
    plus every setting in which runs of that environment differ, so a line pools seeds alone."""
    runs = as_runs(runs_or_paths)
    history = history_frame(runs)
    frame = runs_frame(runs)
    cell = {}
    for _, per_env in frame.groupby("env"):
        labelled = label_cells(per_env.dropna(axis=1, how="all"))
        cell.update(zip(labelled["source"], labelled["cell"]))
    return history.assign(method=history["source"].map(cell))


def plot_all(runs_or_paths, out: Path, band: str = "minmax") -> list[Path]:
    """Write every figure for every environment into ``out``; returns the PNG paths."""
    history = pooled_history(runs_or_paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for env, runs in history.groupby("env"):
        figures = {}
        if runs.reindex(columns=list(CURVE_METRICS)).notna().any().any():
            figures["curves"] = learning_curves(runs, env, band)
        if runs.reindex(columns=["adv/episode_std", "adv/step_std"]).notna().any().any():
            figures["advantage"] = advantage_spread(runs, env)
        if runs.reindex(columns=[SIZE_BUCKETS["1"]]).notna().any().any():
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
