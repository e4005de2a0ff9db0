"""Sound comparisons: the confound check, the statistics from scipy/statsmodels, the power command,
and the horizon testbed whose settings differ in the horizon alone."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gigpo.analysis import stats
from gigpo.analysis.power import main as power_main
from gigpo.analysis.power import seeds_needed
from gigpo.analysis.study import main as study_main
from gigpo.analysis.tables import comparison_notes, unmatched_keys

ROOT = Path(__file__).resolve().parents[1]
SOKOBAN = ROOT / "analysis" / "results" / "sokoban" / "runs"


# ---- the confound check ----

def _arm(method: str, name: str, mode: str, seeds=(0, 1), **keys) -> list[dict]:
    return [{"method": method, "seed": s, "source": f"{method}{s}", "algo.name": name, "algo.mode": mode,
             "algo.step_weight": 1.0, "env.max_steps": 8, "train.seed": s, **keys} for s in seeds]


def test_arms_differing_only_in_the_estimator_are_matched():
    frame = pd.DataFrame(_arm("GiGPO (mean)", "gigpo", "mean") + _arm("GRPO (mean)", "grpo", "mean", **{
        "algo.step_weight": 0.5}))  # GRPO does not read step_weight: not a confound
    assert unmatched_keys(frame, "GiGPO (mean)", "GRPO (mean)") == []
    # nor how GiGPO matches similar anchors (GRPO builds no step groups)
    frame = pd.DataFrame(_arm("GiGPO (mean)", "gigpo", "mean", **{"algo.similarity_match": "first"})
                         + _arm("GRPO (mean)", "grpo", "mean", **{"algo.similarity_match": "best"}))
    assert unmatched_keys(frame, "GiGPO (mean)", "GRPO (mean)") == []
    # the normaliser is read by both: a confound
    frame = pd.DataFrame(_arm("GiGPO (mean)", "gigpo", "mean") + _arm("GRPO", "grpo", "mean_std"))
    assert unmatched_keys(frame, "GiGPO (mean)", "GRPO") == ["algo.mode"]
    assert comparison_notes(frame) == ["GRPO vs GiGPO (mean) also differ in: algo.mode (mean_std vs mean)"]
    # any other setting that differs counts; the seed does not
    frame = pd.DataFrame(_arm("GiGPO (mean)", "gigpo", "mean") + _arm("GRPO (mean)", "grpo", "mean", seeds=(5, 6),
                                                                         **{"env.max_steps": 10}))
    assert unmatched_keys(frame, "GiGPO (mean)", "GRPO (mean)") == ["env.max_steps"]
    # one estimator, two normalisers: the normaliser is what is compared
    frame = pd.DataFrame(_arm("GiGPO (mean)", "gigpo", "mean") + _arm("GiGPO (mean_std)", "gigpo", "mean_std"))
    assert unmatched_keys(frame, "GiGPO (mean)", "GiGPO (mean_std)") == []


def test_the_committed_sokoban_headline_is_refused_as_unmatched(tmp_path):
    with pytest.raises(SystemExit, match=r"GiGPO \(mean\) vs GRPO also differ in: algo\.mode"):
        study_main([str(SOKOBAN), "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()  # nothing written
    # The matched pair alone passes.
    out = tmp_path / "matched"
    study_main([str(SOKOBAN), "--out", str(out), "--primary", "GiGPO (mean_std)"])
    significance = (out / "significance.md").read_text()
    assert "p holm" in significance and "also differ in" in significance
    row = pd.read_csv(out / "significance.csv", index_col="method").loc["GiGPO (mean)"]
    assert row["also differ in"] == "algo.mode"
    # Holm over the four comparisons, from statsmodels, equals the step-down by hand.
    sig = pd.read_csv(out / "significance.csv", index_col="method")
    p = sig["p"].sort_values()
    by_hand = np.maximum.accumulate([min(1.0, (len(p) - i) * v) for i, v in enumerate(p)])
    assert sig.loc[p.index, "p holm"].to_numpy() == pytest.approx(by_hand)


def test_the_committed_horizon_study_is_refused_as_unmatched(tmp_path):
    from gigpo.analysis.horizon import main as horizon_main

    runs = ROOT / "analysis" / "results" / "horizon" / "runs"
    with pytest.raises(SystemExit, match=r"GiGPO \(mean\) vs GRPO also differ in: algo\.mode"):
        horizon_main([str(runs), "--out", str(tmp_path / "h")])


# ---- statistics ----

def test_statistics_by_hand():
    # IQM of 5 values cuts one from each end: mean(1, 2, 3) = 2, whatever the outlier.
    assert stats.iqm([0.0, 1.0, 2.0, 3.0, 100.0]) == pytest.approx(2.0)
    point, low, high = stats.iqm_interval([0.1, 0.2, 0.3, 0.4, 0.9])
    assert point == pytest.approx(0.3) and low <= point <= high
    assert stats.iqm_interval([0.1, 0.2, 0.3, 0.4, 0.9]) == (point, low, high)  # seeded
    assert math.isnan(stats.iqm_interval([0.5])[1])  # one seed: no interval
    low, high = stats.bootstrap_diff([0.5, 0.6, 0.7], [0.4, 0.45, 0.5])
    assert low < 0.15 < high
    history = pd.DataFrame({"iter": range(5), "val/success": [0.1, np.nan, 0.3, 0.5, 0.7]})
    assert stats.last_k_mean(history, 3) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"runs/x: 4 validation\(s\) of val/success, fewer than k=5"):
        stats.last_k_mean(history, 5, "runs/x")


def test_power_matches_the_textbook_and_counts_holm():
    # Cohen's d = 1 at alpha 0.05, power 0.8, two-sided: 16.7 -> 17 seeds per arm (Cohen 1988, Table 2.4.1).
    assert seeds_needed(0.10, 0.10, 0.05, 1, 0.8) == 17
    # Holm over 3 comparisons starts at alpha / 3: more seeds.
    assert seeds_needed(0.10, 0.10, 0.05, 3, 0.8) > 17
    with pytest.raises(ValueError, match="standard deviation is 0"):
        seeds_needed(0.10, 0.0, 0.05, 1, 0.8)


def test_power_command_on_the_committed_runs(tmp_path, capsys):
    n = power_main([str(SOKOBAN), "--effect", "0.10", "--comparisons", "4", "--out", str(tmp_path / "power.md")])
    # Five seeds in every arm: the pooled variance is the mean of the committed table's variances.
    table = pd.read_csv(SOKOBAN.parent / "sokoban.csv", index_col="Method")
    pooled = float(np.sqrt(np.mean(np.square(table["Success std"] / 100))))
    assert n == seeds_needed(0.10, pooled, 0.05, 4, 0.8)
    assert "pooled over arms" in (tmp_path / "power.md").read_text()


# ---- the horizon testbed ----

def test_compass_view_gives_one_rule_at_every_distance():
    from gigpo.envs.gridnav import GridNavEnv, compass

    assert compass((3, 3), (1, 5)) == "goal: up, right" and compass((3, 3), (3, 1)) == "goal: left"
    texts = set()
    for distance in (2, 4, 6):
        env = GridNavEnv(size=7, distance=distance, wall_density=0.0, max_steps=2 * distance + 2, view="compass")
        for seed in range(40):
            step = env.reset(seed)
            assert "#" in step.anchor and "P" in step.anchor  # the anchor is the full grid state
            moves = 0
            while not step.done:  # the first direction named is always optimal on the open grid
                texts.add(step.observation)
                step = env.step(step.observation.removeprefix("goal: ").split(", ")[0])
                moves += 1
            assert step.won and moves == distance
    assert len(texts) == 8  # the same eight observations serve every distance
    with pytest.raises(ValueError, match="env.view='map'"):
        GridNavEnv(view="map")


# ---- the credit-assignment study's analysis, on its committed pilot runs ----

PILOTS = ROOT / "analysis" / "results" / "credit" / "pilots" / "acceptance"


def test_decision_rule_of_the_credit_study():
    from gigpo.analysis.credit import verdict

    assert verdict(+0.10, 0.01, 0.04, 0.16) == "GiGPO better"
    assert verdict(-0.10, 0.01, -0.16, -0.04) == "GiGPO worse"
    assert verdict(+0.01, 0.60, -0.03, 0.04) == "equivalent within the margin"
    assert verdict(+0.04, 0.20, -0.02, 0.10) == "inconclusive"


def test_testbed_acceptance_recomputes_from_the_committed_pilots(tmp_path):
    from gigpo.analysis.credit import acceptance, main as credit_main
    from gigpo.analysis.load import load_runs

    table = acceptance(load_runs([PILOTS]))
    assert list(table.index) == [2, 4, 6]
    assert (table["random success"] < 0.30).all() and table["accepted"].all()
    committed = (PILOTS.parent / "ACCEPTANCE.md").read_text()
    credit_main([str(PILOTS), "--acceptance", "--out", str(tmp_path)])
    assert (tmp_path / "ACCEPTANCE.md").read_text() == committed
    # The pilots as a partial study: the matched primary pair at every setting, no decision.
    primary = credit_main([str(PILOTS), "--partial", "--out", str(tmp_path / "partial")])
    assert set(primary["distance"]) == {2, 4, 6} and set(primary["arm"]) == {"GiGPO (mean)"}
    assert set(primary["vs"]) == {"GRPO (mean)"} and (primary["also differ in"] == "-").all()
    assert "PARTIAL" in (tmp_path / "partial" / "RESULTS.md").read_text()
    assert len(list((tmp_path / "partial" / "runs").iterdir())) == 18


def test_the_committed_credit_study_recomputes_from_its_raw_logs(tmp_path):
    """RESULTS.md is what `python -m analysis.credit` computes from the committed raw logs, and it
    names where every run came from (one commit, clean, one kind of host)."""
    from gigpo.analysis.credit import main as credit_main

    study = PILOTS.parents[1]
    credit_main([str(study / "runs"), "--out", str(tmp_path)])
    result = (tmp_path / "RESULTS.md").read_text()
    assert result == (study / "RESULTS.md").read_text()
    assert "450 runs, all finished." in result
    assert "- 450 runs: commit d030e1d (clean), AMD EPYC" in result
