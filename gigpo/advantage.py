"""Advantage estimators for multi-step agents: GiGPO, GraphGPO, GRPO and RLOO over flat per-step arrays.

Every estimator sees the same flat batch, one row per environment step:

    reward     (n,) float   per-step env reward r_t (task reward plus any env shaping)
    group_id   (n,)         episode group: trajectories started from the same initial state
    traj_id    (n,)         trajectory; a trajectory is the pair (group_id, traj_id) and its rows
                            appear in time order, not necessarily contiguous
    anchor_key (n,)         hashable, history-free environment state seen before row i's action
    penalty    (n,) float   invalid-action penalty p_i (0 on valid rows); None: all 0

GiGPO (Feng et al. 2025, arXiv 2505.10978):

    R(tau)  = sum_t r_t                                             episode return
    A_E     = (R(tau) - mean_{tau' in group} R(tau')) / F           macro advantage, Eq. 3
    R_t     = sum_{k>=t} gamma^(k-t) r_k                            discounted return, Eq. 5
    G_S     = rows with the same (group_id, anchor_key)             step group, Eq. 6
    A_S     = (R_t - mean_{rows in G_S} R_t) / F                    micro advantage, Eq. 7
    A       = A_E + w * A_S                                         GiGPO advantage, Eq. 8

F = 1 in mode "mean" and std (ddof=1) + eps in mode "mean_std". A step group with one row gets
A_S = 0, and an episode group with one trajectory gets A_E = 0 (nothing to compare against; the
reference code would give such a trajectory its raw return instead).

Invalid-action penalty, ``penalty_placement``:

- "step" (default, the reference code verl-agent): the penalty touches only the invalid row's own
  inputs. The rewards r_t, hence R(tau) and every R_t, stay unpenalised; row i's episode score is
  e_i = R(tau_i) - p_i and its step input R_t,i - p_i.
- "reward": r_t <- r_t - p_t before anything else, so the penalty lowers R(tau) for every row of the
  trajectory and the discounted returns of all earlier rows; e_i = R(tau_i).

The episode statistics are then over rows, each row j of group g weighing w_j:

    mu_g = sum_j w_j e_j / W_g,   W_g = sum_j w_j,   F_g = sqrt(sum_j w_j (e_j - mu_g)^2 / (W_g - 1)) + eps
    A_E,i = (e_i - mu_g) / F_g

with w_j = 1 for ``episode_stats="step"`` (the reference code: each row carries its trajectory's
return minus its own penalty, W_g = rows) and w_j = 1 / |tau_j| for ``episode_stats="trajectory"``
(each trajectory weighs one, spread over its rows, W_g = trajectories). Without penalties every
row of tau has e_j = R(tau), and the trajectory case is exactly Eq. 3 (mean and ddof=1 std over
the group's returns) while the step case is the reference's row statistics.

GraphGPO (Beyond Trajectory-Level Attribution: Graph-Based Credit Assignment for Agentic
Reinforcement Learning, arXiv 2605.26684, ICML 2026) replaces the step part by a graph reward.
It also needs ``next_anchor_key`` (the anchor of the observation that followed row i's action,
also after the last step) and ``success`` (row i's trajectory succeeded, repeated on its rows):

1. per episode group a directed graph whose nodes are anchor keys; row i adds the edge
   anchor_i -> next_i, where next_i is next_anchor_i, or one shared goal node for the last row of
   a successful trajectory (repeats and self-loops allowed, unit cost);
2. d(v) = fewest edges from v to the goal (the goal has d = 0); a node that cannot reach it gets
   D_g + 1, D_g the largest finite d in the group (so a group without success has d = 1 everywhere);
3. r^G_i = R_succ * omega ** d(next_i) - p_i        (R_succ = ``success_reward``, p_i raw in both
   placements: the graph reward is per row, nothing propagates);
4. A_G = r^G normalised inside GiGPO's step groups G_S (same mode, same singleton rule);
5. A = A_E + w * A_G, with A_E GiGPO's episode part above.

The reference code finds each row's path return with a per-row scan over the group's rows
(quadratic in the group's rows); here one multi-source search from every group's goal over the
reversed edges (scipy's C Dijkstra with unit weights, from a super-source linked to the goals)
gives every distance at once, so the cost stays linear-ish in the rows.

``grpo`` is A_E broadcast to every step of the trajectory (default mode "mean_std"). ``rloo`` uses
the leave-one-out baseline A_i = e_i - mean_{tau' != tau_i} ebar(tau'), ebar(tau') the mean of
e_j over the rows of tau' (Ahmadian et al. 2024).

Cost is O(n) hashing plus one sort, and a backward pass whose numpy calls grow with the longest
trajectory, not with n; ``benchmarks/advantage.py`` measures it against the per-row loop oracle
(``benchmarks/advantage_oracle.py``, the one the tests check every estimator against).
GraphGPO hashes anchors and next anchors (2n keys, its main cost: about 2x GiGPO's time at 1e4-1e5
rows, 1.5x at 1e6), builds the reversed-edge CSR and runs one C search over all groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np
import pandas as pd

MODES = ("mean", "mean_std")
SIMILARITY_MATCHES = ("best", "first")
EPISODE_STATS = ("trajectory", "step")
PENALTY_PLACEMENTS = ("step", "reward")


@dataclass(frozen=True)
class AdvantageOptions:
    """Knobs shared by every estimator."""

    gamma: float = 0.95
    """Discount of the step-level return R_t (Eq. 5)."""
    step_weight: float = 1.0
    """w in A = A_E + w * A_S (Eq. 8)."""
    mode: str = "mean"
    """"mean": F = 1; "mean_std": F = std (ddof=1) + eps."""
    eps: float = 1e-6
    """Added to the std in mode "mean_std"."""
    episode_stats: str = "trajectory"
    """"trajectory": Eq. 3's mean/std over the group's trajectories. "step": over the group's
    step rows, each carrying its trajectory's return (what the reference code does; longer
    trajectories then weigh more, which Eq. 3 does not describe)."""
    similarity: float | None = None
    """None: exact anchor matching. A threshold in (0, 1]: text anchors similar enough fall in one
    step group, by the rule ``similarity_match`` names; see ``step_group_ids``."""
    penalty_placement: str = "step"
    """"step": p_i lowers only row i's episode score and step input (reference code); "reward":
    p_t is subtracted from r_t before returns are summed."""
    omega: float = 0.8
    """GraphGPO's distance decay: r^G = R_succ * omega ** d."""
    success_reward: float = 10.0
    """GraphGPO's R_succ."""
    similarity_match: str = "best"
    """"best": the most similar founder by rapidfuzz ``ratio``; "first": the first founder whose
    difflib ``SequenceMatcher.ratio`` reaches the threshold (the reference code's rule)."""


