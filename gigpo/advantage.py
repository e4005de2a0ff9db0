"""Advantage estimators for multi-step agents: GiGPO, GRPO and RLOO over flat per-step arrays.

Every estimator sees the same flat batch, one row per environment step:

    reward     (n,) float   per-step reward r_t (task reward plus any shaping)
    group_id   (n,)         episode group: trajectories started from the same initial state
    traj_id    (n,)         trajectory; a trajectory is the pair (group_id, traj_id) and its rows
                            appear in time order, not necessarily contiguous
    anchor_key (n,)         hashable, history-free environment state seen before row i's action

Definitions (GiGPO, Feng et al. 2025, arXiv 2505.10978):

    R(tau)  = sum_t r_t                                             episode return
    A_E     = (R(tau) - mean_{tau' in group} R(tau')) / F           macro advantage, Eq. 3
    R_t     = sum_{k>=t} gamma^(k-t) r_k                            discounted return, Eq. 5
    G_S     = rows with the same (group_id, anchor_key)             step group, Eq. 6
    A_S     = (R_t - mean_{rows in G_S} R_t) / F                    micro advantage, Eq. 7
    A       = A_E + w * A_S                                         GiGPO advantage, Eq. 8

F = 1 in mode "mean" and std (ddof=1) + eps in mode "mean_std". A group with one trajectory and a
step group with one row get 0: there is nothing to compare against.

``grpo`` is A_E broadcast to every step of the trajectory (default mode "mean_std"). ``rloo`` uses
the leave-one-out baseline A = R(tau) - mean_{tau' != tau} R(tau') (Ahmadian et al. 2024).

Cost is O(n) hashing plus one sort, and a backward pass whose numpy calls grow with the longest
trajectory, not with n; ``benchmarks/advantage.py`` measures it against the per-row loop oracle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np
import pandas as pd

MODES = ("mean", "mean_std")
EPISODE_STATS = ("trajectory", "step")


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
    """None: exact anchor matching. A threshold in (0, 1]: text anchors at least this similar
    (rapidfuzz ``ratio`` / 100) fall in one step group; see ``step_group_ids``."""


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

    reward: np.ndarray  # [n] float64
    group: np.ndarray  # [n] int64, dense episode-group code
    traj: np.ndarray  # [n] int64, dense trajectory code (unique per (group_id, traj_id))
    anchor: np.ndarray  # [n] int64, dense code of the (group, anchor) step group
    traj_group: np.ndarray  # [n_traj] int64, group code of each trajectory


def prepare(reward, group_id, traj_id, anchor_key, similarity: float | None = None) -> FlatBatch:
    """Validate the flat arrays and turn ids and anchors into dense integer codes.

    Raises ValueError naming the argument for mismatched lengths, NaN/inf rewards and
    unhashable anchors.
    """
    reward = np.asarray(reward, dtype=np.float64)
    if reward.ndim != 1:
        raise ValueError(f"reward must be 1-D, got shape {reward.shape}")
    n = reward.shape[0]
    for name, arr in (("group_id", group_id), ("traj_id", traj_id), ("anchor_key", anchor_key)):
        if len(arr) != n:
            raise ValueError(f"{name} has length {len(arr)}, but reward has length {n}")
    if not np.isfinite(reward).all():
        bad = int(np.flatnonzero(~np.isfinite(reward))[0])
        raise ValueError(f"reward[{bad}] is {reward[bad]}: rewards must be finite")
    group = _factorize(group_id, "group_id")
    traj_local = _factorize(traj_id, "traj_id")
    traj = _pair_codes(group, traj_local)
    traj_group = np.zeros(int(traj.max(initial=-1)) + 1, dtype=np.int64)
    traj_group[traj] = group
    anchor = _step_groups(group, anchor_key, similarity)
    return FlatBatch(reward, group, traj, anchor, traj_group)


def step_group_ids(group_id, anchor_key: Sequence[Hashable], similarity: float | None = None) -> np.ndarray:
    """Dense step-group code per row: rows with the same (group_id, anchor_key) share one (Eq. 6).

    With ``similarity`` = s in (0, 1], anchors are compared as text instead of exactly: inside
    each episode group, distinct anchor texts are visited in order of first appearance and each
    joins the first existing cluster whose *founding* text has rapidfuzz ``ratio`` >= 100 * s
    with it, else founds a new cluster (leader clustering). Clusters therefore do not chain: two
    texts both similar to a founder but not to each other still share its cluster, and the result
    depends on the order of first appearance, which is the rollout order.
    """
    if len(group_id) != len(anchor_key):
        raise ValueError(f"anchor_key has length {len(anchor_key)}, but group_id has length {len(group_id)}")
    return _step_groups(_factorize(group_id, "group_id"), anchor_key, similarity)


def _step_groups(group: np.ndarray, anchor_key: Sequence[Hashable], similarity: float | None) -> np.ndarray:
    """``step_group_ids`` for dense int group codes."""
    anchor = _factorize(anchor_key, "anchor_key")
    if similarity is None:
        return _pair_codes(group, anchor)
    if not 0.0 < similarity <= 1.0:
        raise ValueError(f"similarity must be in (0, 1], got {similarity}")
    from rapidfuzz import fuzz, process

    texts: dict[int, str] = {}
    for code, key in zip(anchor.tolist(), anchor_key):
        texts.setdefault(code, str(key))
    cluster_of: dict[tuple[int, int], int] = {}
    founders: dict[int, list[tuple[str, int]]] = {}
    out = np.empty(len(anchor), dtype=np.int64)
    for i, (g, a) in enumerate(zip(group.tolist(), anchor.tolist())):
        key = (g, a)
        if key not in cluster_of:
            leaders = founders.setdefault(g, [])
            hit = process.extractOne(
                texts[a], [t for t, _ in leaders], scorer=fuzz.ratio, score_cutoff=100.0 * similarity
            )
            if hit is None:
                cluster_of[key] = len(cluster_of)
                leaders.append((texts[a], cluster_of[key]))
            else:
                cluster_of[key] = leaders[hit[2]][1]
        out[i] = cluster_of[key]
    return pd.factorize(out)[0].astype(np.int64, copy=False)


# ---------------------------------------------------------------- building blocks


def episode_returns(batch: FlatBatch) -> np.ndarray:
    """R(tau) = sum_t r_t per trajectory, shape [n_traj]."""
    return np.bincount(batch.traj, weights=batch.reward, minlength=len(batch.traj_group))


def discounted_returns(batch: FlatBatch, gamma: float) -> np.ndarray:
    """R_t = r_t + gamma * R_{t+1} inside each trajectory (Eq. 5), shape [n].

    Rows are stably sorted by trajectory, so each trajectory becomes a contiguous run in time
    order; the backward recursion then runs level by level (all last steps, then all
    second-to-last, ...), one vectorised update per time step of the longest trajectory.
    """
    n = batch.reward.shape[0]
    out = np.empty(n, dtype=np.float64)
    if n == 0:
        return out
    starts = np.flatnonzero(np.r_[True, batch.traj[1:] != batch.traj[:-1]])
    if len(starts) == len(batch.traj_group):  # already one contiguous run per trajectory
        order = np.arange(n)
    else:
        order = np.argsort(batch.traj, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(batch.traj[order]) != 0])
    r = batch.reward[order]
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
        # eps = 0 with equal members gives 0 / 0; their centred value is 0 and stays 0.
        denom = std[groups] + eps
        centred = np.divide(centred, denom, out=np.zeros_like(centred), where=denom > 0)
    return np.where(size[groups] > 1, centred, 0.0)


def episode_advantage(batch: FlatBatch, opts: AdvantageOptions) -> np.ndarray:
    """A_E of Eq. 3 broadcast to rows, shape [n]."""
    returns = episode_returns(batch)
    if opts.episode_stats == "trajectory":
        return normalize_in_groups(returns, batch.traj_group, opts.mode, opts.eps)[batch.traj]
    return normalize_in_groups(returns[batch.traj], batch.group, opts.mode, opts.eps)


def step_advantage(batch: FlatBatch, opts: AdvantageOptions) -> np.ndarray:
    """A_S of Eq. 7: discounted returns normalised inside each anchor-state step group, [n]."""
    return normalize_in_groups(discounted_returns(batch, opts.gamma), batch.anchor, opts.mode, opts.eps)


# ---------------------------------------------------------------- estimators


def gigpo(batch: FlatBatch, opts: AdvantageOptions) -> tuple[np.ndarray, np.ndarray]:
    """GiGPO (Eq. 8): episode part A_E and step part A_S; the total is A_E + w * A_S."""
    return episode_advantage(batch, opts), step_advantage(batch, opts)


def grpo(batch: FlatBatch, opts: AdvantageOptions) -> tuple[np.ndarray, np.ndarray]:
    """GRPO: the group-normalised episode return A_E (Eq. 3) on every step; no step part."""
    return episode_advantage(batch, opts), np.zeros_like(batch.reward)


def rloo(batch: FlatBatch, opts: AdvantageOptions) -> tuple[np.ndarray, np.ndarray]:
    """RLOO: A = R(tau) - mean of the other trajectories' returns = N/(N-1) (R(tau) - mean)."""
    returns = episode_returns(batch)
    size = np.bincount(batch.traj_group).astype(np.float64)[batch.traj_group]
    centred = normalize_in_groups(returns, batch.traj_group, "mean", opts.eps)
    loo = centred * size / np.maximum(size - 1.0, 1.0)
    return loo[batch.traj], np.zeros_like(batch.reward)


