"""Read run logs into one in-memory form: :class:`Run` (config, per-iteration history, final validation).

A run directory holds ``config.yaml`` (the resolved training config) and ``metrics.jsonl`` (one
JSON object per iteration; the last line has ``"final": true`` and the final validation). A path
given to :func:`load_runs` may be a run directory, a Hydra multirun directory or a sweep directory
(searched recursively), or ``wandb:ENTITY/PROJECT`` for runs logged to W&B.

Method, environment and seed always come from the saved config, never from directory names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from gigpo.metrics import harness_name

METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
WANDB_PREFIX = "wandb:"


@dataclass
class Run:
    """One training run: where it came from, its resolved config and its per-iteration metrics."""

    source: str
    """Run directory, or ``wandb:ENTITY/PROJECT/RUN_ID``."""
    config: dict
    """The resolved training config as nested dicts (``config["algo"]["name"]``)."""
    history: pd.DataFrame
    """One row per metrics line, in order; validation columns are NaN off validation iterations."""
    summary: dict = field(default_factory=dict)

    def get(self, dotted: str, default=None):
        """A config value by dotted key, e.g. ``run.get("algo.step_weight")``."""
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def method(self) -> str:
        return method_label(self.config)

    @property
    def env(self) -> str:
        """The env name; WebShop's carries its catalog (``webshop-synthetic``, ``webshop-real``: README,
        "Environments"), so numbers on the generated catalog are never read as the benchmark's."""
        name = str(self.get("env.name", "unknown"))
        if name == "webshop":
            return f"webshop-{catalog(self.config)}"
        return name

    @property
    def seed(self) -> int | None:
        return self.get("train.seed")

    @property
    def finished(self) -> bool:
        """The run wrote its final validation line (an unfinished run stopped before it)."""
        h = self.history
        return "final" in h.columns and bool(h["final"].fillna(False).astype(bool).any())

    @property
    def final(self) -> dict:
        """Metrics of the final validation: the line marked ``final``, else the last validation line."""
        h = self.history
        if "final" in h.columns:
            rows = h[h["final"].fillna(False).astype(bool)]
            if len(rows):
                return rows.iloc[-1].dropna().to_dict()
        if "val/success" in h.columns:
            rows = h[h["val/success"].notna()]
            if len(rows):
                return rows.iloc[-1].dropna().to_dict()
        return {k: v for k, v in self.summary.items() if k.startswith("val/") or k == "env_steps"}


def method_label(config: dict) -> str:
    """``GiGPO (mean)``, ``GiGPO (mean_std)``, ``GraphGPO``, ``GRPO`` (its default mean_std, as the paper
    runs it), ``GRPO (mean)``, ``RLOO``, ``PPO (with critic)``: from ``algo.name`` and ``algo.mode``; a mode=eval folder without a checkpoint (the model as loaded) is
    ``Prompting``, or ``ReAct`` with ``env.prompt_style=react``."""
    if config.get("mode") == "eval" and str(config.get("checkpoint")).lower() in ("none", "null"):
        return "ReAct" if config.get("env", {}).get("prompt_style") == "react" else "Prompting"
    algo = config.get("algo", {})
    name = str(algo.get("name", "unknown"))
    if name == "gigpo":
        return f"GiGPO ({algo.get('mode', 'mean')})"
    if name == "grpo" and algo.get("mode", "mean_std") != "mean_std":
        return f"GRPO ({algo.get('mode')})"
    return {"grpo": "GRPO", "rloo": "RLOO", "graphgpo": "GraphGPO", "ppo": "PPO (with critic)"}.get(name, name.upper())


def catalog(config: dict) -> str:
    """WebShop's catalog: "real" with ``env.data_dir`` (the benchmark's files), else "synthetic"."""
    return "real" if config.get("env", {}).get("data_dir") else "synthetic"