# ---------------------------------------------------------------- validation and indexing


def _factorize(values: Sequence[Hashable], name: str) -> np.ndarray:
    """Dense int codes of ``values``; ValueError names ``name`` on unhashable items.

    Integer arrays go through pandas' hash table; anything else through a dict built by C-level
    loops (``dict.fromkeys`` then ``map``), the fastest exact way to hash arbitrary Python objects.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "biu":
        return pd.factorize(values)[0].astype(np.int64, copy=False)
    try:
        index = dict.fromkeys(values)
    except TypeError as err:
        bad = next(i for i, v in enumerate(values) if not _hashable(v))
        raise ValueError(f"{name}[{bad}] is unhashable ({type(values[bad]).__name__}): {err}") from None
    for code, key in enumerate(index):
        index[key] = code
    return np.fromiter(map(index.__getitem__, values), dtype=np.int64, count=len(values))


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _pair_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense codes of the pairs (a_i, b_i) for non-negative int codes a, b."""
    return pd.factorize(a * (int(b.max(initial=0)) + 1) + b)[0].astype(np.int64, copy=False)


@dataclass(frozen=True)
class FlatBatch:
    """A validated batch with dense integer codes; built once by ``prepare``."""

    reward: np.ndarray  # [n] float64, the env reward r_t, unpenalised
    group: np.ndarray  # [n] int64, dense episode-group code
    traj: np.ndarray  # [n] int64, dense trajectory code (unique per (group_id, traj_id))
    anchor: np.ndarray | None  # [n] int64, dense code of the (group, anchor) step group; None: not built
    traj_group: np.ndarray  # [n_traj] int64, group code of each trajectory
    penalty: np.ndarray  # [n] float64, invalid-action penalty p_i (0 on valid rows)
    graph: Graph | None = None  # GraphGPO's per-group state graph; None unless next anchors were given


@dataclass(frozen=True)
class Graph:
    """GraphGPO's edges, one per row, over dense node codes; goal nodes follow the state nodes."""

    source: np.ndarray  # [n] int64, node of (group, anchor_i)
    target: np.ndarray  # [n] int64, node of (group, next_anchor_i), or the group's goal node
    node_group: np.ndarray  # [n_nodes] int64, episode group of every node, goals included
    n_states: int  # state nodes (goals excluded); goal of group g is node n_states + g


