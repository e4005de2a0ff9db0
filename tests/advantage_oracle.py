"""Plain per-row loops that transcribe the GiGPO paper's equations: the tests' oracle.

Deliberately slow and obvious: dictionaries keyed by ids, one Python loop per equation. The
vectorised estimators in ``gigpo.advantage`` must agree with these on every batch.
"""

from __future__ import annotations

import math
from collections import defaultdict


def _normalise(value: float, members: list[float], mode: str, eps: float) -> float:
    """(value - mean(members)) / F; 0 when the group has one member."""
    if len(members) < 2:
        return 0.0
    mean = sum(members) / len(members)
    if mode == "mean":
        return value - mean
    var = sum((m - mean) ** 2 for m in members) / (len(members) - 1)
    return (value - mean) / (math.sqrt(var) + eps)


def oracle(name, reward, group_id, traj_id, anchor_key, gamma=0.95, step_weight=1.0, mode=None,
           eps=1e-6, episode_stats="trajectory"):
    mode = mode or {"gigpo": "mean", "grpo": "mean_std", "rloo": "mean"}[name]
    n = len(reward)
    trajs = [(group_id[i], traj_id[i]) for i in range(n)]

    # Eq. 3 ingredients: R(tau) = sum_t r_t.
    episode_return = defaultdict(float)
    for i in range(n):
        episode_return[trajs[i]] += reward[i]
    group_trajs = defaultdict(list)
    for t in episode_return:
        group_trajs[t[0]].append(t)

    # Eq. 5: R_t = sum_{k >= t} gamma^(k - t) r_k, over the rows of the same trajectory after row i.
    rows_of = defaultdict(list)
    for i in range(n):
        rows_of[trajs[i]].append(i)
    discounted = [0.0] * n
    for rows in rows_of.values():
        for pos, i in enumerate(rows):
            discounted[i] = sum(gamma ** (k - pos) * reward[j] for k, j in enumerate(rows) if k >= pos)

    out = []
    for i in range(n):
        tau = trajs[i]
        group = tau[0]
        if name == "rloo":
            others = [episode_return[t] for t in group_trajs[group] if t != tau]
            out.append(episode_return[tau] - sum(others) / len(others) if others else 0.0)
            continue
        if episode_stats == "trajectory":
            members = [episode_return[t] for t in group_trajs[group]]
        else:
            members = [episode_return[trajs[j]] for j in range(n) if group_id[j] == group]
        a_episode = _normalise(episode_return[tau], members, mode, eps)
        if name == "grpo":
            out.append(a_episode)
            continue
        # Eq. 6-7: the step group holds the rows of the same episode group with the same anchor.
        step_members = [discounted[j] for j in range(n) if group_id[j] == group and anchor_key[j] == anchor_key[i]]
        a_step = _normalise(discounted[i], step_members, mode, eps)
        out.append(a_episode + step_weight * a_step)  # Eq. 8
    return out
