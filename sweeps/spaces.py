"""Search spaces: the YAML files in conf/sweep/, the one source both sweep entry points read.

``python -m sweeps.run sweep=<name>`` loads them with ``load_space``; the Hydra sweeper
(``hydra/sweeper=optuna_gigpo``) sees the same files as the config group ``hydra/sweeper/search_space``
(``register_search_spaces``) and checks what it composed with ``parse_space``. Only omegaconf is
imported here: Hydra's plugin scan imports this module on every ``python run.py`` start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

import gigpo.conf

# Through the package, never a path beside this file: installed, conf/ is gigpo/conf/.
CONF_DIR = Path(gigpo.conf.__file__).parent
SPACE_DIR = CONF_DIR / "sweep"
SPACE_GROUP = "hydra/sweeper/search_space"
DISTRIBUTIONS = ("categorical", "float", "int")
SPACE_KEYS = ("params", "enqueue", "overrides", "options")


@dataclass
class SearchSpace:
    """A parsed conf/sweep/<name>.yaml (format documented in conf/sweep/group_size_weight.yaml)."""

    name: str
    params: dict[str, dict[str, Any]]
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def parse_space(raw: dict, name: str, source: str) -> SearchSpace:
    """Check a space's mapping (from ``source``, named in errors) and return it as a SearchSpace."""
    unknown = set(raw) - set(SPACE_KEYS)
    if unknown or not raw.get("params"):
        raise ValueError(f"{source}: needs `params`, may have enqueue/overrides/options; got {sorted(raw)}")
    for key, spec in raw["params"].items():
        if not isinstance(spec, dict) or spec.get("type") not in DISTRIBUTIONS:
            got = spec.get("type") if isinstance(spec, dict) else spec
            raise ValueError(f"{source}: {key}.type must be one of {DISTRIBUTIONS}, got {got!r}")
    for point in raw.get("enqueue") or []:
        if set(point) != set(raw["params"]):
            raise ValueError(f"{source}: enqueued point {point} must set exactly {sorted(raw['params'])}")
    return SearchSpace(name, raw["params"], list(raw.get("enqueue") or []), list(raw.get("overrides") or []),
                       dict(raw.get("options") or {}))


def first_point(space: SearchSpace) -> dict[str, Any]:
    """Each parameter's first choice or lower bound: composed before a sweep starts, to fail fast."""
    return {k: s["choices"][0] if s["type"] == "categorical" else s["low"] for k, s in space.params.items()}


def load_space(name: str) -> SearchSpace:
    """``name`` is a file in conf/sweep/ (without .yaml) or a path to a YAML file."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = SPACE_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"sweep={name}: no {path}; known sweeps: {known}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return parse_space(raw, path.stem, str(path))


def register_search_spaces() -> list[str]:
    """Store every conf/sweep/*.yaml in Hydra's ConfigStore as ``hydra/sweeper/search_space=<name>``.

    The files stay where sweeps.run reads them; Hydra composes them under ``hydra.sweeper.search_space``,
    where ``hydra.sweeper.search_space.params...=`` overrides still apply. Returns the names stored.
    """
    from hydra.core.config_store import ConfigStore

    names = []
    for path in sorted(SPACE_DIR.glob("*.yaml")):
        ConfigStore.instance().store(group=SPACE_GROUP, name=path.stem, node=OmegaConf.load(path),
                                     provider="gigpo")
        names.append(path.stem)
    return names
