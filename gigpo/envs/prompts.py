"""Prompt rendering and action projection shared by every environment.

The policy answers in the paper's format ``<think>...</think><action>...</action>``. A prompt is
a ``str.format`` template with the fields ``task``, ``history``, ``observation``,
``admissible`` and ``step``; each env module defines its own ``PROMPT`` (for instruct models)
and ``COMPACT_PROMPT`` (short, for tiny models without a chat template).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ACTION_TAG = re.compile(r"<action>(.*?)</action>", re.DOTALL | re.IGNORECASE)
# An admissible entry like "search[<your query>]" is a template: any non-empty "search[...]" fits it.
_TEMPLATE = re.compile(r"^(\w+)\[<[^<>]*>\]$")


@dataclass
class View:
    """What the policy sees at one step of one trajectory.

    env_index:   index of the env in the runner batch.
    group_id:    the group (seed) this trajectory belongs to.
    traj_id:     the trajectory's id, unique within one ``GroupRunner.run``.
    step:        0-based step index within the trajectory.
    task:        instruction text (``Step.info["task"]``).
    observation: current observation text.
    admissible:  admissible actions (empty when free-form).
    history:     the last k (observation, action) pairs, oldest first.
    """

    env_index: int
    group_id: int
    traj_id: int
    step: int
    task: str
    observation: str
    admissible: list[str]
    history: list[tuple[str, str]] = field(default_factory=list)


def format_history(history: list[tuple[str, str]], first_step: int) -> str:
    """The history as numbered "observation / action" lines; "(none)" when empty.

    ``first_step`` is the step index of the oldest pair, so numbers match the episode's steps.
    """
    if not history:
        return "(none)"
    lines = []
    for offset, (observation, action) in enumerate(history):
        lines.append(f"[step {first_step + offset}] observation:\n{observation}\naction: {action}")
    return "\n".join(lines)


def render(template: str, view: View) -> str:
    """Fill ``template`` (fields: task, history, observation, admissible, step) from ``view``."""
    return template.format(
        task=view.task,
        history=format_history(view.history, view.step - len(view.history)),
        observation=view.observation,
        admissible=", ".join(view.admissible) if view.admissible else "(any)",
        step=view.step,
    )


def project_action(text: str, admissible: list[str]) -> tuple[str, bool]:
    """Map the model's raw text to an env action: ``(action, valid)``.

    The action is the content of the last ``<action>...</action>``, stripped and matched
    case-insensitively against ``admissible`` (the admissible spelling is returned). It is valid
    when the tags are present and the action space is free-form (``admissible`` empty) or the
    action is admissible, or fills a template entry such as ``search[<your query>]`` (the same
    verb with a non-empty argument). Invalid answers return the extracted text (or the whole
    text, stripped, when there are no tags) with ``False``.
    """
    matches = _ACTION_TAG.findall(text)
    if not matches:
        return text.strip(), False
    action = matches[-1].strip()
    if not admissible:
        return action, True
    by_lower = {candidate.lower(): candidate for candidate in admissible}
    if action.lower() in by_lower:
        return by_lower[action.lower()], True
    for candidate in admissible:
        template = _TEMPLATE.match(candidate)
        if template and re.fullmatch(rf"{re.escape(template.group(1))}\[\s*\S.*\]", action, re.I | re.S):
            return action, True
    return action, False
