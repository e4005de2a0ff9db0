"""GridNav: a text grid world whose one knob is the horizon (the optimal solution length).

Built for the horizon study (does step-level credit pay off as episodes get longer?): every
setting shares the grid size, observation format, action set and reward scale; only
``distance``, the length of the shortest path from the start to the goal, changes.

A room is determined by its seed alone (``numpy.random.default_rng(seed)``): walls are drawn
independently with probability ``wall_density`` inside a border of walls, the start is a random
floor cell, and the goal is drawn among the floor cells whose breadth-first-search distance
from the start is exactly ``distance``; a room without such a cell is redrawn. Every instance
is therefore solvable in exactly ``distance`` moves and in no fewer.

Grid legend (one character per cell, rows separated by newlines)::

    #  wall     _  floor     P  player     G  goal

With ``view="compass"`` the policy sees only the goal's direction from the player (``goal: up,
right``, one of eight texts) instead of the grid. On an open grid (``wall_density=0``) a move
towards the goal along either named axis is optimal, so the optimal action is a fixed function of
that text at every ``distance``: the horizon study's settings then differ in the horizon alone,
not in how hard the observation is to read (issue 21: on the maze, a 100k-parameter model had to
learn to read a random 7x7 maze as well, and learned nothing at d >= 3). The anchor is the grid
string in both views: the full, history-free state.

Actions are ``up``, ``down``, ``left``, ``right``; walking into a wall leaves the player where
it is (a valid move). The reward is sparse: ``reward_goal`` on reaching the goal, 0 otherwise
(the runner adds the usual invalid-action penalty). The anchor is the grid string: it holds
the whole state and no history, and the same cells recur across a group's trajectories.
"""

from __future__ import annotations

import argparse
import functools
from collections import deque

import numpy as np

from gigpo.envs.base import Step
from gigpo.envs.prompts import PromptSet

ACTIONS: dict[str, tuple[int, int]] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}

TASK = "Move the player (P) to the goal (G). Legend: # wall, _ floor, P player, G goal."
VIEWS = ("grid", "compass")


def compass(player: tuple[int, int], goal: tuple[int, int]) -> str:
    """The goal's direction from the player in action words: "goal: up, right", "goal: left", ..."""
    vertical = "up" if goal[0] < player[0] else "down" if goal[0] > player[0] else ""
    horizontal = "left" if goal[1] < player[1] else "right" if goal[1] > player[1] else ""
    return "goal: " + ", ".join(word for word in (vertical, horizontal) if word)

PROMPT = """You are in a grid maze. {task}
Walking into a wall leaves you where you are.

Your last steps:
{history}

Current state (step {step}):
{observation}

Admissible actions: {admissible}

Think about the shortest way to the goal inside <think>...</think>, then give exactly one action inside <action>...</action>."""

COMPACT_PROMPT = "task: move P to G\nlast: {recent_actions}\nstate:\n{observation}\nactions: up, down, left, right\n"


def bfs_distances(walls: np.ndarray, start: tuple[int, int]) -> dict[tuple[int, int], int]:
    """Fewest moves from ``start`` to every reachable floor cell (4-neighbourhood)."""
    distance = {start: 0}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        for dr, dc in ACTIONS.values():
            neighbour = (cell[0] + dr, cell[1] + dc)
            if neighbour not in distance and not walls[neighbour]:
                distance[neighbour] = distance[cell] + 1
                queue.append(neighbour)
    return distance


def check_view(view: str) -> None:
    if view not in VIEWS:
        raise ValueError(f"gridnav: env.view={view!r} is not one of {list(VIEWS)}")


def check_options(env) -> None:
    """The ``env.`` options no room can be drawn for, refused at composition (``gigpo.checks.check``)
    rather than by the first reset inside a run: size < 2, distance < 1 or longer than any path in
    the grid (size**2 - 1 moves visit every cell), wall_density outside [0, 1), max_steps < distance,
    an unknown view."""
    check_view(env.view)
    if env.size < 2:
        raise ValueError(f"env.size={env.size!r} must be >= 2 (interior side length)")
    if not 1 <= env.distance <= env.size**2 - 1:
        raise ValueError(f"env.distance={env.distance!r} must be in [1, {env.size**2 - 1}] for env.size={env.size} "
                         "(a shortest path visits each interior cell at most once)")
    if not 0.0 <= env.wall_density < 1.0:
        raise ValueError(f"env.wall_density={env.wall_density!r} must be in [0, 1)")
    if env.max_steps < env.distance:
        raise ValueError(f"env.max_steps={env.max_steps} < env.distance={env.distance}: no episode can reach the goal")


@functools.lru_cache(maxsize=1024)  # a group's N trajectories reset to the same seed
def generate(seed: int, size: int, distance: int, wall_density: float) -> tuple[np.ndarray, tuple, tuple]:
    """(walls [size+2, size+2] bool, read-only, start, goal) with the goal exactly ``distance`` moves away."""
    rng = np.random.default_rng(seed)
    dim = size + 2
    for _ in range(1000):
        walls = np.ones((dim, dim), dtype=bool)
        walls[1:-1, 1:-1] = rng.random((size, size)) < wall_density
        floor = [tuple(int(x) for x in cell) for cell in np.argwhere(~walls)]
        if len(floor) < 2:
            continue
        start = floor[int(rng.integers(len(floor)))]
        candidates = sorted(c for c, d in bfs_distances(walls, start).items() if d == distance)
        if candidates:
            walls.flags.writeable = False  # memoised: shared by every reset of this seed
            return walls, start, candidates[int(rng.integers(len(candidates)))]
    raise RuntimeError(f"gridnav: no room with a goal {distance} moves away after 1000 attempts (seed={seed}, "
                       f"size={size}, wall_density={wall_density}); lower env.distance or env.wall_density")


