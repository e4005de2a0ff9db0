"""Run bookkeeping: metrics to W&B and ``metrics.jsonl``, atomic checkpoints, resume.

Every metric has one name and goes to both sinks; analysis reads ``metrics.jsonl`` (one JSON
object per iteration). A resumed run drops the lines written after its last checkpoint, so the
file always reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import random
import uuid
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoints/last.pt"


class MetricsLog:
    """Append-only JSONL log of per-iteration metrics, optionally mirrored to W&B."""

    def __init__(self, run_dir: Path, cfg, resume_iteration: int):
        self.path = run_dir / "metrics.jsonl"
        self._truncate(resume_iteration)
        self.wandb = None
        if cfg.logger.name == "wandb" and cfg.logger.mode != "disabled":
            self.wandb = _init_wandb(run_dir, cfg)

    def _truncate(self, resume_iteration: int) -> None:
        """Keep only lines of iterations before ``resume_iteration`` (written before the checkpoint)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["iter"] < resume_iteration]
        self.path.write_text("".join(line + "\n" for line in kept))

    def last_iteration(self) -> int:
        """Iteration of the last line written (-1 when none)."""
        if not self.path.exists():
            return -1
        lines = [line for line in self.path.read_text().splitlines() if line]
        return json.loads(lines[-1])["iter"] if lines else -1

    def write(self, metrics: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(metrics, sort_keys=True) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if k != "iter"}, step=int(metrics["iter"]))

    def close(self, summary: dict) -> None:
        if self.wandb is not None:
            self.wandb.summary.update(summary)
            self.wandb.finish()


def _init_wandb(run_dir: Path, cfg):
    """A W&B run with the resolved config, grouped by experiment; offline without an API key."""
    import wandb

    mode = cfg.logger.mode
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _wandb_logged_in()):
        log.warning("logger.mode=online but no W&B API key is set: logging offline to %s", run_dir / "wandb")
        mode = "offline"
    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group or cfg.experiment_name,
        name=run_dir.name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        mode=mode,
        config=OmegaConf.to_container(cfg, resolve=True),
        settings=wandb.Settings(silent=True, console="off"),
    )


def _wandb_logged_in() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text()


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(run_dir: Path, iteration: int, model, optimizer, extra: dict | None = None) -> Path:
    """Write model, optimizer, RNG states and the next iteration atomically (tmp file + rename)."""
    path = run_dir / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"iteration": iteration, "model": model.state_dict(),
         "optimizer": None if optimizer is None else optimizer.state_dict(),
         "rng": rng_state(), **(extra or {})},
        tmp,
    )
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU) or peak allocated CUDA memory, in MiB."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
