"""Sokoban as a text environment: procedurally generated, always solvable rooms.

A room is generated from its seed alone (``numpy.random.default_rng(seed)``), in the manner of
the reference Sokoban work (Schrader's gym-sokoban): a random-walk "digger" carves floor inside
the outer walls, boxes are placed on their targets, and the player then *plays backwards* for
``gen_steps`` moves, pulling a box whenever it steps away from one. Every pull is the reverse of
a push, so the room is solvable by replaying the moves forwards. Rooms where the reverse play
left every box on its target are discarded and generation retries.

Grid legend (one character per cell, rows separated by newlines)::

    #  wall          _  floor          O  target
    X  box           √  box on target
    P  player        S  player on target

Actions are exactly ``up``, ``down``, ``left``, ``right``. Rewards follow the usual shaping:
``reward_step`` every step (also for invalid actions), ``reward_box_on`` for pushing a box onto a
target, ``reward_box_off`` for pushing one off, and ``reward_finish`` when all boxes are on
targets. The anchor is the grid string, which holds the whole state and no history.

After the reverse play the player is put on a random cell it can walk to without moving a box
(walking back costs no push, so the room stays solvable), and rooms whose shortest solution
(breadth-first search, ``solve``) is shorter than ``min_solution_steps`` moves are discarded:
without that filter most small rooms are solved by a single move.

Presets (measured on seeds 0..999 with a uniformly random policy):

- easy (``easy=True``): 5x5 room (3x3 inside), one box, 2 reverse moves, shortest solution
  2..7 moves (1-2 pushes), 8 steps allowed; a random policy solves 25% of the episodes, so a
  tiny policy trained with RL can learn it in minutes on a CPU.
- standard: the paper's 6x6 room with one box, 20 reverse moves, shortest solution at least 4
  moves, 15 steps allowed; a random policy solves about 8%.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from gigpo.envs.base import Step
from gigpo.envs.prompts import PromptSet

ACTIONS: dict[str, tuple[int, int]] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
DELTAS = tuple(ACTIONS.values())

TASK = (
    "Push every box (X) onto a target (O) by moving the player (P). "
    "Legend: # wall, _ floor, O target, X box, √ box on target, P player, S player on target."
)

PROMPT = """You are solving a Sokoban puzzle. {task}
You push a box by walking into it; you cannot pull boxes, and boxes cannot be pushed into walls or other boxes.

Your last steps:
{history}

Current state (step {step}):
{observation}

Admissible actions: {admissible}

Think about where the boxes must go inside <think>...</think>, then give exactly one action inside <action>...</action>."""

COMPACT_PROMPT = "task: push X onto O\nlast: {recent_actions}\nstate:\n{observation}\nactions: up, down, left, right\n"

# (dim, num_boxes, gen_steps, min_solution_steps, max_steps) of the two presets.
EASY_PRESET = (5, 1, 2, 2, 8)
STANDARD_PRESET = (6, 1, 20, 4, 15)


@dataclass
class Room:
    """One Sokoban state: static layout plus movable pieces (positions are (row, col))."""

    walls: np.ndarray  # [dim, dim] bool
    targets: np.ndarray  # [dim, dim] bool
    boxes: set[tuple[int, int]]
    player: tuple[int, int]

    def free(self, cell: tuple[int, int]) -> bool:
        """True when ``cell`` is neither a wall nor a box."""
        return not self.walls[cell] and cell not in self.boxes

    def boxes_on_target(self) -> int:
        return sum(bool(self.targets[box]) for box in self.boxes)

    def render(self) -> str:
        """The grid: # wall, X box (a box on a target: √), P player (on a target: S), O target, _ floor."""
        grid = np.where(self.walls, "#", np.where(self.targets, "O", "_")).tolist()  # the static layout at once
        for r, c in self.boxes:
            grid[r][c] = "√" if self.targets[r, c] else "X"
        r, c = self.player
        grid[r][c] = "S" if self.targets[r, c] else "P"
        return "\n".join(map("".join, grid))


def _step_cell(cell: tuple[int, int], delta: tuple[int, int], sign: int = 1) -> tuple[int, int]:
    return cell[0] + sign * delta[0], cell[1] + sign * delta[1]


def check_options(env) -> None:
    """The ``env.`` options no room can be generated for, refused at composition (``gigpo.checks.check``)
    rather than by the first reset inside a run: the interior ((dim - 2)**2 cells) must hold the boxes,
    the player and one free cell; gen_steps and min_solution_steps, when given, >= 1."""
    preset = EASY_PRESET if env.easy else STANDARD_PRESET
    dim = env.dim if env.dim is not None else preset[0]
    boxes = env.num_boxes if env.num_boxes is not None else preset[1]
    if boxes < 1:
        raise ValueError(f"env.num_boxes={boxes!r} must be >= 1")
    if dim < 3 or (dim - 2) ** 2 < boxes + 2:
        raise ValueError(f"env.dim={dim!r} is too small: its {max(dim - 2, 0) ** 2} interior cells cannot hold "
                         f"{boxes} box(es), the player and a free cell (need (dim - 2)**2 >= num_boxes + 2)")
    for key in ("gen_steps", "min_solution_steps"):
        value = env[key]
        if value is not None and value < 1:
            raise ValueError(f"env.{key}={value!r} must be >= 1")