def prepare(reward, group_id, traj_id, anchor_key, similarity: float | None = None, penalty=None,
            next_anchor_key=None, success=None, similarity_match: str = "best",
            step_groups: bool = True) -> FlatBatch:
    """Validate the flat arrays and turn ids and anchors into dense integer codes.

    ``next_anchor_key`` and ``success`` (GraphGPO's inputs) come together or not at all; with them
    the batch also carries the state graph (anchors are then matched exactly). Without
    ``step_groups`` (estimators that read none: GRPO, RLOO) the step groups are not built and
    ``anchor`` is None (anchors are then not hashed nor checked). Raises ValueError
    naming the argument for mismatched lengths, NaN/inf rewards or penalties, unhashable anchors and
    a success flag that changes inside a trajectory.
    """
    reward = _finite_floats(reward, "reward")
    n = reward.shape[0]
    named = [("group_id", group_id), ("traj_id", traj_id), ("anchor_key", anchor_key)]
    named += [(k, v) for k, v in (("penalty", penalty), ("next_anchor_key", next_anchor_key), ("success", success))
              if v is not None]
    for name, arr in named:
        if len(arr) != n:
            raise ValueError(f"{name} has length {len(arr)}, but reward has length {n}")
    penalty = np.zeros(n) if penalty is None else _finite_floats(penalty, "penalty")
    group = _factorize(group_id, "group_id")
    traj_local = _factorize(traj_id, "traj_id")
    traj = _pair_codes(group, traj_local)
    traj_group = np.zeros(int(traj.max(initial=-1)) + 1, dtype=np.int64)
    traj_group[traj] = group
    if (next_anchor_key is None) != (success is None):
        raise ValueError("next_anchor_key and success: give both (GraphGPO) or neither")
    if next_anchor_key is None:
        anchor = _step_groups(group, anchor_key, similarity, similarity_match) if step_groups else None
        return FlatBatch(reward, group, traj, anchor, traj_group, penalty)
    if similarity is not None:
        raise ValueError("similarity: GraphGPO's graph nodes are exact anchors; use similarity=None")
    both = _factorize_pair(anchor_key, next_anchor_key)
    anchor = _pair_codes(group, both[:n])
    graph = _graph(group, traj, traj_group, both, _success_per_trajectory(success, traj, len(traj_group)))
    return FlatBatch(reward, group, traj, anchor, traj_group, penalty, graph)


def _finite_floats(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"{name}[{bad}] is {values[bad]}: {name} values must be finite")
    return values


def _factorize_pair(anchor_key, next_anchor_key) -> np.ndarray:
    """Dense codes of anchors and next anchors in one table, shape [2n]: equal keys, equal codes."""
    if all(isinstance(v, np.ndarray) and v.dtype.kind in "biu" for v in (anchor_key, next_anchor_key)):
        return _factorize(np.concatenate([anchor_key, next_anchor_key]), "anchor_key")
    try:
        return _factorize(list(anchor_key) + list(next_anchor_key), "anchor_key")
    except ValueError:
        _factorize(anchor_key, "anchor_key")
        _factorize(next_anchor_key, "next_anchor_key")  # the culprit is a next anchor: name it
        raise


def _success_per_trajectory(success, traj: np.ndarray, n_traj: int) -> np.ndarray:
    """Success flag per trajectory, [n_traj] bool; ValueError unless constant over each trajectory's rows."""
    success = np.asarray(success, dtype=bool)
    hits = np.bincount(traj, weights=success, minlength=n_traj)
    rows = np.bincount(traj, minlength=n_traj)
    mixed = (hits > 0) & (hits < rows)
    if mixed.any():
        bad = int(np.argmax(mixed))
        raise ValueError(f"success must be constant over a trajectory's rows; trajectory code {bad} mixes")
    return hits > 0


