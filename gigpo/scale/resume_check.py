"""Several DeepSpeed PPO updates of ``dp_check``'s problem, stopped after a checkpoint and resumed.

tests/test_scale.py runs ``torchrun --nproc_per_node K -m gigpo.scale.resume_check`` once straight
through and once as two launches (``--stop-after k``, then again on the same ``--run-dir``), through
the same ``gigpo.scale.deepspeed.save_checkpoint``/``load_checkpoint`` the training loop calls, and
compares each rank's Adam moments and the final weights exactly. It runs ZeRO-3 too, which the
training loop cannot (rank 0 rolls out alone there).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gigpo.scale import deepspeed as ds
from gigpo.scale.dp_check import make_cfg, make_problem
from gigpo.tracking import CHECKPOINT, load_checkpoint


def adam_moments(engine) -> list[torch.Tensor]:
    """This rank's Adam state: the client AdamW's, keyed by ZeRO's flat fp32 partitions of this rank."""
    zero = engine.optimizer
    stage3 = engine.zero_optimization_stage() == 3
    flat = zero.fp32_partitioned_groups_flat if stage3 else zero.single_partition_of_fp32_groups
    state = zero.optimizer.state  # the client AdamW inside ZeRO's wrapper
    return [state[p][key].detach().clone() for p in flat for key in ("exp_avg", "exp_avg_sq", "step")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--stop-after", type=int, default=0, help="checkpoint after this many updates and exit")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--out", required=True, help="prefix of the result files, one per rank")
    args = parser.parse_args()
    args.strategy, args.loss_agg = "deepspeed", "token_mean"
    torch.set_num_threads(1)
    cfg = make_cfg(args)
    policy, reference, batch, advantages = make_problem()
    run_dir = Path(args.run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT) if (run_dir / CHECKPOINT).exists() else None
    if state is not None:
        policy.load_state_dict(state["model"])
    engine = ds.wrap(cfg, policy)
    if state is not None:
        ds.load_checkpoint(run_dir, engine, state)
    metrics = {}
    for iteration in range(state["iteration"] if state else 0, args.iterations):
        metrics[iteration] = ds.update(cfg, engine, reference, batch, advantages, iteration)
        if iteration + 1 == args.stop_after:
            ds.save_checkpoint(run_dir, iteration + 1, engine, {})
            ds.shutdown()
            return
    weights = ds.full_module_state(engine)
    torch.save({"metrics": metrics, "weights": weights, "moments": adam_moments(engine),
                "world_size": ds.world_size()}, f"{args.out}.rank{ds.rank()}.pt")
    ds.shutdown()


if __name__ == "__main__":
    main()
