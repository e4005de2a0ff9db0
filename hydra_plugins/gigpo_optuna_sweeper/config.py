"""The sweeper's structured config (``hydra/sweeper=optuna_gigpo``) and its search-space group.

The options mirror sweeps.run.SweepOptions; None takes the search space's ``options``, then
SweepOptions' default, exactly as ``python -m sweeps.run`` resolves them.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from gigpo.sweeps.spaces import register_search_spaces


@dataclass
class SearchSpaceConf:
    """One conf/sweep/<name>.yaml (format in conf/sweep/group_size_weight.yaml)."""

    params: Dict[str, Any] = field(default_factory=dict)
    """Config key -> distribution (categorical, float, int)."""
    enqueue: List[Any] = field(default_factory=list)
    """Parameter sets tried first, once per study."""
    overrides: List[str] = field(default_factory=list)
    """Hydra overrides applied to every trial; the command line's come after and win."""
    options: Dict[str, Any] = field(default_factory=dict)
    """Defaults for the options below (n_trials, budget, ...)."""


@dataclass
class OptunaGigpoSweeperConf:
    _target_: str = "hydra_plugins.gigpo_optuna_sweeper.sweeper.GigpoOptunaSweeper"
    # The YAML of the chosen space wins over the empty default below.
    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"search_space": "group_size_weight"}])

    search_space: SearchSpaceConf = field(default_factory=SearchSpaceConf)
    """Chosen with hydra/sweeper/search_space=<name>: the files in conf/sweep/."""
    n_trials: Optional[int] = None
    """Finished (COMPLETE or PRUNED) trials the study should hold; a rerun only tops it up."""
    storage: Optional[str] = None
    """Optuna RDB URL; None: JournalStorage on <hydra.sweep.dir>/<study>/journal.log."""
    study: Optional[str] = None
    """Study name; None: the space's name plus the overrides that change the objective."""
    seeds: Optional[int] = None
    """Training runs per trial (train.seed = base + k, one after another); the objective is their mean."""
    budget: Optional[int] = None
    """Env steps per run (sets train.max_env_steps)."""
    pruner: Optional[str] = None
    """median, hyperband, threshold or none."""
    points: Optional[int] = None
    """Pruning grid: validation success reported at budget * i / points env steps."""
    startup_trials: Optional[int] = None
    """median: finished trials needed before any pruning."""
    warmup_points: Optional[int] = None
    """median/threshold: grid points of the first seed never pruned."""
    threshold: Optional[float] = None
    """threshold: prune a trial whose reported success falls below this."""
    sampler_seed: Optional[int] = None
    """Seed of the TPE sampler; None: the space's options, else random."""
    n_jobs: int = 1
    """Trials asked from Optuna and handed to the launcher together, as one batch: with
    hydra/launcher=joblib they run in parallel (up to hydra.launcher.n_jobs processes)."""


ConfigStore.instance().store(group="hydra/sweeper", name="optuna_gigpo", node=OptunaGigpoSweeperConf,
                             provider="gigpo")
register_search_spaces()