class GridNavEnv:
    """Seeded grid navigation with text observations (see the module docstring).

    size: interior side length (walls excluded). distance: the optimal solution length, the
    horizon knob. max_steps: the step limit; None gives ``2 * distance + 2``.
    """

    def __init__(self, size: int = 7, distance: int = 4, wall_density: float = 0.3, max_steps: int | None = None,
                 reward_goal: float = 10.0, view: str = "grid"):
        check_view(view)
        if size < 2 or distance < 1 or not 0.0 <= wall_density < 1.0:
            raise ValueError(f"gridnav: need size >= 2, distance >= 1, 0 <= wall_density < 1; got size={size}, "
                             f"distance={distance}, wall_density={wall_density}")
        self.size, self.distance, self.wall_density = size, distance, wall_density
        self.max_steps = max_steps if max_steps is not None else 2 * distance + 2
        if self.max_steps < distance:
            raise ValueError(f"gridnav: max_steps={self.max_steps} < distance={distance}: no instance is solvable")
        self.reward_goal, self.view = reward_goal, view
        self.walls = np.ones((size + 2, size + 2), dtype=bool)
        self.player = self.goal = (0, 0)
        self.steps, self.done = 0, True

    def render(self) -> str:
        rows = []
        for r in range(self.walls.shape[0]):
            rows.append("".join("#" if self.walls[r, c] else "P" if (r, c) == self.player else
                                "G" if (r, c) == self.goal else "_" for c in range(self.walls.shape[1])))
        return "\n".join(rows)

    def _observe(self, reward: float, won: bool, valid: bool) -> Step:
        grid = self.render()
        text = grid if self.view == "grid" else compass(self.player, self.goal)
        return Step(text, grid, list(ACTIONS), reward, self.done, won,
                    {"task": TASK, "task_type": f"gridnav_d{self.distance}", "valid": valid})

    def reset(self, seed: int) -> Step:
        self.walls, self.player, self.goal = generate(seed, self.size, self.distance, self.wall_density)
        self.steps, self.done = 0, False
        return self._observe(0.0, won=False, valid=True)

    def step(self, action: str) -> Step:
        if self.done:
            raise RuntimeError("gridnav: step() after the episode ended; call reset(seed)")
        self.steps += 1
        delta = ACTIONS.get(action.strip().lower())
        if delta is not None:
            target = (self.player[0] + delta[0], self.player[1] + delta[1])
            if not self.walls[target]:
                self.player = target
        won = self.player == self.goal
        self.done = won or self.steps >= self.max_steps
        return self._observe(self.reward_goal if won else 0.0, won=won, valid=delta is not None)

    def close(self) -> None:
        """Nothing to release."""


PROMPTS = PromptSet(full=PROMPT, compact=COMPACT_PROMPT)
"""The policy's prompts (``prompts.renderer`` chooses among them)."""

def random_success(distance: int, episodes: int, size: int = 7, wall_density: float = 0.3, seed: int = 0,
                   max_steps: int | None = None, first_seed: int = 0) -> float:
    """Share of ``episodes`` rooms (seeds first_seed, first_seed + 1, ...) a uniformly random policy solves."""
    rng = np.random.default_rng(seed)
    env, wins = GridNavEnv(size, distance, wall_density, max_steps), 0
    moves = list(ACTIONS)
    for episode in range(first_seed, first_seed + episodes):
        step = env.reset(episode)
        while not step.done:
            step = env.step(moves[int(rng.integers(4))])
        wins += step.won
    return wins / episodes


def main() -> None:
    """Per setting: the optimal-length distribution (checked by BFS) and a random-policy baseline."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--distances", default="2,4,8,12")
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--size", type=int, default=7)
    parser.add_argument("--wall-density", type=float, default=0.3)
    parser.add_argument("--first-seed", type=int, default=0, help="rooms first_seed, first_seed + 1, ... "
                        "(validation: env.val_seed_offset, 1000000 by default)")
    args = parser.parse_args()
    print(f"{'distance':>8} {'max_steps':>9} {'optimal length (BFS) over seeds':>32} {'random success':>15}")
    for distance in (int(d) for d in args.distances.split(",")):
        lengths = []
        for seed in range(args.first_seed, args.first_seed + args.episodes):
            walls, start, goal = generate(seed, args.size, distance, args.wall_density)
            lengths.append(bfs_distances(walls, start)[goal])
        values, counts = np.unique(lengths, return_counts=True)
        spread = ", ".join(f"{v}: {c}" for v, c in zip(values.tolist(), counts.tolist()))
        env = GridNavEnv(args.size, distance, args.wall_density)
        baseline = random_success(distance, args.episodes, args.size, args.wall_density, first_seed=args.first_seed)
        print(f"{distance:>8} {env.max_steps:>9} {spread:>32} {baseline:>15.3f}")


if __name__ == "__main__":
    main()
