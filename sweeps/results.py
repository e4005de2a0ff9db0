"""A study's results beside it: best.json, trials.csv and PNG plots (Optuna's matplotlib backend)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)


def write_results(study: optuna.Study, study_dir: Path, options=None) -> dict:
    """Write best.json, trials.csv and plots; returns the best.json content."""
    from gigpo.console import silence_third_party

    silence_third_party()  # matplotlib's INFO chatter while plotting (categorical axes)
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = {"study": study.study_name, "trials": counts, "value": None, "params": None, "number": None}
    if complete:
        trial = study.best_trial
        best.update(value=trial.value, params=trial.params, number=trial.number,
                    run_dirs=[v for k, v in sorted(trial.user_attrs.items()) if k.startswith("run_dir_seed")])
    best["setup"] = study.user_attrs.get("setup")
    (study_dir / "best.json").write_text(json.dumps(best, indent=2, sort_keys=True))
    study.trials_dataframe().to_csv(study_dir / "trials.csv", index=False)
    write_plots(study, study_dir)
    return best


def write_plots(study: optuna.Study, study_dir: Path) -> list[Path]:
    """Optimisation history, parameter importance, slice and the w x N contour, as far as the trials allow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    params = sorted({k for t in study.trials if t.state == TrialState.COMPLETE for k in t.params})
    pair = [p for p in ("algo.step_weight", "algo.group_size") if p in params]
    plots = {
        "history": lambda: vis.plot_optimization_history(study),
        "intermediate": lambda: vis.plot_intermediate_values(study),
        "importance": lambda: vis.plot_param_importances(study),
        "slice": lambda: vis.plot_slice(study, params=params),
        "contour": lambda: vis.plot_contour(study, params=pair if len(pair) == 2 else params[:2]),
    }
    written = []
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental-API and too-few-trials warnings
                result = plot()
            figure = result.flat[0].figure if hasattr(result, "flat") else result.figure
            path = study_dir / f"{name}.png"
            figure.savefig(path, dpi=120, bbox_inches="tight")
            written.append(path)
        except Exception as error:  # noqa: BLE001 -- e.g. importance needs two completed trials
            log.info("no %s plot: %s", name, error)
        finally:
            plt.close("all")
    return written
