"""Prompt rendering and action projection shared by every environment.

The policy answers in the paper's format ``<think>...</think><action>...</action>``. A prompt is
a ``str.format`` template; each env module declares its templates once as ``PROMPTS``, a
``PromptSet``: ``PROMPT`` (for instruct models), optionally a ``PROMPT_FIRST`` used while there is
no history yet (step 0, or history_len 0), and ``COMPACT_PROMPT`` (short, for tiny models without a
chat template). ``renderer`` chooses among them (and user template files) once and returns the
function that fills the chosen template for each view (``render``). Fields (``FIELDS``):

  task                 instruction text
  observation          current observation text
  step                 0-based index of the current step
  history              the project's history form: "[step k] observation: ... action: ..." lines
  recent_actions       short history: the last actions, comma-separated, "(none)" when empty
  admissible           admissible actions, comma-separated
  task_description     = task (the paper code's name)
  current_observation  = observation
  step_count           steps already taken (= step)
  current_step         1-based number of the current step (= step + 1)
  history_length       number of (observation, action) pairs shown
  action_history       "[Observation k: '...', Action k: '...']" lines, k counted from 1
  admissible_actions   admissible actions quoted one per line, "help" left out
  available_actions    = admissible_actions (the name verl-agent's WebShop template uses)

The second group carries the field names of verl-agent's prompt templates, so a template file
copied from the paper code works with ``env.prompt_template=PATH`` unchanged.

Projection (``env.projection``) turns the model's answer into an env action: ``paper`` follows
the paper code (format-only validity, see ``project_tagged``); ``strict`` (``project_action``)
also requires an admissible action.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

_ACTION_TAG = re.compile(r"<action>(.*?)</action>", re.DOTALL | re.IGNORECASE)
# An admissible entry like "search[<your query>]" is a template: any non-empty "search[...]" fits it.
_TEMPLATE = re.compile(r"^(\w+)\[<[^<>]*>\]$")
_CJK = re.compile(r"[\u4e00-\u9fff]")

PROJECTIONS = ("paper", "strict")
FIELDS = frozenset({"task", "observation", "step", "history", "recent_actions", "admissible",
                    "task_description", "current_observation", "step_count", "current_step",
                    "history_length", "action_history", "admissible_actions", "available_actions"})
HISTORY_FIELDS = frozenset({"history", "recent_actions", "action_history"})


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


def play_episode(env, seed: int, history_len: int, steps: int, choose):
    """One episode from ``env.reset(seed=seed)`` as the policy sees it: yields ``(view, step)``
    before each action, at most ``steps`` times; ``choose(t, view)`` then picks the action (None
    ends the episode), and the episode also ends when the env says done. The one loop behind the
    tokenizer's corpus (``rollout.env_corpus``) and the prompt printer (``envs.render``)."""
    step = env.reset(seed=seed)
    history: list[tuple[str, str]] = []
    for t in range(steps):
        recent = history[-history_len:] if history_len > 0 else []  # [-0:] would be all
        view = View(0, 0, 0, t, step.info.get("task", ""), step.observation, list(step.admissible), recent)
        yield view, step
        action = None if step.done else choose(t, view)
        if action is None:
            return
        history.append((step.observation, action))
        step = env.step(action)


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


def format_action_history(history: list[tuple[str, str]], first_step: int) -> str:
    """The paper code's history form: one "[Observation k: '...', Action k: '...']" line per
    pair, k counted from 1 (``first_step`` is the 0-based step of the oldest pair)."""
    return "\n".join(f"[Observation {first_step + i + 1}: '{observation}', Action {first_step + i + 1}: '{action}']"
                     for i, (observation, action) in enumerate(history))


def format_admissible(admissible: list[str]) -> str:
    """Admissible actions quoted, one per line, without "help" (as the paper code lists them)."""
    return "\n ".join(f"'{action}'" for action in admissible if action != "help")


def render(template: str, view: View, admissible_format=format_admissible) -> str:
    """Fill ``template`` (any of ``FIELDS``) from ``view``; ``admissible_format`` writes the
    ``admissible_actions`` field."""
    first_step = view.step - len(view.history)
    return template.format(
        task=view.task,
        history=format_history(view.history, first_step),
        observation=view.observation,
        admissible=", ".join(view.admissible) if view.admissible else "(any)",
        step=view.step,
        recent_actions=", ".join(action for _, action in view.history) or "(none)",
        task_description=view.task,
        current_observation=view.observation,
        step_count=view.step,
        current_step=view.step + 1,
        history_length=len(view.history),
        action_history=format_action_history(view.history, first_step),
        admissible_actions=admissible_format(view.admissible),
        available_actions=admissible_format(view.admissible),
    )


@dataclass(frozen=True)
class PromptSet:
    """An env's built-in prompts. ``full``: for instruct models; ``first``: in its place while the
    view has no history (None: ``full`` throughout); ``compact``: for tiny models. ``paper_view`` and
    ``admissible_format``: how full prompts and user templates show a view (WebShop's pages and
    actions as the paper code writes them); the compact prompt shows the view as it is."""

    full: str
    compact: str
    first: str | None = None
    paper_view: Callable[[View], View] | None = None
    admissible_format: Callable[[list[str]], str] = format_admissible


def renderer(prompts: PromptSet, compact: bool, template: str | None = None,
             template_first: str | None = None) -> Callable[[View], str]:
    """The function view -> prompt text, with the templates chosen once (a rollout renders every env
    step's prompt). A user ``template`` replaces the env's prompt (compact or full) at every step,
    except at steps without history when ``template_first`` is given; without a user ``template``,
    ``template_first`` replaces the env's ``first`` (or comes before the compact prompt)."""
    if template is None and compact:
        later, first, shown, admissible_format = prompts.compact, template_first, None, format_admissible
    else:
        later = prompts.full if template is None else template
        first = template_first if template_first is not None or template is not None else prompts.first
        shown, admissible_format = prompts.paper_view, prompts.admissible_format

    def render_view(view: View) -> str:
        chosen = first if first is not None and not view.history else later
        return render(chosen, shown(view) if shown is not None else view, admissible_format)

    return render_view


def template_fields(template: str) -> set[str]:
    """The ``str.format`` field names used in ``template``."""
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


@lru_cache(maxsize=32)
def load_template(path: str) -> str:
    """A prompt template file; raises ValueError naming unknown fields (see ``FIELDS``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"prompt template {path!r} does not exist")
    text = file.read_text()
    unknown = template_fields(text) - FIELDS
    if unknown:
        raise ValueError(f"prompt template {path}: unknown fields {sorted(unknown)}; known: {sorted(FIELDS)}")
    return text


def project_tagged(response: str, tail_chars: int) -> tuple[str, bool]:
    """The paper code's projection (verl-agent's ALFWorld/WebShop ``projection``): ``(action, valid)``.

    The answer is lower-cased; the action is the text between the first ``<action>`` and the
    first ``</action>``, stripped (empty when ``</action>`` comes first, as there). Valid iff both
    tags occur, ``<think>`` and ``</think>`` occur (case-sensitive, in the raw answer) and the
    answer holds no CJK character. Admissibility is not checked: the env receives the action
    either way. Without the tag pair the last ``tail_chars`` characters are sent and the step is
    invalid (ALFWorld 30, WebShop 20 in the paper code).
    """
    lowered = response.lower()
    start, end = lowered.find("<action>"), lowered.find("</action>")
    if start < 0 or end < 0:
        return lowered[-tail_chars:], False
    action = lowered[start + len("<action>"):end].strip()
    valid = "<think>" in response and "</think>" in response and not _CJK.search(response)
    return action, valid


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