def _carve(rng: np.random.Generator, dim: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Walls of a ``dim`` x ``dim`` room whose interior floor is a random-walk corridor, and its floor
    cells in row-major order.

    The digger walks ``1.5 * interior_cells`` steps, turning with probability 0.35, and clears the
    cells it visits; the border always stays wall. (Cells are collected in a set and written once:
    rejection sampling carves dozens of rooms per kept one.)
    """
    position = (int(rng.integers(1, dim - 1)), int(rng.integers(1, dim - 1)))
    direction = DELTAS[int(rng.integers(4))]
    floor = set()
    for _ in range(int(1.5 * (dim - 2) ** 2)):
        floor.add(position)
        if rng.random() < 0.35:
            direction = DELTAS[int(rng.integers(4))]
        candidate = _step_cell(position, direction)
        if 1 <= candidate[0] < dim - 1 and 1 <= candidate[1] < dim - 1:
            position = candidate
    floor.add(position)
    floor = sorted(floor)
    walls = np.ones((dim, dim), dtype=bool)
    walls[tuple(zip(*floor))] = False
    return walls, floor


def _reverse_play(rng: np.random.Generator, room: Room, gen_steps: int) -> None:
    """Move the player backwards ``gen_steps`` times, pulling boxes it steps away from.

    A reverse move from ``p`` in direction ``d`` puts the player on ``p + d`` and pulls a box at
    ``p - d`` onto ``p``: exactly the inverse of a forward push, which keeps the room solvable.
    """
    for _ in range(gen_steps):
        delta = DELTAS[int(rng.integers(4))]
        destination = _step_cell(room.player, delta)
        if not room.free(destination):
            continue
        behind = _step_cell(room.player, delta, sign=-1)
        if behind in room.boxes:
            room.boxes.remove(behind)
            room.boxes.add(room.player)
        room.player = destination


def _reachable(room: Room) -> list[tuple[int, int]]:
    """Cells the player can walk to without moving a box, in a fixed (sorted) order."""
    seen, frontier = {room.player}, [room.player]
    while frontier:
        cell = frontier.pop()
        for delta in ACTIONS.values():
            neighbour = _step_cell(cell, delta)
            if neighbour not in seen and room.free(neighbour):
                seen.add(neighbour)
                frontier.append(neighbour)
    return sorted(seen)


def solve(room: Room, max_depth: int) -> list[str] | None:
    """A shortest action sequence (breadth-first search) that puts every box on a target.

    None when no solution has at most ``max_depth`` moves. ``[]`` when already solved.
    """
    def solved(boxes: frozenset) -> bool:
        return all(room.targets[box] for box in boxes)

    start = (room.player, frozenset(room.boxes))
    if solved(start[1]):
        return []
    parents: dict = {start: None}
    frontier = [start]
    for _ in range(max_depth):
        next_frontier = []
        for state in frontier:
            player, boxes = state
            for action, delta in ACTIONS.items():
                destination = _step_cell(player, delta)
                if room.walls[destination]:
                    continue
                moved = boxes
                if destination in boxes:
                    beyond = _step_cell(destination, delta)
                    if room.walls[beyond] or beyond in boxes:
                        continue
                    moved = (boxes - {destination}) | {beyond}
                child = (destination, moved)
                if child in parents:
                    continue
                parents[child] = (state, action)
                if solved(moved):
                    path = []
                    while parents[child] is not None:
                        child, action = parents[child]
                        path.append(action)
                    return path[::-1]
                next_frontier.append(child)
        frontier = next_frontier
    return None


def generate_room(seed: int, dim: int, num_boxes: int, gen_steps: int, min_solution_steps: int = 1) -> Room:
    """A solvable room determined by ``seed`` alone whose shortest solution has at least
    ``min_solution_steps`` moves (so at least one box starts off its target)."""
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        walls, floor = _carve(rng, dim)
        if len(floor) < num_boxes + 2:
            continue
        chosen = rng.permutation(len(floor))[: num_boxes + 1]
        targets = np.zeros_like(walls)
        for index in chosen[:num_boxes]:
            targets[floor[index]] = True
        room = Room(walls, targets, {floor[i] for i in chosen[:num_boxes]}, floor[chosen[-1]])
        _reverse_play(rng, room, gen_steps)
        # The player may start anywhere it can walk to: walking back costs no box move, so the
        # room stays solvable, and the solution no longer starts next to the last pulled box.
        reachable = _reachable(room)
        room.player = reachable[int(rng.integers(len(reachable)))]
        if solve(room, max(min_solution_steps - 1, 0)) is None:
            return room
    raise RuntimeError(
        f"sokoban: no room needing min_solution_steps={min_solution_steps} moves after 1000 attempts (seed={seed}, dim={dim}, "
        f"num_boxes={num_boxes}, gen_steps={gen_steps}); raise gen_steps or lower min_solution_steps"
    )


@functools.lru_cache(maxsize=1024)
def _cached_room(seed: int, dim: int, num_boxes: int, gen_steps: int, min_solution_steps: int) -> Room:
    """``generate_room``, memoised; callers must not mutate the result (``_move`` only touches copies)."""
    room = generate_room(seed, dim, num_boxes, gen_steps, min_solution_steps)
    room.walls.flags.writeable = False
    room.targets.flags.writeable = False
    return room


class SokobanEnv:
    """Seeded Sokoban with text observations (see the module docstring for legend and rewards).

    dim, num_boxes, gen_steps, min_solution_steps, max_steps: room side (walls included), boxes,
    reverse-play moves used to scramble the solved room, the fewest moves a generated room may
    need, and the step limit. ``None`` takes the value of the preset chosen by ``easy``
    (``EASY_PRESET`` / ``STANDARD_PRESET``); explicit values win.
    """

    def __init__(
        self,
        dim: int | None = None,
        num_boxes: int | None = None,
        gen_steps: int | None = None,
        min_solution_steps: int | None = None,
        max_steps: int | None = None,
        reward_step: float = -0.1,
        reward_box_on: float = 1.0,
        reward_box_off: float = -1.0,
        reward_finish: float = 10.0,
        easy: bool = False,
    ):
        preset = EASY_PRESET if easy else STANDARD_PRESET
        self.dim = dim if dim is not None else preset[0]
        self.num_boxes = num_boxes if num_boxes is not None else preset[1]
        self.gen_steps = gen_steps if gen_steps is not None else preset[2]
        self.min_solution_steps = min_solution_steps if min_solution_steps is not None else preset[3]
        self.max_steps = max_steps if max_steps is not None else preset[4]
        if self.dim < 3 or self.num_boxes < 1 or self.max_steps < 1:
            raise ValueError(f"sokoban: need dim >= 3, num_boxes >= 1, max_steps >= 1; got "
                             f"dim={self.dim}, num_boxes={self.num_boxes}, max_steps={self.max_steps}")
        self.reward_step = reward_step
        self.reward_box_on = reward_box_on
        self.reward_box_off = reward_box_off
        self.reward_finish = reward_finish
        self.room: Room | None = None
        self.steps = 0
        self.done = True

    def _observe(self, reward: float, won: bool, valid: bool) -> Step:
        grid = self.room.render()
        return Step(
            observation=grid,
            anchor=grid,
            admissible=list(ACTIONS),
            reward=reward,
            done=self.done,
            won=won,
            info={"task": TASK, "task_type": "sokoban", "valid": valid},
        )

    def reset(self, seed: int) -> Step:
        # All N trajectories of a group reset to the same seed: generate once, copy the mutable parts.
        room = _cached_room(seed, self.dim, self.num_boxes, self.gen_steps, self.min_solution_steps)
        self.room = Room(room.walls, room.targets, set(room.boxes), room.player)
        self.steps = 0
        self.done = False
        return self._observe(0.0, won=False, valid=True)

    def step(self, action: str) -> Step:
        if self.done:
            raise RuntimeError("sokoban: step() after the episode ended; call reset(seed)")
        self.steps += 1
        reward = self.reward_step
        delta = ACTIONS.get(action.strip().lower())
        valid = delta is not None
        if valid:
            reward += self._move(delta)
        won = self.room.boxes_on_target() == self.num_boxes
        if won:
            reward += self.reward_finish
        self.done = won or self.steps >= self.max_steps
        return self._observe(reward, won=won, valid=valid)

    def _move(self, delta: tuple[int, int]) -> float:
        """Move the player (pushing a box if there is one); returns the box-shaping reward."""
        room = self.room
        destination = _step_cell(room.player, delta)
        if room.walls[destination]:
            return 0.0
        if destination not in room.boxes:
            room.player = destination
            return 0.0
        beyond = _step_cell(destination, delta)
        if not room.free(beyond):
            return 0.0
        room.boxes.remove(destination)
        room.boxes.add(beyond)
        room.player = destination
        return (self.reward_box_on * bool(room.targets[beyond])
                + self.reward_box_off * bool(room.targets[destination]))

    def close(self) -> None:
        """Nothing to release."""


PROMPTS = PromptSet(full=PROMPT, compact=COMPACT_PROMPT)
"""The policy's prompts (``prompts.renderer`` chooses among them)."""

def expert_policy(env: SokobanEnv, first: Step):
    """A known-good policy for ``env`` just reset: a shortest solution (``solve``), then "up" (ReAct
    examples, ``gigpo.envs.render``)."""
    plan = solve(env.room, env.max_steps) or []
    return lambda t: plan[t] if t < len(plan) else "up"
