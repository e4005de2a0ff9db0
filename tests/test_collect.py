"""collect(): training seeds per iteration, group ids across resample rounds, the dynamic-sampling filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from gigpo.config import register_configs
from gigpo.runner import StepRecord
import gigpo.train as train_module
from gigpo.train import collect

CONF = Path(__file__).resolve().parents[1] / "conf"
register_configs()


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=["env=sokoban_easy", "env.groups=2", "algo.group_size=2", *overrides])


class ScriptedRunner:
    """Stands in for GroupRunner: one step per trajectory, outcome picked by ``script(seed, member)``
    as (reward, valid); records every seed list it was asked to play."""

    def __init__(self, script):
        self.script = script
        self.calls: list[list[int]] = []

    def run(self, seeds, group_size, act, on_episodes_end=None, on_step=None):
        self.calls.append(list(seeds))
        records = []
        for g, seed in enumerate(seeds):
            for n in range(group_size):
                reward, valid = self.script(seed, n)
                records.append(StepRecord(g, g * group_size + n, 0, "start", "obs", "up", "x", valid, reward, True,
                                          reward > 0, "sokoban", next_anchor="end"))
        return records


def tie(seed, member):
    return 0.0, True  # every group ties: no signal anywhere


def test_seeds_without_dynamic_sampling_do_not_depend_on_max_resample():
    runner = ScriptedRunner(tie)
    collect(compose_cfg(["algo.max_resample=5"]), runner, None, None, iteration=3)
    assert runner.calls == [[6, 7]]  # i * groups + g


def test_seeds_with_dynamic_sampling_never_repeat_across_iterations():
    runner = ScriptedRunner(tie)  # nothing is ever kept, so every round resamples
    cfg = compose_cfg(["algo.dynamic_sampling=true", "algo.max_resample=2"])
    for iteration in range(4):
        collect(cfg, runner, None, None, iteration)
    seeds = [s for call in runner.calls for s in call]
    assert len(runner.calls) == 12 and len(seeds) == len(set(seeds))


def test_group_ids_of_resample_rounds_come_from_a_running_counter():
    # Seed 0's group has signal, seed 1's does not; the resampled seeds 2, 3 do.
    runner = ScriptedRunner(lambda seed, member: (float(member == 0 and seed != 1), True))
    batch, dropped, _ = collect(compose_cfg(["algo.dynamic_sampling=true", "algo.max_resample=2"]), runner, None, None, 0)
    assert runner.calls == [[0, 1], [2]] and dropped == 1
    # Round 0 held groups 0, 1 (trajectories 0-3); round 1's group is the third one: id 2, trajectories 4, 5.
    assert sorted(set(batch.group_id.tolist())) == [0, 2]
    assert sorted(set(batch.traj_id.tolist())) == [0, 1, 4, 5]


def test_dynamic_sampling_keeps_tied_returns_with_different_penalties():
    # Both groups' returns tie at 0, but in seed 0's group one trajectory acted invalidly: the
    # estimator sees -0.1 on that row, so the group carries signal and is kept.
    runner = ScriptedRunner(lambda seed, member: (0.0, not (seed == 0 and member == 0)))
    batch, dropped, _ = collect(compose_cfg(["algo.dynamic_sampling=true", "algo.max_resample=0"]), runner, None, None, 0)
    assert dropped == 1 and sorted(set(batch.group_id.tolist())) == [0]


class CountingEstimator:
    """Wraps the real ``advantage_parts`` and counts its calls (the estimator itself runs unchanged)."""

    def __init__(self, real):
        self.real, self.calls = real, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def _assert_same_parts(got: dict, want: dict):
    assert got.keys() == want.keys()
    for key in want:
        if want[key] is None:
            assert got[key] is None, key
        else:
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)


@pytest.mark.parametrize("algo", ["gigpo", "graphgpo", "grpo"])
def test_dynamic_sampling_runs_the_estimator_once_per_round_and_hands_its_parts_on(monkeypatch, algo):
    # Round 0: seed 1's group ties (dropped); round 1: seed 2's group has signal. Two rounds, two
    # estimator calls, and the parts returned are those of exactly the batch returned.
    runner = ScriptedRunner(lambda seed, member: (float(member == 0 and seed != 1), True))
    cfg = compose_cfg([f"algo={algo}", "algo.dynamic_sampling=true", "algo.max_resample=2"])
    counting = CountingEstimator(train_module.advantage_parts)
    monkeypatch.setattr(train_module, "advantage_parts", counting)
    batch, dropped, parts = collect(cfg, runner, None, None, 0)
    assert dropped == 1 and counting.calls == 2
    _assert_same_parts(parts, train_module._advantage_parts(cfg, batch))


def test_dynamic_sampling_recomputes_the_parts_once_when_the_last_round_drops_a_group(monkeypatch):
    # Every round keeps seed 0's group only: the last round's union holds dropped groups, so the kept
    # batch's parts are computed once more (max_resample=1: two rounds, then one recomputation).
    runner = ScriptedRunner(lambda seed, member: (float(member == 0 and seed == 0), True))
    cfg = compose_cfg(["algo.dynamic_sampling=true", "algo.max_resample=1"])
    counting = CountingEstimator(train_module.advantage_parts)
    monkeypatch.setattr(train_module, "advantage_parts", counting)
    batch, dropped, parts = collect(cfg, runner, None, None, 0)
    assert sorted(set(batch.group_id.tolist())) == [0] and dropped == 2 and counting.calls == 3
    _assert_same_parts(parts, train_module._advantage_parts(cfg, batch))


def test_without_dynamic_sampling_collect_leaves_the_estimator_to_the_update(monkeypatch):
    counting = CountingEstimator(train_module.advantage_parts)
    monkeypatch.setattr(train_module, "advantage_parts", counting)
    _, dropped, parts = collect(compose_cfg([]), ScriptedRunner(tie), None, None, 0)
    assert parts is None and dropped == 0 and counting.calls == 0
