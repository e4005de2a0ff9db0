"""The text-environment protocol every gigpo environment satisfies.

An environment is a small class with ``reset(seed) -> Step`` and ``step(action) -> Step``.
GiGPO needs three things from it beyond reward: seeded resets (all N trajectories of a group
start in the same state), a *history-free* anchor key (the state used to form step groups,
paper Eq. 6), and the admissible actions (for prompting, projection and constrained decoding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol, runtime_checkable


@dataclass
class Step:
    """What the agent sees after ``reset`` or ``step``.

    observation: the text the agent reads for this state.
    anchor:      hashable, history-free key of the environment state (step grouping key).
    admissible:  admissible action strings; empty when the action space is free-form.
    reward:      reward of the transition that led here (0.0 after reset).
    done:        the episode ended (success, failure or step limit).
    won:         the task was solved.
    info:        at least ``task`` (instruction text), ``task_type`` and ``valid`` (False when
                 the last action was not understood or not admissible; True after reset).
    """

    observation: str
    anchor: Hashable
    admissible: list[str]
    reward: float = 0.0
    done: bool = False
    won: bool = False
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class TextEnv(Protocol):
    """A seeded text environment. ``max_steps`` bounds the episode (done=True when reached)."""

    max_steps: int

    def reset(self, seed: int) -> Step: ...

    def step(self, action: str) -> Step: ...

    def close(self) -> None: ...