def _graph(group: np.ndarray, traj: np.ndarray, traj_group: np.ndarray, keys: np.ndarray,
           traj_success: np.ndarray) -> Graph:
    """One edge per row: (group, anchor) -> (group, next anchor), or -> the group's goal for the
    last row of a successful trajectory. ``keys`` holds the anchor codes, then the next-anchor codes."""
    n = len(group)
    nodes = _pair_codes(np.concatenate([group, group]), keys)
    n_states = int(nodes.max(initial=-1)) + 1
    n_groups = int(group.max(initial=-1)) + 1
    node_group = np.empty(n_states + n_groups, dtype=np.int64)
    node_group[nodes[:n]] = group
    node_group[nodes[n:]] = group
    node_group[n_states:] = np.arange(n_groups)
    # Last row of each trajectory: the highest row index (rows are in time order per trajectory).
    last = np.zeros(len(traj_group), dtype=np.int64)
    np.maximum.at(last, traj, np.arange(n))
    target = nodes[n:].copy()
    won_last = last[traj_success]
    target[won_last] = n_states + group[won_last]
    return Graph(nodes[:n], target, node_group, n_states)


def step_group_ids(group_id, anchor_key: Sequence[Hashable], similarity: float | None = None,
                   similarity_match: str = "best") -> np.ndarray:
    """Dense step-group code per row: rows with the same (group_id, anchor_key) share one (Eq. 6).

    With ``similarity`` = s in (0, 1], anchors are compared as text instead of exactly (leader
    clustering): inside each episode group, distinct anchor texts are visited in order of first
    appearance (the rollout order); each joins an existing cluster, compared with the cluster's
    *founding* text only, or founds a new one. Which cluster, by ``similarity_match``:

    - "best": the founder with the highest rapidfuzz ``fuzz.ratio`` (normalised Indel similarity,
      2 * LCS / (|a| + |b|), x 100), earliest on ties, if that score is >= 100 * s;
    - "first": the earliest founder whose difflib ``SequenceMatcher(None, text, founder).ratio()``
      is >= s: verl-agent's ``build_step_group`` rule exactly (it tests every row, but a row whose
      text was seen before meets the same founders in the same order, so visiting each distinct text
      once gives the same clusters). difflib's ratio is not rapidfuzz's (matching blocks, with
      difflib's automatic junk heuristic on texts of 200+ characters), and "first" can pick a less
      similar founder than "best", so the two can group differently.

    Clusters do not chain: two texts both similar to a founder but not to each other still share
    its cluster.
    """
    if len(group_id) != len(anchor_key):
        raise ValueError(f"anchor_key has length {len(anchor_key)}, but group_id has length {len(group_id)}")
    return _step_groups(_factorize(group_id, "group_id"), anchor_key, similarity, similarity_match)


def _step_groups(group: np.ndarray, anchor_key: Sequence[Hashable], similarity: float | None,
                 similarity_match: str = "best") -> np.ndarray:
    """``step_group_ids`` for dense int group codes."""
    anchor = _factorize(anchor_key, "anchor_key")
    if similarity is None:
        return _pair_codes(group, anchor)
    if not 0.0 < similarity <= 1.0:
        raise ValueError(f"similarity must be in (0, 1], got {similarity}")
    if similarity_match not in SIMILARITY_MATCHES:
        raise ValueError(f"similarity_match: unknown {similarity_match!r}; known: {list(SIMILARITY_MATCHES)}")
    texts: dict[int, str] = {}
    for code, key in zip(anchor.tolist(), anchor_key):
        texts.setdefault(code, str(key))
    cluster_of: dict[tuple[int, int], int] = {}
    founders: dict[int, list[tuple[str, int]]] = {}
    match = _best_founder if similarity_match == "best" else _first_founder
    out = np.empty(len(anchor), dtype=np.int64)
    for i, (g, a) in enumerate(zip(group.tolist(), anchor.tolist())):
        key = (g, a)
        if key not in cluster_of:
            leaders = founders.setdefault(g, [])
            hit = match(texts[a], [t for t, _ in leaders], similarity)
            if hit is None:
                cluster_of[key] = len(cluster_of)
                leaders.append((texts[a], cluster_of[key]))
            else:
                cluster_of[key] = leaders[hit][1]
        out[i] = cluster_of[key]
    return pd.factorize(out)[0].astype(np.int64, copy=False)


def _best_founder(text: str, founders: list[str], similarity: float) -> int | None:
    """Index of the most similar founder by rapidfuzz ratio (earliest on ties), if >= 100 * similarity."""
    from rapidfuzz import fuzz, process

    hit = process.extractOne(text, founders, scorer=fuzz.ratio, score_cutoff=100.0 * similarity)
    return None if hit is None else hit[2]


