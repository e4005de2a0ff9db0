"""Multi-turn rollout: B task groups x N trajectories, one training sample per environment step.

The group runner owns the environments and the step loop; this module supplies its ``act``
callback (render each env's prompt, generate a batch of responses) and turns the runner's step
records into flat per-step arrays for ``compute_advantages`` and the loss.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from gigpo.config import EnvConfig, ModelConfig, env_options
from gigpo.console import EpisodeProgress
from gigpo.envs import env_module, make, prompt_renderer
from gigpo.envs.prompts import View, play_episode
from gigpo.policy.model import Sample, as_chat, generate
from gigpo.runner import GroupRunner, StepRecord


@dataclass
class Rollout:
    """Step records of one rollout with their flat per-step views."""

    records: list[StepRecord]
    generate_s: float = 0.0
    total_s: float = 0.0
    tokens: int = 0
    reward: np.ndarray = field(init=False)  # [n] env reward; the invalid-action penalty is the estimator's
    group_id: np.ndarray = field(init=False)  # [n]
    traj_id: np.ndarray = field(init=False)  # [n]
    anchor: list = field(init=False)  # [n]
    next_anchor: list = field(init=False)  # [n] anchor of the state each action led to
    invalid: np.ndarray = field(init=False)  # [n] bool, the action was invalid
    success: np.ndarray = field(init=False)  # [n] bool, the row's trajectory was won (at its last step)

    def __post_init__(self):
        self.group_id = np.array([r.group_id for r in self.records], dtype=np.int64)
        self.traj_id = np.array([r.traj_id for r in self.records], dtype=np.int64)
        self.anchor = [r.anchor for r in self.records]
        self.next_anchor = [r.next_anchor for r in self.records]
        self.reward = np.array([r.reward for r in self.records], dtype=np.float64)
        self.invalid = np.array([not r.valid for r in self.records], dtype=bool)
        won = {(r.group_id, r.traj_id): r.won for r in self.records}  # records are in step order: last wins
        self.success = np.array([won[(r.group_id, r.traj_id)] for r in self.records], dtype=bool)

    @property
    def samples(self) -> list[Sample]:
        return [r.payload for r in self.records]


def make_act(policy, tokenizer, env_cfg: EnvConfig, model_cfg: ModelConfig, temperature: float, clock: dict,
             generate_fn=generate):
    """The runner's callback: prompts for a batch of views -> (response text, Sample) each; every Sample
    carries the sampler's log-probs (``generate(..., logprobs=True)``)."""
    module = env_module(env_cfg.name)
    # Envs with free-form actions (WebShop's search) may list concrete choices for the constrained decoder.
    decodable = getattr(module, "decodable_actions", lambda view: view.admissible)
    render, constrained = prompt_renderer(env_cfg), model_cfg.constrained

    def act(views: list[View]):
        prompts = [as_chat(tokenizer, render(v)) for v in views]
        admissible = [decodable(v) for v in views] if constrained else None
        start = time.perf_counter()
        # The sampler's own log-probs come back with every sample: the update compares them with the
        # recomputed old log-probs (rollout/logprob_diff_*) and, with algo.tis_cap, corrects for the gap.
        samples = generate_fn(policy, tokenizer, prompts, model_cfg, temperature, admissible, logprobs=True)
        clock["generate_s"] += time.perf_counter() - start
        clock["tokens"] += sum(len(s.response_ids) for s in samples)
        return [(s.text, s) for s in samples]

    return act


def rollout(runner: GroupRunner, act_factory, seeds: list[int], group_size: int, desc: str = "rollout") -> Rollout:
    """Roll out len(seeds) groups of ``group_size`` trajectories; times generation separately.
    Env steps and episodes done are shown as ``desc`` (``console.EpisodeProgress``: a bar of env steps
    on a terminal once the rollout is slow, and a line a minute in run.log)."""
    clock = {"generate_s": 0.0, "tokens": 0}
    start = time.perf_counter()
    max_steps = getattr(runner, "env_options", {}).get("max_steps")
    progress = EpisodeProgress(len(seeds) * group_size, desc, max_steps=max_steps)
    try:
        records = runner.run(seeds, group_size, act_factory(clock), on_episodes_end=progress, on_step=progress.step)
    finally:
        progress.close()
    return Rollout(records, clock["generate_s"], time.perf_counter() - start, clock["tokens"])


def episode_summary(records: list[StepRecord], failures: list[dict] = ()) -> dict[str, float]:
    """Success (overall and per task type), return, length and invalid-action rate per episode.

    Every episode asked for counts: ``failures`` (``GroupRunner.take_stats()["failures"]``) lists
    the failed trajectories, including those whose env failed at reset and so left no records;
    those count as unsuccessful (score 0) episodes in ``success``, ``score`` and ``episodes`` (not in the per-type
    success, their task type being unknown, nor in return and length, having no steps).
    ``failed_episodes`` counts every failed trajectory.
    """
    episodes: dict[int, list[StepRecord]] = defaultdict(list)
    for r in records:
        episodes[r.traj_id].append(r)
    won = {t: rows[-1].won for t, rows in episodes.items()}
    never_started = {f["traj_id"] for f in failures} - set(episodes)
    failed = {f["traj_id"] for f in failures} | {t for t, rows in episodes.items() if rows[-1].info.get("crashed")}
    by_type: dict[str, list[bool]] = defaultdict(list)
    for t, rows in episodes.items():
        by_type[rows[0].task_type].append(won[t])
    total = len(episodes) + len(never_started)
    out = {
        "success": float(sum(won.values()) / total) if total else 0.0,
        "episode_return": float(np.mean([sum(r.reward for r in rows) for rows in episodes.values()])) if won else 0.0,
        "episode_length": float(np.mean([len(rows) for rows in episodes.values()])) if won else 0.0,
        "invalid_rate": float(np.mean([not r.valid for r in records])) if records else 0.0,
        "episodes": float(total),
        "failed_episodes": float(len(failed)),
    }
    if any("score" in r.info for r in records):
        out["score"] = float(sum(rows[-1].info.get("score", 0.0) for rows in episodes.values()) / total)
    out.update({f"success/{k}": float(np.mean(v)) for k, v in sorted(by_type.items())})
    return out


def env_corpus(env_cfg: EnvConfig, episodes: int = 16, max_prompts: int = 200, seed: int = 0) -> list[str]:
    """Text for training the tiny model's tokenizer: prompts of random-action episodes, at most
    ``max_prompts`` of them (an ALFWorld step takes ~0.1 s)."""
    module = env_module(env_cfg.name)
    decodable = getattr(module, "decodable_actions", lambda view: view.admissible)
    options = env_options(env_cfg)
    env = make(env_cfg.name, **options)
    rng = random.Random(seed)
    texts, prompts = [], 0
    actions: list[str] = []
    choose = lambda t, view: rng.choice(actions) if actions else None  # noqa: E731 -- the actions just listed
    render = prompt_renderer(env_cfg)
    try:
        for episode in range(episodes):
            for view, _ in play_episode(env, episode, env_cfg.history_len, env_cfg.max_steps, choose):
                texts.append(render(view))
                prompts += 1
                if prompts >= max_prompts:
                    return texts
                actions = decodable(view)
                texts.extend(f"<action>{a}</action>" for a in actions)
    finally:
        env.close()
    return texts
