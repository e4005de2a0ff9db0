"""Test-only environments that fail on purpose; a module of its own so that spawned env workers
import it without the test modules' heavy imports."""

import time

from gigpo.envs.base import Step


class ResetFailsEnv:
    """Wins at the first "inc"; reset raises (or, with ``hang``, hangs) for odd seeds."""

    def __init__(self, hang=False):
        self.seed, self.hang = 0, hang

    def reset(self, seed):
        if seed % 2:
            if self.hang:
                time.sleep(60)
            raise RuntimeError(f"broken game for seed {seed}")
        self.seed = seed
        return Step("s", "s", ["inc"], 0.0, False, False, {"task": "t", "task_type": "toy", "valid": True})

    def step(self, action):
        return Step("s", "s", ["inc"], 1.0, True, True, {"task": "t", "task_type": "toy", "valid": True})

    def close(self):
        pass
