"""GroupRunner: shared group starts, step order, crash/hang recovery, in-process == workers.

``ToyEnv`` is a test-only env registered into ``gigpo.envs.ENVS`` for the duration of a test;
spawned workers import it from this module (tests/ is on sys.path via conftest, inherited by
spawned children).
"""

import logging
import os
import time

import pytest

from gigpo.envs import ENVS
from gigpo.envs.base import Step
from gigpo.runner import GroupRunner


class ToyEnv:
    """Counter env: state ``seed:position``; "inc" adds 1 and wins at ``goal``.

    crash_seed / crash_at_step: on that seed and step, ``mode`` "raise" raises, "exit" kills the
    process (os._exit), "hang" sleeps for a minute.
    """

    def __init__(self, goal=3, max_steps=5, crash_seed=None, crash_at_step=None, mode="raise"):
        self.goal, self.max_steps = goal, max_steps
        self.crash_seed, self.crash_at_step, self.mode = crash_seed, crash_at_step, mode
        self.seed = self.position = self.steps = 0

    def _observe(self, reward=0.0, valid=True):
        done = self.position >= self.goal or self.steps >= self.max_steps
        text = f"{self.seed}:{self.position}"
        return Step(text, text, ["inc", "stay"], reward, done, self.position >= self.goal,
                    {"task": "count", "task_type": "toy", "valid": valid, "pid": os.getpid()})

    def reset(self, seed):
        self.seed, self.position, self.steps = seed, 0, 0
        return self._observe()

    def step(self, action):
        if self.seed == self.crash_seed and self.steps == self.crash_at_step:
            if self.mode == "exit":
                os._exit(3)
            if self.mode == "hang":
                time.sleep(60)
            raise RuntimeError("toy env exploded")
        self.steps += 1
        self.position += action == "inc"
        return self._observe(reward=1.0 if self.position >= self.goal else 0.0, valid=action in ("inc", "stay"))

    def close(self):
        pass


@pytest.fixture(autouse=True)
def toy_registered():
    ENVS["toy"] = f"{ToyEnv.__module__}:ToyEnv"
    yield
    del ENVS["toy"]


def seeded_act(views):
    """Deterministic policy: 'inc' unless (traj_id + step) % 3 == 0, with a malformed answer now and then."""
    answers = []
    for view in views:
        if (view.traj_id + view.step) % 7 == 6:
            answers.append(("no tags here", view.traj_id))
        else:
            action = "stay" if (view.traj_id + view.step) % 3 == 0 else "inc"
            answers.append((f"<think>t</think><action>{action}</action>", view.traj_id))
    return answers


def strip(records):
    """Records without the worker pid (which differs between in-process and worker runs)."""
    return [(r.group_id, r.traj_id, r.step, r.anchor, r.observation, r.action, r.response, r.valid,
             r.reward, r.done, r.won, r.task_type, r.payload, {k: v for k, v in r.info.items() if k != "pid"})
            for r in records]


def test_groups_share_initial_state_and_records_in_step_order():
    calls = []

    def act(views):
        calls.append([v.traj_id for v in views])
        return seeded_act(views)

    with GroupRunner("toy", {"max_steps": 6}, num_workers=0, history_len=2) as runner:
        records = runner.run([10, 20], group_size=3, act=act)
    first = {r.traj_id: r for r in records if r.step == 0}
    assert [first[t].anchor for t in range(6)] == ["10:0"] * 3 + ["20:0"] * 3
    assert [first[t].group_id for t in range(6)] == [0, 0, 0, 1, 1, 1]
    for traj in range(6):
        mine = [r for r in records if r.traj_id == traj]
        assert [r.step for r in mine] == list(range(len(mine)))
        assert mine[-1].done and not any(r.done for r in mine[:-1])
        # finished envs are not stepped: the trajectory appears in exactly len(mine) act calls
        assert sum(traj in call for call in calls) == len(mine)
    assert records[0].payload == 0 and records[0].response.endswith("</action>")
    malformed = [r for r in records if r.response == "no tags here"]
    assert malformed and not any(r.valid for r in malformed)


def test_history_passed_to_views():
    seen = {}

    def act(views):
        for view in views:
            seen[(view.traj_id, view.step)] = view.history
        return [("<action>inc</action>", None)] * len(views)

    with GroupRunner("toy", {"goal": 4, "max_steps": 4}, num_workers=0, history_len=2) as runner:
        runner.run([1], group_size=1, act=act)
    assert seen[(0, 0)] == [] and seen[(0, 1)] == [("1:0", "inc")]
    assert seen[(0, 3)] == [("1:1", "inc"), ("1:2", "inc")]


def test_in_process_and_workers_give_identical_records_and_workers_persist():
    with GroupRunner("toy", {"max_steps": 6}, num_workers=0) as runner:
        local = runner.run([3, 4, 5], group_size=2, act=seeded_act)
    with GroupRunner("toy", {"max_steps": 6}, num_workers=2) as runner:
        remote = runner.run([3, 4, 5], group_size=2, act=seeded_act)
        pids = {w.process.pid for w in runner.workers}
        again = runner.run([3, 4, 5], group_size=2, act=seeded_act)
        assert {w.process.pid for w in runner.workers} == pids
        assert {r.info["pid"] for r in again} == pids
    assert strip(local) == strip(remote) == strip(again)


@pytest.mark.parametrize("mode,num_workers", [("raise", 0), ("raise", 4), ("exit", 4), ("hang", 4)])
def test_failed_trajectory_ends_as_crashed_and_others_finish(mode, num_workers, caplog):
    options = {"goal": 3, "max_steps": 5, "crash_seed": 8, "crash_at_step": 1, "mode": mode}
    always_inc = lambda views: [("<action>inc</action>", None)] * len(views)  # noqa: E731
    with GroupRunner("toy", options, num_workers=num_workers, step_timeout_s=2.0) as runner:
        with caplog.at_level(logging.WARNING, logger="gigpo.runner"):
            records = runner.run([7, 8], group_size=2, act=always_inc)
        crashed = [r for r in records if r.info.get("crashed")]
        # group 1 (seed 8) crashes at step 1; one env per worker, so group 0 is unaffected
        assert {r.traj_id for r in crashed} == {2, 3}
        assert all(r.done and not r.won and r.reward == 0.0 and r.step == 1 for r in crashed)
        assert "seed 8" in caplog.text and "toy" in caplog.text
        assert {r.traj_id for r in records if r.won} == {0, 1}
        # the restarted worker serves the next run normally
        healthy = runner.run([7], group_size=2, act=always_inc)
        assert all(r.won for r in healthy if r.done) and len(healthy) == 6
