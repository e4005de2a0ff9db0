"""Plain per-row loops that transcribe the estimators' equations: the tests' oracle.

Deliberately slow and obvious: dictionaries keyed by ids, one Python loop per equation. The
vectorised estimators in ``gigpo.advantage`` must agree with these on every batch.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque

GOAL = object()  # GraphGPO's goal node: equal to no anchor


def _normalise(value: float, members: list[float], mode: str, eps: float) -> float:
    """(value - mean(members)) / F; 0 when the group has one member."""
    return _weighted_normalise(value, [(m, 1.0) for m in members], mode, eps)


def _weighted_normalise(value: float, members: list[tuple[float, float]], mode: str, eps: float) -> float:
    """(value - mu) / F over (x, w) members: mu = sum w x / W, var = sum w (x - mu)^2 / (W - 1)."""
    size = sum(w for _, w in members)
    if size < 1.5:
        return 0.0
    mean = sum(w * x for x, w in members) / size
    if mode == "mean":
        return value - mean
    var = sum(w * (x - mean) ** 2 for x, w in members) / (size - 1)
    return (value - mean) / (math.sqrt(var) + eps)


def goal_distance(edges: list[tuple]) -> dict:
    """GraphGPO step 2 for one group's edges (u, v): BFS from GOAL over reversed edges; nodes that
    cannot reach GOAL get D + 1, D the largest finite distance (GOAL counts as 0)."""
    into = defaultdict(list)
    nodes = {GOAL}
    for u, v in edges:
        into[v].append(u)
        nodes.update((u, v))
    distance = {GOAL: 0}
    queue = deque([GOAL])
    while queue:
        v = queue.popleft()
        for u in into[v]:
            if u not in distance:
                distance[u] = distance[v] + 1
                queue.append(u)
    largest = max(distance.values())
    return {v: distance.get(v, largest + 1) for v in nodes}


def oracle(name, reward, group_id, traj_id, anchor_key, gamma=0.95, step_weight=1.0, mode=None,
           eps=1e-6, episode_stats="trajectory", penalty=None, penalty_placement="step", next_anchor_key=None,
           success=None, omega=0.8, success_reward=10.0):
    mode = mode or {"gigpo": "mean", "graphgpo": "mean_std", "grpo": "mean_std", "rloo": "mean"}[name]
    n = len(reward)
    penalty = penalty if penalty is not None else [0.0] * n
    trajs = [(group_id[i], traj_id[i]) for i in range(n)]
    # Placement: "reward" shapes r_t itself; "step" keeps r_t and charges each row's own inputs.
    if penalty_placement == "reward":
        rewards, own = [reward[i] - penalty[i] for i in range(n)], [0.0] * n
    else:
        rewards, own = list(reward), list(penalty)

    # Eq. 3 ingredients: R(tau) = sum_t r_t, and each row's episode score e_i = R(tau_i) - own_i.
    episode_return = defaultdict(float)
    rows_of = defaultdict(list)
    for i in range(n):
        episode_return[trajs[i]] += rewards[i]
        rows_of[trajs[i]].append(i)
    score = [episode_return[trajs[i]] - own[i] for i in range(n)]
    group_trajs = defaultdict(list)
    for t in rows_of:
        group_trajs[t[0]].append(t)

    # Eq. 5: R_t = sum_{k >= t} gamma^(k - t) r_k, over the rows of the same trajectory after row i.
    discounted = [0.0] * n
    for rows in rows_of.values():
        for pos, i in enumerate(rows):
            discounted[i] = sum(gamma ** (k - pos) * rewards[j] for k, j in enumerate(rows) if k >= pos)

    # GraphGPO steps 1-3: edges anchor -> next anchor (or GOAL), distances, r^G.
    graph_reward = [0.0] * n
    if name == "graphgpo":
        won = {t: bool(success[rows[-1]]) for t, rows in rows_of.items()}
        edges = defaultdict(list)
        target = []
        for i in range(n):
            last = rows_of[trajs[i]][-1] == i
            target.append(GOAL if last and won[trajs[i]] else next_anchor_key[i])
            edges[group_id[i]].append((anchor_key[i], target[i]))
        distance = {g: goal_distance(e) for g, e in edges.items()}
        for i in range(n):
            d = distance[group_id[i]][target[i]]
            graph_reward[i] = success_reward * omega**d - penalty[i]

    out = []
    for i in range(n):
        tau = trajs[i]
        group = tau[0]
        mean_score = {t: sum(score[j] for j in rows_of[t]) / len(rows_of[t]) for t in group_trajs[group]}
        if name == "rloo":
            others = [mean_score[t] for t in group_trajs[group] if t != tau]
            out.append(score[i] - sum(others) / len(others) if others else 0.0)
            continue
        # A_E: rows weigh 1 ("step") or 1 / |tau| ("trajectory"); one trajectory alone gets 0.
        members = []
        for t in group_trajs[group]:
            weight = 1.0 if episode_stats == "step" else 1.0 / len(rows_of[t])
            members += [(score[j], weight) for j in rows_of[t]]
        a_episode = _weighted_normalise(score[i], members, mode, eps) if len(group_trajs[group]) > 1 else 0.0
        if name == "grpo":
            out.append(a_episode)
            continue
        # Eq. 6-7 (and GraphGPO step 4): the step group holds the rows of the same episode group
        # with the same anchor.
        same = [j for j in range(n) if group_id[j] == group and anchor_key[j] == anchor_key[i]]
        if name == "graphgpo":
            a_step = _normalise(graph_reward[i], [graph_reward[j] for j in same], mode, eps)
        else:
            a_step = _normalise(discounted[i] - own[i], [discounted[j] - own[j] for j in same], mode, eps)
        out.append(a_episode + step_weight * a_step)  # Eq. 8
    return out