def read_run_dir(run_dir: Path) -> Run:
    """One run directory; errors name the file (and line) at fault."""
    run_dir = Path(run_dir)
    config_path, metrics_path = run_dir / CONFIG, run_dir / METRICS
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: run directory has no {CONFIG}")
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{run_dir}: run directory has no {METRICS}")
    config = yaml.safe_load(config_path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: not a YAML mapping")
    rows = []
    for number, line in enumerate(metrics_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{metrics_path}:{number}: malformed metrics line ({error.msg}): {line[:80]!r}") from None
        if not isinstance(row, dict) or "iter" not in row:
            raise ValueError(f"{metrics_path}:{number}: metrics line is not an object with 'iter': {line[:80]!r}")
        rows.append(row)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return Run(str(run_dir), config, pd.DataFrame(rows), summary)


def find_run_dirs(root: Path) -> list[Path]:
    """``root`` itself if it is a run directory, else every directory below it with a ``metrics.jsonl``."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such run, multirun or sweep directory")
    if (root / METRICS).is_file() or (root / CONFIG).is_file():
        return [root]
    found = sorted(p.parent for p in root.rglob(METRICS))
    if not found:
        raise FileNotFoundError(f"{root}: no {METRICS} found in it or below it")
    return found


def load_wandb(spec: str, group: str | None = None, tags: list[str] = ()) -> list[Run]:
    """The runs of ``wandb:ENTITY/PROJECT`` through the public API, in the same form as a run dir;
    only those of W&B group ``group`` and carrying every tag in ``tags`` when given.

    W&B history is keyed by ``_step``, which the trainer sets to the iteration.
    """
    import wandb

    project = spec[len(WANDB_PREFIX):]
    filters: dict = {}
    if group:
        filters["group"] = group
    if tags:
        filters["tags"] = {"$all": list(tags)}
    runs = []
    for remote in wandb.Api().runs(project, filters=filters or None):
        history = pd.DataFrame(list(remote.scan_history()))
        if "_step" in history.columns:
            history = history.rename(columns={"_step": "iter"})
        history = history[[c for c in history.columns if not c.startswith("_")]]
        if "iter" in history.columns:
            history = history.sort_values("iter").reset_index(drop=True)
        config = {k: v for k, v in dict(remote.config).items() if not k.startswith("_")}
        summary = {k: v for k, v in dict(remote.summary).items() if not k.startswith("_")}
        if config.get("logger", {}).get("verl_names"):  # logged under verl-agent's names: read back as the harness's
            history = history.rename(columns=harness_name)
            summary = {harness_name(k): v for k, v in summary.items()}
        runs.append(Run(f"{WANDB_PREFIX}{project}/{remote.id}", config, history, summary))
    return runs


def load_runs(paths, wandb_group: str | None = None, wandb_tags: list[str] = ()) -> list[Run]:
    """Runs from run dirs, multirun/sweep dirs (searched recursively) and ``wandb:ENTITY/PROJECT`` specs
    (filtered by W&B group and tags when given)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    runs: list[Run] = []
    for path in paths:
        if str(path).startswith(WANDB_PREFIX):
            runs.extend(load_wandb(str(path), wandb_group, wandb_tags))
        else:
            runs.extend(read_run_dir(d) for d in find_run_dirs(Path(path)))
    return runs


def flatten(config: dict, prefix: str = "") -> dict:
    """Nested config -> ``{"algo.name": ..., "train.seed": ...}``."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def runs_frame(runs_or_paths) -> pd.DataFrame:
    """One row per run: ``source``, ``method``, ``env``, ``seed``, the flattened config and the final validation."""
    runs = as_runs(runs_or_paths)
    rows = []
    for run in runs:
        final = {k: v for k, v in run.final.items() if k.startswith("val/") or k in ("env_steps", "time/wall_s")}
        rows.append({"source": run.source, "method": run.method, "env": run.env, "seed": run.seed,
                     "finished": run.finished, **flatten(run.config), **final})
    return pd.DataFrame(rows)


def history_frame(runs_or_paths) -> pd.DataFrame:
    """All metrics lines of all runs stacked, with ``source``, ``method``, ``env`` and ``seed`` columns."""
    runs = as_runs(runs_or_paths)
    parts = [run.history.assign(source=run.source, method=run.method, env=run.env, seed=run.seed) for run in runs]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def as_runs(runs_or_paths) -> list[Run]:
    """Runs, from runs, run/multirun folders or one folder (``load_runs``)."""
    if isinstance(runs_or_paths, (str, Path)):
        return load_runs([runs_or_paths])
    items = list(runs_or_paths)
    if all(isinstance(item, Run) for item in items):
        return items
    return load_runs(items)
