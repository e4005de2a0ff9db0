"""Environment registry: ``make(name, **options)`` builds an environment by its Hydra ``env=`` name.

Entries are imported lazily so that optional engines (alfworld) are needed only when used.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from gigpo.envs.base import Step, TextEnv

# name -> "module:Class". The module also holds the env's prompt template and action projection.
ENVS: dict[str, str] = {
    "sokoban": "gigpo.envs.sokoban:SokobanEnv",
    "alfworld": "gigpo.envs.alfworld:AlfWorldEnv",
    "webshop": "gigpo.envs.webshop:WebShopEnv",
    "gridnav": "gigpo.envs.gridnav:GridNavEnv",
}


def env_module(name: str) -> ModuleType:
    """The module that defines environment ``name`` (its class, prompt and projection)."""
    if name not in ENVS:
        raise ValueError(f"env name: unknown environment {name!r}; known: {sorted(ENVS)}")
    return importlib.import_module(ENVS[name].split(":")[0])


def make(name: str, **options) -> TextEnv:
    """Build environment ``name`` with keyword ``options`` (the env config minus runner keys)."""
    cls = getattr(env_module(name), ENVS[name].split(":")[1])
    return cls(**options)


__all__ = ["ENVS", "Step", "TextEnv", "env_module", "make"]
