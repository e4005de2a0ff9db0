"""The credit-assignment study's analysis, exactly as pre-registered in analysis/results/credit/PROTOCOL.md.

    python -m analysis.credit analysis/results/credit/runs --out analysis/results/credit [--partial]

Per setting d (GridNav, compass view, open grid: only the horizon changes) and arm: the primary
metric, the normalised AUC of validation success over env steps (``analysis.horizon.per_run``:
trapezoid over the validation points divided by the budget), and the secondary metrics (final
validation success, the mean of the last 3 validations, the IQM of the AUC with a 95% bootstrap
interval), with the seed count.

Primary comparisons, one per setting and normaliser: GiGPO (mean) vs GRPO (mean) and GiGPO
(mean_std) vs GRPO, each matched in everything but the estimator (refused otherwise). Welch's
t-test (two-sided) on the AUC, a 95% bootstrap interval of the difference (seeds resampled within
each arm), Holm over all primary comparisons (alpha 0.05). Decision per comparison: "GiGPO better"
when Holm p < alpha and the difference is positive, "GiGPO worse" when Holm p < alpha and it is
negative, "equivalent within the margin" when the interval lies inside +-MARGIN, else
"inconclusive". Trend per normaliser (secondary): gap(d_max) - gap(d_min) with a 95% bootstrap
interval (``analysis.horizon.trend_interval``).

Secondary, without a decision: GraphGPO vs GRPO (mean_std), the final and last-3 metrics, step
groups. ``--partial`` reports the cells finished so far, marked partial, with no decision.

``--acceptance`` checks the testbed on pilot runs instead (issue 21): at every setting the random
policy's success on the validation rooms is below 30%, and GRPO (mean) gains at least 15 points of
validation success over its own iteration-0 validation within the budget (mean over the pilot seeds).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from gigpo.analysis import horizon, stats
from gigpo.analysis.load import history_frame, load_runs, runs_frame
from gigpo.analysis.plots import learning_curves
from gigpo.analysis.study import RAW_LOGS, plain_markdown, refuse_unmatched, significance

METRIC = "auc"
"""The primary metric (pre-registered)."""
PAIRS = [("GiGPO (mean)", "GRPO (mean)"), ("GiGPO (mean_std)", "GRPO")]
"""The primary comparisons (arm, matched baseline), at every setting."""
SECONDARY = [("GraphGPO", "GRPO")]
ALPHA = 0.05
MARGIN = 0.05
"""Equivalence margin on the AUC: an interval inside +-MARGIN reads as no difference that matters."""
LAST_K = 3


def per_run(run) -> dict:
    row = horizon.per_run(run)
    row["last 3 mean"] = stats.last_k_mean(run.history, LAST_K, run.source)
    return row


def verdict(diff: float, p_holm: float, low: float, high: float) -> str:
    if p_holm < ALPHA:
        return "GiGPO better" if diff > 0 else "GiGPO worse"
    if -MARGIN < low and high < MARGIN:
        return "equivalent within the margin"
    return "inconclusive"


def compare(frame: pd.DataFrame, configs: pd.DataFrame, pairs, metric: str, allow_unmatched: bool) -> pd.DataFrame:
    """One row per (setting, pair): difference in means of ``metric``, Welch t and p, bootstrap CI."""
    rows = []
    for d in sorted(frame["distance"].unique()):
        at_d = frame[frame["distance"] == d]
        for arm, base in pairs:
            sub = at_d[at_d["method"].isin([arm, base])]
            if set(sub["method"]) != {arm, base}:
                continue  # a partial report: one of the arms has no finished run here yet
            conf = configs[(configs["env.distance"] == d) & configs["method"].isin([arm, base])]
            sig = significance(sub, base, conf, metric=metric)
            refuse_unmatched(sig, [arm], allow_unmatched)
            row = sig.loc[arm]
            rows.append({"distance": d, "arm": arm, "vs": base, "diff": row["diff"], "welch t": row["welch t"],
                         "p": row["p"], "ci95 low": row["ci95 low"], "ci95 high": row["ci95 high"],
                         "seeds": row["seeds"], "also differ in": row["also differ in"]})
    return pd.DataFrame(rows)


def keep_study_logs(runs, folder: Path) -> None:
    """Copy each finished run's raw logs to ``folder/d<d>_<arm>_s<seed>/`` (names independent of
    which runs have finished so far); a run already there stays; a second run of the same cell and
    seed from elsewhere is refused."""
    import re
    import shutil

    for run in runs:
        source = Path(run.source)
        if not source.is_dir() or folder.resolve() in source.resolve().parents:
            continue
        arm = re.sub(r"[^a-z0-9]+", "_", run.method.lower()).strip("_")
        target = folder / f"d{int(run.get('env.distance'))}_{arm}_s{run.seed}"
        if (target / "metrics.jsonl").exists() and (target / "metrics.jsonl").read_bytes() != (
                source / "metrics.jsonl").read_bytes():
            raise SystemExit(f"{target} already holds a different run of this cell and seed than {source}")
        target.mkdir(parents=True, exist_ok=True)
        for name in RAW_LOGS:
            if (source / name).is_file():
                shutil.copy2(source / name, target / name)


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (d, method), cell in frame.groupby(["distance", "method"]):
        point, low, high = stats.iqm_interval(cell[METRIC])
        rows.append({"distance": d, "method": method, "seeds": len(cell), "auc": cell[METRIC].mean(),
                     "auc std": cell[METRIC].std(), "auc iqm": point, "iqm ci95 low": low, "iqm ci95 high": high,
                     "final": cell["final success"].mean(), "final std": cell["final success"].std(),
                     "last 3 mean": cell["last 3 mean"].mean(),
                     **{k: cell[k].mean() for k in horizon.GROUP_STATS.values() if k in cell}})
    return pd.DataFrame(rows).set_index(["distance", "method"])


RANDOM_CEILING, MIN_GAIN = 0.30, 0.15
"""Testbed acceptance: random-policy success below 30% and a 15-point gain of GRPO (mean), per setting."""


def acceptance(runs) -> pd.DataFrame:
    """Per setting: random-policy success on the validation rooms, and GRPO (mean)'s iteration-0 and
    final validation success, gain (mean and smallest over seeds) and whether both criteria hold."""
    from gigpo.envs.gridnav import random_success

    rows = []
    for d in sorted({int(r.get("env.distance")) for r in runs}):
        pilots = [r for r in runs if int(r.get("env.distance")) == d and r.method == "GRPO (mean)" and r.finished]
        if not pilots:
            raise SystemExit(f"acceptance: no finished GRPO (mean) pilot at d={d}")
        first = pilots[0]
        walls = first.get("env.wall_density")
        rand = random_success(d, int(first.get("env.val_episodes")), int(first.get("env.size")), float(walls),
                              max_steps=int(first.get("env.max_steps")),
                              first_seed=int(first.get("env.val_seed_offset")))
        start = np.array([stats.validation_values(r.history)[0] for r in pilots])
        final = np.array([float(r.final["val/success"]) for r in pilots])
        gain = final - start
        rows.append({"distance": d, "max_steps": int(first.get("env.max_steps")),
                     "budget": int(first.get("train.max_env_steps")), "random success": rand, "seeds": len(pilots),
                     "iteration-0 val": start.mean(), "final val": final.mean(), "gain (mean)": gain.mean(),
                     "gain (smallest)": gain.min(),
                     "accepted": bool(rand < RANDOM_CEILING and gain.mean() >= MIN_GAIN)})
    return pd.DataFrame(rows).set_index("distance")


def provenance_lines(runs) -> list[str]:
    """Where the runs came from, read off each run's ``provenance.json``: "N runs: commit C (clean|dirty),
    CPU model, flags hash H" per distinct origin (the protocol asks for hosts of one kind)."""
    origins: Counter[str] = Counter()
    for run in runs:
        path = Path(run.source) / "provenance.json"
        if not path.is_file():
            origins["no provenance.json"] += 1
            continue
        record = json.loads(path.read_text())
        git, host = record.get("git") or {}, record.get("host") or {}
        state = "dirty" if git.get("dirty") else "clean"
        origins[f"commit {str(git.get('commit'))[:7]} ({state}), {host.get('cpu_model')}, "
                f"{host.get('cores')} cores, CPU flags sha256 {str(host.get('cpu_flags_sha256'))[:12]}"] += 1
    return [f"- {n} runs: {key}" for key, n in origins.most_common()]


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(prog="python -m analysis.credit", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--partial", action="store_true",
                        help="report the finished runs so far (no decision); unfinished ones are counted")
    parser.add_argument("--allow-unmatched", action="store_true")
    parser.add_argument("--acceptance", action="store_true", help="check the testbed on pilot runs (ACCEPTANCE.md)")
    args = parser.parse_args(argv)
    runs = load_runs(args.runs)
    if args.acceptance:
        table = acceptance(runs)
        text = "\n".join(["# Testbed acceptance (pilot runs)", "",
                          f"Criteria (issue 21): random-policy success < {RANDOM_CEILING:.0%} on the validation rooms, "
                          f"and GRPO (mean) gains >= {MIN_GAIN * 100:.0f} points of validation success over its "
                          "iteration-0 validation within the budget (mean over seeds).", "", plain_markdown(table)])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ACCEPTANCE.md").write_text(text)
        print(text)
        return table
    unfinished = [r.source for r in runs if not r.finished]
    if unfinished and not args.partial:
        raise SystemExit(f"{len(unfinished)} run(s) have no final validation (finish or resume them, or pass "
                         f"--partial): {unfinished[:3]}")
    runs = [r for r in runs if r.finished]
    frame = pd.DataFrame([per_run(r) for r in runs]).sort_values(["distance", "method", "seed"])
    configs = runs_frame(runs)
    primary = compare(frame, configs, PAIRS, METRIC, args.allow_unmatched)
    primary["p holm"] = stats.holm(primary["p"]) if len(primary) else []
    primary["decision"] = ([verdict(*r) for r in primary[["diff", "p holm", "ci95 low", "ci95 high"]].to_numpy()]
                           if not args.partial else "none (partial)")
    secondary = compare(frame, configs, SECONDARY, METRIC, args.allow_unmatched)
    finals = compare(frame, configs, PAIRS + SECONDARY, "final success", args.allow_unmatched)
    for table in (secondary, finals):
        if len(table):
            table["p holm"] = stats.holm(table["p"])
    trends = []
    distances = sorted(frame["distance"].unique())
    for arm, base in PAIRS:
        cells = frame.groupby(["distance", "method"]).size()
        if len(distances) >= 2 and all((d, m) in cells for d in (distances[0], distances[-1]) for m in (arm, base)):
            point, low, high = horizon.trend_interval(frame, distances[0], distances[-1], metric=METRIC, arm=arm,
                                                      base=base)
            trends.append(f"- {arm} - {base}: gap(d={distances[-1]}) - gap(d={distances[0]}) = {point:+.4f} "
                          f"(95% bootstrap interval [{low:+.4f}, {high:+.4f}])")

    args.out.mkdir(parents=True, exist_ok=True)
    keep_study_logs(runs, args.out / "runs")  # finished runs only, so interim commits hold whole cells
    frame.to_csv(args.out / "credit.csv", index=False)
    summary = summarise(frame)
    for d in distances:
        history = history_frame([r for r in runs if int(r.get("env.distance")) == d])
        learning_curves(history, f"gridnav compass d={d}").savefig(args.out / f"curves_d{d}.png", dpi=110)
    shown = ["distance", "arm", "vs", "diff", "welch t", "p", "p holm", "ci95 low", "ci95 high", "seeds"]
    status = (f"**PARTIAL: {len(runs)} finished run(s), {len(unfinished)} unfinished; no decision is drawn "
              "from a partial report.**" if args.partial else f"{len(runs)} runs, all finished.")
    report = "\n".join([
        "# Credit-assignment study: results", "",
        "Computed by `python -m analysis.credit` as pre-registered in PROTOCOL.md.", "", status, "",
        "Origin of the runs (`provenance.json`):", "", *provenance_lines(runs), "",
        f"## Per setting and arm (primary metric: {METRIC}, normalised AUC of validation success)", "",
        plain_markdown(summary), "",
        "## Primary comparisons (AUC; Holm over all of them)", "",
        plain_markdown(primary.set_index(shown[:2])[shown[2:] + ["decision"]]) if len(primary) else "(none yet)", "",
        "## Trend (secondary): does the gap grow with the horizon?", "", *(trends or ["(not computable yet)"]), "",
        "## Secondary: GraphGPO vs GRPO (mean_std), AUC", "",
        plain_markdown(secondary.set_index(shown[:2])[shown[2:]]) if len(secondary) else "(none yet)", "",
        "## Secondary: final validation success (Holm over these)", "",
        plain_markdown(finals.set_index(shown[:2])[shown[2:]]) if len(finals) else "(none yet)",
    ])
    (args.out / "RESULTS.md").write_text(report + "\n")
    print(report)
    return primary


if __name__ == "__main__":
    main()
