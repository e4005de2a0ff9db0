"""Environment registry: ``make(name, **options)`` builds an environment by its Hydra ``env=`` name.

Entries are imported lazily so that optional engines (alfworld) are needed only when used.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable

from gigpo.envs.base import Step, TextEnv
from gigpo.envs.prompts import PROJECTIONS, View, load_template, renderer
from gigpo.envs.prompts import project_action as project_action_strict

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


def projection(name: str, mode: str):
    """The ``(response, admissible) -> (action, valid)`` function of env ``name`` for
    ``env.projection=mode``: "paper" is the env module's ``project_action`` (the paper code's
    format-only rules), "strict" the shared ``prompts.project_action`` (tags + admissible)."""
    if mode not in PROJECTIONS:
        raise ValueError(f"env.projection={mode!r} is not one of {list(PROJECTIONS)}")
    if mode == "strict":
        return project_action_strict
    module = env_module(name)
    if not hasattr(module, "project_action"):
        raise ValueError(f"env.projection=paper: environment {name!r} has no paper projection; use strict")
    return module.project_action


def prompt_renderer(env_cfg) -> Callable[[View], str]:
    """The policy's prompt for a view under ``env_cfg``: the env module's ``PROMPTS`` (compact or full,
    ``compact_prompt``), or template files (``prompt_template``, and ``prompt_template_first`` for steps
    without history), with ``prompt_style=react`` the expert examples before each (see
    ``prompts.renderer``). ``env_cfg`` is read once: a rollout renders every env step's prompt, and
    reading an OmegaConf config per view cost a tenth of an iteration."""
    module = env_module(env_cfg.name)
    template = load_template(env_cfg.prompt_template) if getattr(env_cfg, "prompt_template", None) else None
    first = load_template(env_cfg.prompt_template_first) if getattr(env_cfg, "prompt_template_first", None) else None
    render = renderer(module.PROMPTS, bool(env_cfg.compact_prompt), template, first)
    if getattr(env_cfg, "prompt_style", "plain") != "react":
        return render
    from gigpo.config import env_options  # k expert example episodes before every prompt, built once
    from gigpo.envs.render import react_examples

    examples = react_examples(env_cfg, env_options(env_cfg))
    return lambda view: examples + "\n\n" + render(view)


__all__ = ["ENVS", "Step", "TextEnv", "env_module", "make", "projection", "prompt_renderer"]