def _first_founder(text: str, founders: list[str], similarity: float) -> int | None:
    """Index of the first founder whose difflib ratio with ``text`` is >= similarity (verl-agent's rule)."""
    from difflib import SequenceMatcher

    for k, founder in enumerate(founders):
        if SequenceMatcher(None, text, founder).ratio() >= similarity:
            return k
    return None


# ---------------------------------------------------------------- building blocks


def placed_reward(batch: FlatBatch, opts: AdvantageOptions) -> np.ndarray:
    """The rewards returns are summed from: r_t, or r_t - p_t under placement "reward"."""
    return batch.reward - batch.penalty if opts.penalty_placement == "reward" else batch.reward


def row_penalty(batch: FlatBatch, opts: AdvantageOptions) -> np.ndarray:
    """What row i's own episode score and step input lose: p_i under placement "step", else 0."""
    return batch.penalty if opts.penalty_placement == "step" else np.zeros_like(batch.penalty)


def episode_returns(batch: FlatBatch, reward: np.ndarray) -> np.ndarray:
    """R(tau) = sum_t r_t per trajectory, shape [n_traj]."""
    return np.bincount(batch.traj, weights=reward, minlength=len(batch.traj_group))


def discounted_returns(batch: FlatBatch, reward: np.ndarray, gamma: float) -> np.ndarray:
    """R_t = r_t + gamma * R_{t+1} inside each trajectory (Eq. 5), shape [n].

    Rows are stably sorted by trajectory, so each trajectory becomes a contiguous run in time
    order; the backward recursion then runs level by level (all last steps, then all
    second-to-last, ...), one vectorised update per time step of the longest trajectory.
    """
    n = reward.shape[0]
    out = np.empty(n, dtype=np.float64)
    if n == 0:
        return out
    starts = np.flatnonzero(np.r_[True, batch.traj[1:] != batch.traj[:-1]])
    if len(starts) == len(batch.traj_group):  # already one contiguous run per trajectory
        order = np.arange(n)
    else:
        order = np.argsort(batch.traj, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(batch.traj[order]) != 0])
    r = reward[order]
    traj = batch.traj[order]
    lengths = np.diff(np.r_[starts, n])
    position = np.arange(n) - np.repeat(starts, lengths)
    has_next = np.r_[traj[1:] == traj[:-1], False]
    ret = r.copy()
    # Positions are small ints: a 16-bit stable argsort is numpy's O(n) radix sort.
    small = position.astype(np.int16) if n and position.max() < 2**15 else position
    by_position = np.argsort(small, kind="stable")
    level_ends = np.cumsum(np.bincount(position))
    for level in range(len(level_ends) - 1, -1, -1):
        rows = by_position[(level_ends[level - 1] if level else 0) : level_ends[level]]
        rows = rows[has_next[rows]]
        ret[rows] += gamma * ret[rows + 1]
    out[order] = ret
    return out


def normalize_in_groups(values: np.ndarray, groups: np.ndarray, mode: str, eps: float) -> np.ndarray:
    """(x - mean of its group) / F, with F = 1 ("mean") or std(ddof=1) + eps ("mean_std").

    Members of a group of size one get 0.
    """
    size = np.bincount(groups).astype(np.float64)
    mean = np.bincount(groups, weights=values) / np.maximum(size, 1.0)
    centred = values - mean[groups]
    if mode == "mean_std":
        sq = np.bincount(groups, weights=centred * centred)
        std = np.sqrt(sq / np.maximum(size - 1.0, 1.0))
        centred = _divide(centred, std[groups] + eps)
    return np.where(size[groups] > 1, centred, 0.0)


def _divide(centred: np.ndarray, denom: np.ndarray) -> np.ndarray:
    # eps = 0 with equal members gives 0 / 0; their centred value is 0 and stays 0.
    return np.divide(centred, denom, out=np.zeros_like(centred), where=denom > 0)


def episode_scores(batch: FlatBatch, opts: AdvantageOptions) -> np.ndarray:
    """e_i = R(tau_i) - p_i (placement "step") or R(tau_i) of the penalised rewards, shape [n]."""
    return episode_returns(batch, placed_reward(batch, opts))[batch.traj] - row_penalty(batch, opts)


