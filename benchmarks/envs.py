"""Environment throughput: direct stepping vs GroupRunner (in-process, 1 and 2 workers).

Run as ``python -m benchmarks.envs``. Every variant plays the same trajectories: the same seeds
and groups, and a random admissible action drawn from ``default_rng([traj_id, step])``, so the
work is identical and only the stepping machinery differs. Steps/s count env steps over wall
time including resets (worker start-up is excluded by a warm-up run).

Targets: runner overhead (in-process vs direct) under 10%; 2 workers >= 1.7x one worker on
ALFWorld (ALFWorld steps take 0.1 s, so pipes cost little; Sokoban steps take microseconds, so
for Sokoban workers only add IPC cost and in-process is the right choice).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import numpy as np

from gigpo.envs import make
from gigpo.envs.prompts import View
from gigpo.runner import GroupRunner


def random_choice(traj_id: int, step: int, admissible: list[str]) -> str:
    return admissible[int(np.random.default_rng([traj_id, step]).integers(len(admissible)))]


def random_act(views: list[View]) -> list[tuple[str, None]]:
    return [(f"<action>{random_choice(v.traj_id, v.step, v.admissible)}</action>", None) for v in views]


def direct(env_name: str, options: dict, seeds: list[int], group_size: int) -> tuple[int, float]:
    """(env steps, seconds) stepping fresh envs in a plain lockstep loop, no runner."""
    make(env_name, **options).close()  # imports the engine outside the timed part, like the warm-up
    start = time.perf_counter()
    envs = [make(env_name, **options) for _ in range(len(seeds) * group_size)]
    states = {slot: env.reset(seeds[slot // group_size]) for slot, env in enumerate(envs)}
    steps, step_index = 0, 0
    while states:
        for slot in sorted(states):
            state = envs[slot].step(random_choice(slot, step_index, states[slot].admissible))
            steps += 1
            if state.done:
                del states[slot]
            else:
                states[slot] = state
        step_index += 1
    seconds = time.perf_counter() - start
    for env in envs:
        env.close()
    return steps, seconds


def through_runner(env_name: str, options: dict, seeds: list[int], group_size: int,
                   num_workers: int) -> tuple[int, float]:
    """(env steps, seconds) of one ``GroupRunner.run`` after a warm-up run that starts workers."""
    with GroupRunner(env_name, options, num_workers=num_workers) as runner:
        runner.run(seeds[:1], group_size=max(num_workers, 1), act=random_act)
        start = time.perf_counter()
        records = runner.run(seeds, group_size, random_act)
        return len(records), time.perf_counter() - start


def _busy_loop(iterations: int) -> None:
    total = 0
    for i in range(iterations):
        total += i


def cpu_parallel_capacity(iterations: int = 10_000_000) -> float:
    """Speed-up of two processes over one on a pure-Python loop (2.0 on two free cores).

    Other jobs on a shared machine lower it; the workers' speed-up cannot exceed it.
    """
    context = multiprocessing.get_context("spawn")
    timings = []
    for processes in (1, 2):
        workers = [context.Process(target=_busy_loop, args=(iterations,)) for _ in range(processes)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        timings.append((time.perf_counter() - start) / processes)
    return timings[0] / timings[1]


def compare(env_name: str, options: dict, seeds: list[int], group_size: int) -> None:
    print(f"\n{env_name} {options}: {len(seeds)} groups x {group_size} trajectories")
    rates = {}
    for label, measure in [
        ("direct loop", lambda: direct(env_name, options, seeds, group_size)),
        ("runner in-process", lambda: through_runner(env_name, options, seeds, group_size, 0)),
        ("runner 1 worker", lambda: through_runner(env_name, options, seeds, group_size, 1)),
        ("runner 2 workers", lambda: through_runner(env_name, options, seeds, group_size, 2)),
    ]:
        steps, seconds = measure()
        rates[label] = steps / seconds
        print(f"  {label:18s} {steps:6d} steps {seconds:7.2f} s {rates[label]:9.1f} steps/s")
    print(f"  runner overhead in-process vs direct: {rates['direct loop'] / rates['runner in-process'] - 1:+.1%}")
    print(f"  runner overhead 1 worker vs direct:   {rates['direct loop'] / rates['runner 1 worker'] - 1:+.1%}")
    print(f"  speed-up 2 workers / 1 worker:        {rates['runner 2 workers'] / rates['runner 1 worker']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alfworld-max-steps", type=int, default=20)
    parser.add_argument("--alfworld-seeds", type=int, default=4, help="groups; 2 trajectories each")
    parser.add_argument("--sokoban-seeds", type=int, default=256, help="groups; 4 trajectories each")
    parser.add_argument("--envs", nargs="+", default=["sokoban", "alfworld"], choices=["sokoban", "alfworld"])
    args = parser.parse_args()

    print(f"CPU parallel capacity (2 processes / 1, pure Python): {cpu_parallel_capacity():.2f}x")

    if "sokoban" in args.envs:
        compare("sokoban", {}, list(range(args.sokoban_seeds)), group_size=4)
    if "alfworld" not in args.envs:
        return
    try:
        from gigpo.data import alfworld_data_dir

        alfworld_data_dir()
        import alfworld  # noqa: F401
    except (ImportError, FileNotFoundError) as error:
        print(f"\nalfworld skipped: {error}")
        return
    compare("alfworld", {"split": "eval_in_distribution", "max_steps": args.alfworld_max_steps},
            list(range(args.alfworld_seeds)), group_size=2)


if __name__ == "__main__":
    main()