Estimator = Callable[[FlatBatch, AdvantageOptions], tuple[np.ndarray, np.ndarray]]
ESTIMATORS: dict[str, Estimator] = {"gigpo": gigpo, "grpo": grpo, "rloo": rloo}
DEFAULT_MODE = {"gigpo": "mean", "grpo": "mean_std", "rloo": "mean"}


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
) -> dict[str, np.ndarray]:
    """Like ``compute_advantages`` but returns {"advantage", "episode", "step", "step_group"}.

    "advantage" = episode + step_weight * step; "step_group" is the dense step-group code per row.
    """
    if name not in ESTIMATORS:
        raise ValueError(f"estimator name: unknown {name!r}; known: {sorted(ESTIMATORS)}")
    mode = DEFAULT_MODE[name] if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"mode: unknown {mode!r}; known: {list(MODES)}")
    if episode_stats not in EPISODE_STATS:
        raise ValueError(f"episode_stats: unknown {episode_stats!r}; known: {list(EPISODE_STATS)}")
    for label, value in (("gamma", gamma), ("step_weight", step_weight), ("eps", eps)):
        if not np.isfinite(value):
            raise ValueError(f"{label} must be finite, got {value}")
    opts = AdvantageOptions(gamma, step_weight, mode, eps, episode_stats, similarity)
    batch = prepare(reward, group_id, traj_id, anchor_key, similarity)
    episode, step = ESTIMATORS[name](batch, opts)
    return {"advantage": episode + step_weight * step, "episode": episode, "step": step, "step_group": batch.anchor}


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
) -> np.ndarray:
    """One advantage per step row, float64 array (n,), by estimator ``name`` (gigpo/grpo/rloo).

    ``mode`` None picks the estimator's default ("mean" for gigpo, "mean_std" for grpo; rloo has
    no normaliser). See the module docstring for the equations.
    """
    return advantage_parts(
        name, reward, group_id, traj_id, anchor_key, gamma, step_weight, mode, eps, episode_stats, similarity
    )["advantage"]


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