def episode_advantage(batch: FlatBatch, opts: AdvantageOptions) -> np.ndarray:
    """A_E of Eq. 3 per row, with the row weights of ``episode_stats`` (module docstring), [n].

    Groups with one trajectory get 0. With trajectory weights w_j = 1 / |tau_j| the weighted sums
    are taken per trajectory first, so without penalties mu_g is the plain mean of the returns.
    """
    trajectories = np.bincount(batch.traj_group)  # [n_groups]
    scores = episode_scores(batch, opts)
    if opts.episode_stats == "step":
        advantage = normalize_in_groups(scores, batch.group, opts.mode, opts.eps)
    else:
        length = np.bincount(batch.traj)
        penalty = row_penalty(batch, opts)
        returns = episode_returns(batch, placed_reward(batch, opts))
        mean_score = returns - np.bincount(batch.traj, weights=penalty) / length  # ebar(tau) [n_traj]
        mean = np.bincount(batch.traj_group, weights=mean_score) / trajectories  # mu_g
        advantage = scores - mean[batch.group]
        if opts.mode == "mean_std":
            spread = np.bincount(batch.traj, weights=advantage * advantage) / length  # sum_j w_j (e_j - mu)^2 per tau
            std = np.sqrt(np.bincount(batch.traj_group, weights=spread) / np.maximum(trajectories - 1.0, 1.0))
            advantage = _divide(advantage, std[batch.group] + opts.eps)
    return np.where(trajectories[batch.group] > 1, advantage, 0.0)


def step_advantage(batch: FlatBatch, opts: AdvantageOptions) -> np.ndarray:
    """A_S of Eq. 7: discounted returns (minus the row's own penalty under placement "step")
    normalised inside each anchor-state step group, [n]."""
    step_input = discounted_returns(batch, placed_reward(batch, opts), opts.gamma) - row_penalty(batch, opts)
    return normalize_in_groups(step_input, batch.anchor, opts.mode, opts.eps)


