"""One Optuna trial = one training run per seed: search space, trial config, pruning reports, objective.

The objective is the final validation success after a fixed budget of environment steps
(``train.max_env_steps``), averaged over ``seeds`` runs with ``train.seed = base + k``. A fixed env-step
budget, not a fixed iteration count, is what makes group sizes comparable: one iteration with N = 16
collects eight times the steps of one with N = 2.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict

import gigpo.conf

# Through the package, never a path relative to this file: installed, conf/ is gigpo/conf/.
CONF_DIR = Path(gigpo.conf.__file__).parent
SPACE_DIR = CONF_DIR / "sweep"
DISTRIBUTIONS = ("categorical", "float", "int")


@dataclass
class SearchSpace:
    """A parsed conf/sweep/<name>.yaml (format documented in conf/sweep/group_size_weight.yaml)."""

    name: str
    params: dict[str, dict[str, Any]]
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def load_space(name: str) -> SearchSpace:
    """``name`` is a file in conf/sweep/ (without .yaml) or a path to a YAML file."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = SPACE_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"sweep={name}: no {path}; known sweeps: {known}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    unknown = set(raw) - {"params", "enqueue", "overrides", "options"}
    if unknown or not raw.get("params"):
        raise ValueError(f"{path}: needs `params`, may have enqueue/overrides/options; got {sorted(raw)}")
    for key, spec in raw["params"].items():
        if spec.get("type") not in DISTRIBUTIONS:
            raise ValueError(f"{path}: {key}.type must be one of {DISTRIBUTIONS}, got {spec.get('type')!r}")
    for point in raw.get("enqueue") or []:
        if set(point) != set(raw["params"]):
            raise ValueError(f"{path}: enqueued point {point} must set exactly {sorted(raw['params'])}")
    return SearchSpace(path.stem, raw["params"], raw.get("enqueue") or [], raw.get("overrides") or [],
                       raw.get("options") or {})


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample every parameter of ``space`` through the trial (so the sampler and storage see them)."""
    params = {}
    for key, spec in space.params.items():
        if spec["type"] == "categorical":
            params[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif spec["type"] == "float":
            params[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False),
                                              step=spec.get("step"))
        else:
            params[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False),
                                            step=spec.get("step", 1))
    return params


def compose(overrides: list[str]) -> DictConfig:
    """The training config for ``overrides``, validated exactly as run.py validates it."""
    import hydra

    from gigpo.config import check, register_configs

    register_configs()
    with hydra.initialize_config_module(version_base="1.3", config_module="gigpo.conf"):
        cfg = hydra.compose("config", overrides=overrides)
    check(cfg)
    return cfg


def trial_overrides(overrides: list[str], params: dict[str, Any], budget: int, seed_offset: int,
                    base_seed: int) -> list[str]:
    """Sweep-wide overrides, then the trial's parameters, then the budget and the seed."""
    # The env-step budget ends the run; the iteration cap must not end it first.
    capped = any(o.startswith("train.iterations=") for o in overrides)
    iterations = [] if capped else ["train.iterations=1000000"]
    return [*overrides, *iterations, *(f"{k}={v}" for k, v in params.items()),
            f"train.max_env_steps={budget}", f"train.seed={base_seed + seed_offset}"]


class PruningReporter:
    """Reports validation success to the trial on an env-step grid that every trial shares.

    Optuna's pruners compare trials at equal step numbers, but validations fall at different env
    steps in different trials (N and episode lengths differ), so raw env steps rarely match. Grid
    point i (0..points) sits at g_i = i * budget / points env steps and takes the value of the first
    validation at or after g_i. Seeds run one after another; seed k reports at step
    k * (points + 1) + i the mean over seeds 0..k of their values at g_i. So every trial that reports
    a step has used the same seeds and at least the same budget, the last step of the last seed is
    the objective (when the budget ends the run), and a growing step means more resource, as
    Hyperband assumes.
    """

    def __init__(self, trial: optuna.Trial, budget: int, points: int):
        self.trial, self.points = trial, points
        self.grid = [i * budget / points for i in range(points + 1)]
        self.curves: list[dict[int, float]] = []  # per seed: grid index -> validation success

    def for_seed(self, seed_index: int):
        """The ``on_validation`` callback of seed ``seed_index``'s run."""
        assert seed_index == len(self.curves), "seeds must run in order"
        self.curves.append({})
        curve = self.curves[-1]

        def on_validation(iteration: int, env_steps: int, val_metrics: dict) -> None:
            new = [i for i, g in enumerate(self.grid) if g <= env_steps and i not in curve]
            for i in new:
                curve[i] = val_metrics["val/success"]
                seen = [c[i] for c in self.curves if i in c]
                self.trial.report(sum(seen) / len(seen), step=seed_index * (self.points + 1) + i)
            if new and self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at {env_steps} env steps of seed {seed_index}")

        return on_validation


@dataclass
class Objective:
    """Callable for ``study.optimize``: trains ``seeds`` runs of one parameter set, returns mean success."""

    space: SearchSpace
    overrides: list[str]
    study_name: str
    study_dir: Path
    budget: int
    seeds: int
    points: int

    def __call__(self, trial: optuna.Trial) -> float:
        # Who runs the trial, first thing: a restarted sweep fails RUNNING trials whose process is gone.
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        from gigpo.train import train

        params = suggest(trial, self.space)
        reporter = PruningReporter(trial, self.budget, self.points)
        base_seed = compose(self.overrides).train.seed
        values = []
        for k in range(self.seeds):
            suffix = "" if self.seeds == 1 else f"_seed{k}"
            run_dir = self.study_dir / f"trial_{trial.number}{suffix}"
            cfg = compose(trial_overrides(self.overrides, params, self.budget, k, base_seed))
            with open_dict(cfg):
                cfg.run_dir = str(run_dir)
                cfg.experiment_name = self.study_name
                cfg.logger.group = self.study_name
                cfg.sweep = {"study": self.study_name, "trial": trial.number, "seed_index": k,
                             "params": params}
            trial.set_user_attr(f"run_dir_seed{k}", str(run_dir))
            values.append(train(cfg, on_validation=reporter.for_seed(k)))
            trial.set_user_attr(f"success_seed{k}", values[-1])
        return sum(values) / len(values)