def goal_distances(graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """GraphGPO's d(target_i) per row and whether target_i reaches its group's goal, ([n] float, [n] bool).

    One unit-weight shortest-path search from a super-source linked to every goal, over the
    reversed edges target_i -> source_i, reaches each node at 1 + d(node). Groups share no nodes, so
    one search serves all of them. Unreachable nodes get D_g + 1, D_g the group's largest finite d.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    n_nodes = len(graph.node_group)
    n_groups = n_nodes - graph.n_states
    super_source = n_nodes
    rows = np.concatenate([graph.target, np.full(n_groups, super_source)])
    cols = np.concatenate([graph.source, np.arange(graph.n_states, n_nodes)])
    edges = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_nodes + 1, n_nodes + 1))
    distance = dijkstra(edges, directed=True, indices=super_source, unweighted=True)[:n_nodes] - 1.0
    finite = np.isfinite(distance)
    largest = np.zeros(n_groups)
    np.maximum.at(largest, graph.node_group[finite], distance[finite])
    distance = np.where(finite, distance, largest[graph.node_group] + 1.0)
    return distance[graph.target], finite[graph.target]


def graph_advantage(batch: FlatBatch, opts: AdvantageOptions) -> tuple[np.ndarray, dict[str, float]]:
    """GraphGPO's A_G: r^G_i = R_succ * omega ** d(next_i) - p_i normalised in step groups, [n];
    and the graph statistics for logging."""
    if batch.graph is None:
        raise ValueError("next_anchor_key and success: graphgpo needs both")
    if batch.reward.shape[0] == 0:
        return np.zeros(0), {"graph/nodes": 0.0, "graph/goal_reachable_share": 0.0, "graph/mean_distance": 0.0}
    distance, reachable = goal_distances(batch.graph)
    graph_reward = opts.success_reward * opts.omega**distance - batch.penalty
    graph = batch.graph
    used = np.zeros(graph.n_states + 1, dtype=bool)  # a successful last row's next anchor is no node
    used[graph.source] = True
    used[np.minimum(graph.target, graph.n_states)] = True
    stats = {
        "graph/nodes": float(used[: graph.n_states].sum()) / (len(graph.node_group) - graph.n_states),
        "graph/goal_reachable_share": float(reachable.mean()),
        "graph/mean_distance": float(distance.mean()),
    }
    return normalize_in_groups(graph_reward, batch.anchor, opts.mode, opts.eps), stats


# ---------------------------------------------------------------- estimators


def gigpo(batch: FlatBatch, opts: AdvantageOptions) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """GiGPO (Eq. 8): episode part A_E and step part A_S; the total is A_E + w * A_S."""
    return episode_advantage(batch, opts), step_advantage(batch, opts), {}


def graphgpo(batch: FlatBatch, opts: AdvantageOptions) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """GraphGPO: GiGPO's episode part A_E and the graph part A_G; the total is A_E + w * A_G."""
    step, stats = graph_advantage(batch, opts)
    return episode_advantage(batch, opts), step, stats


def grpo(batch: FlatBatch, opts: AdvantageOptions) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """GRPO: the group-normalised episode score A_E (Eq. 3) on every step; no step part."""
    return episode_advantage(batch, opts), np.zeros_like(batch.reward), {}


def rloo(batch: FlatBatch, opts: AdvantageOptions) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """RLOO: A_i = e_i - mean of the other trajectories' mean scores ebar(tau')."""
    scores = episode_scores(batch, opts)
    per_traj = np.bincount(batch.traj, weights=scores) / np.bincount(batch.traj)  # ebar(tau) [n_traj]
    trajectories = np.bincount(batch.traj_group).astype(np.float64)
    others = trajectories[batch.group] - 1.0
    group_sum = np.bincount(batch.traj_group, weights=per_traj)
    baseline = (group_sum[batch.group] - per_traj[batch.traj]) / np.maximum(others, 1.0)
    return np.where(others > 0, scores - baseline, 0.0), np.zeros_like(batch.reward), {}


Estimator = Callable[[FlatBatch, AdvantageOptions], tuple[np.ndarray, np.ndarray, dict[str, float]]]
ESTIMATORS: dict[str, Estimator] = {"gigpo": gigpo, "graphgpo": graphgpo, "grpo": grpo, "rloo": rloo}
DEFAULT_MODE = {"gigpo": "mean", "graphgpo": "mean_std", "grpo": "mean_std", "rloo": "mean"}
# The algo.* keys each estimator reads beyond those every run reads (group size, penalty placement,
# the PPO loss). Two estimators compared differ in the method alone when every other key is equal:
# a key in both sets (the normaliser ``algo.mode``, say) is a confound when it differs
# (analysis.tables.unmatched_keys).
READS: dict[str, tuple[str, ...]] = {
    "gigpo": ("algo.mode", "algo.eps", "algo.episode_stats", "algo.step_weight", "algo.gamma", "algo.similarity",
              "algo.similarity_match"),
    "graphgpo": ("algo.mode", "algo.eps", "algo.episode_stats", "algo.step_weight", "algo.similarity",
                 "algo.omega", "algo.success_reward"),
    "grpo": ("algo.mode", "algo.eps", "algo.episode_stats"),
    "rloo": (),
}
STEP_GROUPED = ("gigpo", "graphgpo")
"""Estimators that read step groups; for the others ``prepare`` skips building them."""


def advantage_parts(
    name: str,
    reward,
    group_id,
    traj_id,
    anchor_key,
    gamma: float = 0.95,
    step_weight: float = 1.0,
    mode: str | None = None,
    eps: float = 1e-6,
    episode_stats: str = "trajectory",
    similarity: float | None = None,
    penalty=None,
    penalty_placement: str = "step",
    next_anchor_key=None,
    success=None,
    omega: float = 0.8,
    success_reward: float = 10.0,
    similarity_match: str = "best",
) -> dict:
    """Like ``compute_advantages`` but returns {"advantage", "episode", "step", "step_group", "return"} and,
    for graphgpo, "graph/nodes" (mean state nodes per episode group, goal excluded),
    "graph/goal_reachable_share" (share of rows whose next node reaches the goal) and
    "graph/mean_distance" (mean over rows of d(next_i), unreachable ones counted as D_g + 1).

    "advantage" = episode + step_weight * step; "step" is A_S (gigpo), A_G (graphgpo) or 0;
    "step_group" is the dense step-group code per row (None for estimators that read no step groups:
    grpo, rloo); "return" is R_t (Eq. 5) of the rewards returns are summed from (penalised under
    placement "reward"); "group_trajectories" the trajectories per episode group [n_groups].
    """
    if name not in ESTIMATORS:
        raise ValueError(f"estimator name: unknown {name!r}; known: {sorted(ESTIMATORS)}")
    mode = DEFAULT_MODE[name] if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"mode: unknown {mode!r}; known: {list(MODES)}")
    if episode_stats not in EPISODE_STATS:
        raise ValueError(f"episode_stats: unknown {episode_stats!r}; known: {list(EPISODE_STATS)}")
    if penalty_placement not in PENALTY_PLACEMENTS:
        raise ValueError(f"penalty_placement: unknown {penalty_placement!r}; known: {list(PENALTY_PLACEMENTS)}")
    for label, value in (("gamma", gamma), ("step_weight", step_weight), ("eps", eps),
                         ("success_reward", success_reward)):
        if not np.isfinite(value):
            raise ValueError(f"{label} must be finite, got {value}")
    if not 0.0 < omega <= 1.0:
        raise ValueError(f"omega must be in (0, 1], got {omega}")
    if name == "graphgpo" and next_anchor_key is None:
        raise ValueError("next_anchor_key and success: graphgpo needs both")
    opts = AdvantageOptions(gamma, step_weight, mode, eps, episode_stats, similarity, penalty_placement, omega,
                            success_reward, similarity_match)
    graph_inputs = (next_anchor_key, success) if name == "graphgpo" else (None, None)
    batch = prepare(reward, group_id, traj_id, anchor_key, similarity, penalty, *graph_inputs, similarity_match,
                    step_groups=name in STEP_GROUPED)
    episode, step, stats = ESTIMATORS[name](batch, opts)
    return {"advantage": episode + step_weight * step, "episode": episode, "step": step,
            "step_group": batch.anchor, "return": discounted_returns(batch, placed_reward(batch, opts), gamma),
            "group_trajectories": np.bincount(batch.traj_group), **stats}


def compute_advantages(
    name: str,
    reward,
    group_id,
    traj_id,
    anchor_key,
    gamma: float = 0.95,
    step_weight: float = 1.0,
    mode: str | None = None,
    eps: float = 1e-6,
    episode_stats: str = "trajectory",
    similarity: float | None = None,
    penalty=None,
    penalty_placement: str = "step",
    next_anchor_key=None,
    success=None,
    omega: float = 0.8,
    success_reward: float = 10.0,
    similarity_match: str = "best",
) -> np.ndarray:
    """One advantage per step row, float64 array (n,), by estimator ``name`` (gigpo/graphgpo/grpo/rloo).

    ``mode`` None picks the estimator's default ("mean" for gigpo, "mean_std" for graphgpo and
    grpo; rloo has no normaliser). ``penalty`` is the per-row invalid-action penalty (None: none),
    applied as ``penalty_placement`` says. graphgpo also needs ``next_anchor_key`` and ``success``
    and reads ``omega`` and ``success_reward``; the others ignore them. See the module docstring.
    """
    return advantage_parts(
        name, reward, group_id, traj_id, anchor_key, gamma, step_weight, mode, eps, episode_stats, similarity,
        penalty, penalty_placement, next_anchor_key, success, omega, success_reward, similarity_match,
    )["advantage"]


def episode_group_stats(group_id=None, traj_id=None, trajectories: np.ndarray | None = None) -> dict[str, float]:
    """Episode groups for logging: count and the share holding one trajectory (their A_E is 0).

    From the ids, or from ``trajectories`` [n_groups], the trajectory count per group that
    ``advantage_parts`` already returns (``"group_trajectories"``), so the loop hashes no id twice."""
    if trajectories is None:
        group = _factorize(group_id, "group_id")
        traj = _pair_codes(group, _factorize(traj_id, "traj_id"))
        traj_group = np.zeros(int(traj.max(initial=-1)) + 1, dtype=np.int64)
        traj_group[traj] = group
        trajectories = np.bincount(traj_group)
    if len(trajectories) == 0:
        return {"count": 0.0, "singleton_share": 0.0}
    return {"count": float(len(trajectories)), "singleton_share": float((trajectories == 1).mean())}


def step_group_stats(step_group: np.ndarray) -> dict[str, float]:
    """Summary of step groups for logging: count, mean/max size, singleton share, size histogram.

    ``step_group`` is the dense code per row (``advantage_parts(...)["step_group"]``). Histogram
    buckets follow the paper's step-group analysis: shares of groups of size 1, 2-5, 6-9, >= 10.
    """
    sizes = np.bincount(np.asarray(step_group, dtype=np.int64))
    sizes = sizes[sizes > 0]
    count = len(sizes)
    if count == 0:
        return {"count": 0.0, "mean_size": 0.0, "max_size": 0.0, "singleton_share": 0.0}
    buckets = {"1": sizes == 1, "2-5": (sizes >= 2) & (sizes <= 5), "6-9": (sizes >= 6) & (sizes <= 9), "10+": sizes >= 10}
    stats = {
        "count": float(count),
        "mean_size": float(sizes.mean()),
        "max_size": float(sizes.max()),
        "singleton_share": float((sizes == 1).mean()),
    }
    stats.update({f"size_hist/{k}": float(v.mean()) for k, v in buckets.items()})
    return stats
