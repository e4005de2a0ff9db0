"""The training loop: rollout -> rewards -> advantages -> PPO update -> validate -> log -> checkpoint.

Deliberate simplifications against the paper's verl-based setup, and why:
- one process, sampling from the policy itself (a small KV-cache loop, ``model.sampler=native``,
  or HF ``generate``; no separate inference engine) on the default path, so ``breakpoint()``
  works anywhere; ``rollout=vllm`` and ``train.strategy=deepspeed`` are
  the scale path;
- old log-probs are the native sampler's own (the masked, tempered distribution the scorer computes,
  tested equal), which saves a scoring pass; HF ``generate``'s and vLLM's are recomputed in one no-grad
  pass right after the rollout (as verl does). The scorer applies the sampler's constraint mask and
  top-k/top-p cut itself, so the ratio is of the distribution sampled from. The sampler's own
  log-probs are compared with the trainer's every iteration (``rollout/logprob_diff_*``) and, with
  ``algo.tis_cap``, correct the loss by truncated importance sampling;
- every env step is one sample whose response tokens share that step's advantage (GiGPO Eq. 8).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from gigpo import console, dump
from gigpo.checks import check
from gigpo.config import env_options
from gigpo.advantage import advantage_parts, episode_group_stats, step_group_stats
from gigpo.critic import build_critic, ppo_advantages, update_critic
from gigpo.policy import build
from gigpo.policy.model import generate
from gigpo.ppo import update
from gigpo.schedule import set_lr
from gigpo.rollout import Rollout, env_corpus, episode_summary, make_act, rollout
from gigpo.runner import GroupRunner
from gigpo.metrics import batch_metrics, reward_metrics
from gigpo.tracking import (CHECKPOINT, MetricsLog, atomic_write_text, config_hash, load_checkpoint, log_evaluation,
                            peak_memory_mb, prepare_run, redact, reset_peak_memory, save_checkpoint, set_rng_state,
                            write_provenance)
from gigpo.wandb_run import VAL_STEP

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_policy(cfg: DictConfig, run_dir: Path):
    """``gigpo.policy.build.build_policy`` with the env's prompts as the tiny model's tokenizer corpus."""
    return build.build_policy(cfg, run_dir, lambda: env_corpus(cfg.env))


def make_runner(cfg: DictConfig, validation: bool = False) -> GroupRunner:
    options = env_options(cfg.env, validation)
    return GroupRunner(cfg.env.name, options, num_workers=cfg.env.workers, step_timeout_s=cfg.env.step_timeout_s,
                       history_len=cfg.env.history_len, projection=cfg.env.projection)


def validation_seeds(env_cfg, evaluate: bool = False) -> list[int]:
    """Validation seeds: with val_pool > 0, val_episodes distinct seeds of 0..val_pool-1 drawn with
    random.Random(val_seed_offset) (the same draw each time), or all of them when ``evaluate``;
    else val_episodes consecutive seeds from val_seed_offset."""
    if env_cfg.val_pool <= 0:
        return [env_cfg.val_seed_offset + i for i in range(env_cfg.val_episodes)]
    if evaluate:
        return list(range(env_cfg.val_pool))
    return random.Random(env_cfg.val_seed_offset).sample(range(env_cfg.val_pool), min(env_cfg.val_episodes,
                                                                                        env_cfg.val_pool))


def validate(cfg: DictConfig, runner: GroupRunner, policy, tokenizer, generate_fn=generate,
             records: list | None = None) -> dict[str, float]:
    """Success on held-out episodes of the validation split, each played once (``validation_seeds``);
    the step records are appended to ``records`` when given (W&B's validation table)."""
    policy.eval()
    seeds = validation_seeds(cfg.env, evaluate=cfg.mode == "eval")
    act = lambda clock: make_act(policy, tokenizer, cfg.env, cfg.model, cfg.model.val_temperature, clock,  # noqa: E731
                                         generate_fn)
    result = rollout(runner, act, seeds, group_size=1, desc="validation")
    if records is not None:
        records.extend(result.records)
    stats = runner.take_stats()
    summary = episode_summary(result.records, stats["failures"])
    if summary["episodes"] != len(seeds):
        raise RuntimeError(f"validation counted {summary['episodes']:.0f} episodes of the {len(seeds)} asked for")
    check_not_all_failed("validation", cfg, summary, stats["failures"])
    return {**{f"val/{k}": v for k, v in summary.items()}, "val/worker_restarts": float(stats["worker_restarts"])}


def check_not_all_failed(what: str, cfg: DictConfig, summary: dict, failures: list[dict]) -> None:
    """A rollout whose every episode failed (broken env, corrupt games) measures nothing: stop, naming the cause."""
    if summary["episodes"] and summary["failed_episodes"] < summary["episodes"]:
        return
    first = failures[0] if failures else {}
    raise RuntimeError(f"{what}: all {summary['episodes']:.0f} episodes failed in env {cfg.env.name!r}; first "
                       f"failure (seed {first.get('seed')}, at {first.get('stage')}): {first.get('error')}")


def check_finite(what: str, values) -> None:
    """A non-finite advantage or loss would train on garbage and log NaN: stop, naming the quantity."""
    if isinstance(values, dict):
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(f"non-finite {what}: {bad}")
    elif not np.isfinite(values).all():
        raise FloatingPointError(f"non-finite {what}: {int((~np.isfinite(values)).sum())} of {len(values)} values "
                                 f"(e.g. {values[~np.isfinite(values)][:3].tolist()})")


def collect(cfg: DictConfig, runner: GroupRunner, policy, tokenizer, iteration: int,
            generate_fn=generate) -> tuple[Rollout, int, dict | None]:
    """Roll out cfg.env.groups groups; with dynamic sampling, drop groups without signal and roll out more.
    Returns (batch, dropped groups, the estimator's ``advantage_parts`` of exactly ``batch``, or None
    when they were not computed: without dynamic sampling the caller computes them).

    Seeds: without dynamic sampling iteration i plays seeds i * groups + g. With it, iteration i owns
    the block of groups * (1 + max_resample) seeds from i * groups * (1 + max_resample): the first
    round and up to max_resample rounds of at most ``groups`` more each fit in it, so no seed repeats
    across iterations. Group and trajectory ids come from running counters over the rounds, so the
    groups of different rounds never share an id.

    A group carries signal when the estimator, as ``compute_step_advantages`` runs it (invalid-action
    penalty included), gives some row of it a nonzero episode part or a nonzero weighted step part;
    a group whose returns tie but whose penalties differ is therefore kept. Every estimator is local
    to its episode group (its means, stds, anchors and graph never cross groups), so each round runs
    it once over the kept groups and the new ones together, and when every group of that union
    carries signal its parts are the batch's parts: the update does not run the estimator again.
    """
    act = lambda clock: make_act(policy, tokenizer, cfg.env, cfg.model, cfg.model.temperature, clock,  # noqa: E731
                                         generate_fn)
    groups, group_size = cfg.env.groups, cfg.algo.group_size
    if not cfg.algo.dynamic_sampling:
        return rollout(runner, act, [iteration * groups + g for g in range(groups)], group_size), 0, None
    next_seed = iteration * groups * (1 + cfg.algo.max_resample)
    kept: list = []
    dropped, next_group, missing = 0, 0, groups
    clock = {"generate_s": 0.0, "total_s": 0.0, "tokens": 0}
    for _ in range(cfg.algo.max_resample + 1):
        result = rollout(runner, act, list(range(next_seed, next_seed + missing)), group_size)
        next_seed += missing
        for key in clock:
            clock[key] += getattr(result, key)
        for r in result.records:  # the runner numbers every call's groups from 0
            r.group_id += next_group
            r.traj_id += next_group * group_size
        next_group += missing
        union = Rollout(kept + result.records)
        parts = _advantage_parts(cfg, union)
        signal = _signal_groups(cfg, union, parts)
        dropped += len({r.group_id for r in result.records} - signal)  # ids as renumbered above
        if len(signal) == len(set(union.group_id.tolist())):
            kept = union.records
        else:  # the union's parts include dropped groups: the kept rows' parts are computed anew below
            kept, parts = [r for r in union.records if r.group_id in signal], None
        missing = groups - len({r.group_id for r in kept})
        if missing <= 0:
            break
    if not kept:  # no group had signal in any round: train on the last round, as GRPO would
        kept, parts = result.records, _advantage_parts(cfg, Rollout(result.records))
    batch = Rollout(kept, **clock)
    return batch, dropped, parts if parts is not None else _advantage_parts(cfg, batch)


def _signal_groups(cfg: DictConfig, batch: Rollout, parts: dict) -> set[int]:
    """Ids of the groups in which the estimator's ``parts`` give some row a nonzero advantage part."""
    signal = (parts["episode"] != 0) | (cfg.algo.step_weight * parts["step"] != 0)
    return set(batch.group_id[signal].tolist())


def _advantage_parts(cfg: DictConfig, batch: Rollout) -> dict:
    a = cfg.algo
    return advantage_parts(a.name, batch.reward, batch.group_id, batch.traj_id, batch.anchor, gamma=a.gamma,
                           step_weight=a.step_weight, mode=a.mode, eps=a.eps, episode_stats=a.episode_stats,
                           similarity=a.similarity, similarity_match=a.similarity_match,
                           penalty=cfg.env.invalid_penalty * batch.invalid,
                           penalty_placement=a.penalty_placement, next_anchor_key=batch.next_anchor,
                           success=batch.success, omega=a.omega, success_reward=a.success_reward)


def compute_step_advantages(cfg: DictConfig, batch: Rollout, parts: dict | None = None
                            ) -> tuple[np.ndarray, dict[str, float]]:
    """Per-step advantages from cfg.algo (the invalid-action penalty placed by the estimator), plus
    advantage, step-group, episode-group and (graphgpo) graph statistics for logging. ``parts``:
    the estimator's ``advantage_parts`` for ``batch`` when already computed."""
    parts = _advantage_parts(cfg, batch) if parts is None else parts
    stats = {}
    if parts["step_group"] is not None:  # GRPO and RLOO build no step groups
        stats.update({f"step_groups/{k}": v for k, v in step_group_stats(parts["step_group"]).items()})
    stats.update({f"episode_groups/{k}": v
                  for k, v in episode_group_stats(trajectories=parts["group_trajectories"]).items()})
    stats.update({k: float(v) for k, v in parts.items() if k.startswith("graph/")})
    for name in ("advantage", "episode", "step"):
        values = parts[name]
        stats[f"adv/{name}_mean"] = float(values.mean())
        stats[f"adv/{name}_std"] = float(values.std())
        stats[f"adv/{name}_abs_mean"] = float(np.abs(values).mean())
        stats[f"adv/{name}_min"] = float(values.min())
        stats[f"adv/{name}_max"] = float(values.max())
    stats["adv/step_nonzero_share"] = float((parts["step"] != 0).mean())
    return parts["advantage"], stats


def checked_collect(cfg: DictConfig, runner: GroupRunner, policy, tokenizer, iteration: int, generate_fn):
    """``collect``, then every episode asked for counted (failed ones as failures) and a rollout
    whose every episode failed stopped: (batch, dropped groups, the estimator's parts of the batch or
    None (``collect``), episode summary, worker restarts)."""
    batch, dropped, parts = collect(cfg, runner, policy, tokenizer, iteration, generate_fn)
    stats = runner.take_stats()
    summary = episode_summary(batch.records, stats["failures"])
    check_not_all_failed(f"training iteration {iteration}", cfg, summary, stats["failures"])
    return batch, dropped, parts, summary, float(stats["worker_restarts"])


def train(cfg: DictConfig, on_validation: Callable[[int, int, dict], None] | None = None) -> float:
    """Train per ``cfg`` in ``cfg.run_dir``; returns the final validation success.

    ``on_validation(iteration, env_steps, val_metrics)`` is called after every validation; a
    sweep uses it to report to its pruner (an exception it raises ends the run).
    """
    run_dir = Path(cfg.run_dir or ".").resolve()
    console.silence_third_party()
    config = redact(OmegaConf.to_container(cfg, resolve=True))  # what the run records: no URL passwords
    writer = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes the run's files
    # ---- run folder: refuse a different config, report a finished run, resume an unfinished one
    previous = prepare_run(run_dir, config, cfg.train.resume, cfg.train.overwrite, writer)
    if previous.complete is not None:
        console.announce(f"{run_dir}: run complete, final/val_success={previous.complete.get('final/val_success')}; "
                         "nothing to do")
        return float(previous.complete["final/val_success"])
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads > 0:  # before the provenance, which records the threads the run computes with
        torch.set_num_threads(cfg.train.threads)
    if writer:  # before the model loads and the envs start, which can take minutes
        resumed_at = previous.checkpoint["iteration"] if previous.checkpoint is not None else 0
        console.announce(console.start_line(cfg, run_dir, resumed_at))
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
        write_provenance(run_dir, cfg)
    reset_peak_memory()  # perf/peak_mem_mb is this run's peak, not the process's

    # ---- build: policy, optimizer, environments; resume from the last checkpoint if any
    seed_everything(cfg.train.seed)
    policy, reference, tokenizer = build_policy(cfg, run_dir)
    # foreach: one fused loop over the tensors, the same numbers as the per-tensor loop (CUDA's default already)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.train.lr,
                                  weight_decay=cfg.train.weight_decay, foreach=True)
    # algo=ppo: a learned critic beside the policy (gigpo.critic), trained on every rank alike
    critic, critic_optimizer = build_critic(cfg, policy) if cfg.algo.name == "ppo" else (None, None)
    start, env_steps, wall_offset = 0, 0, 0.0
    checkpoint = run_dir / CHECKPOINT
    if previous.checkpoint is not None:
        state = previous.checkpoint
        policy.load_state_dict(state["model"])
        if state["optimizer"] is not None and cfg.train.strategy != "deepspeed":
            optimizer.load_state_dict(state["optimizer"])
        if critic is not None:
            critic.load_state_dict(state["critic"])
            critic_optimizer.load_state_dict(state["critic_optimizer"])
        set_rng_state(state["rng"])
        start, env_steps, wall_offset = state["iteration"], state["env_steps"], state["wall_s"]
        log.info("resumed from %s at iteration %d", checkpoint, start)
    ds_engine, on_main, main_rank = None, (lambda fn: fn()), True
    if cfg.train.strategy == "deepspeed":  # ZeRO data parallel over torchrun ranks; rank 0 rolls out
        from gigpo.scale import deepspeed as ds

        ds_engine = ds.wrap(cfg, policy)
        optimizer, on_main, main_rank = ds_engine.optimizer, ds.from_rank0, ds.rank() == 0
        if previous.checkpoint is not None:  # optimizer (and ZeRO-3 parameter) partitions
            ds.load_checkpoint(run_dir, ds_engine, previous.checkpoint)
    # rollout=vllm: an engine mirroring the policy, on rank 0 only (the one rank that samples), marked
    # stale after every update below so that its next generate pushes the new weights.
    generate_fn, engine = generate, None
    if cfg.rollout.name == "vllm" and main_rank:
        from gigpo.scale.vllm_rollout import VLLMRollout

        engine = VLLMRollout(cfg, policy, tokenizer)
        engine.stale = start > 0  # resumed weights differ from the checkpoint the engine loaded
        generate_fn = engine.generate
    metrics_log = MetricsLog(run_dir, cfg, resume_iteration=start) if main_rank else None
    train_runner = make_runner(cfg) if main_rank else None
    val_runner = make_runner(cfg, validation=True) if main_rank else None
    wall_start = time.perf_counter() - wall_offset
    final_val: dict[str, float] = {}
    bar = console.IterationBar(cfg, start, env_steps, disable=not main_rank)
    # What is built so far lives as long as the run: kept out of the cyclic collector's sight, whose full
    # passes over those ~400k objects (torch, transformers, Hydra) took ~0.2 s each, one every few
    # iterations of the default run (about 10% of its time). Given back to it when the run ends, so that a
    # multirun's finished runs are collected.
    gc.freeze()

    try:
        for iteration in range(start, cfg.train.iterations):
            iteration_start = time.perf_counter()
            metrics: dict[str, float] = {"iter": iteration}
            restarts, failed = 0.0, 0.0
            if cfg.train.max_env_steps and env_steps >= cfg.train.max_env_steps:
                break
            val_samples = None
            if iteration % cfg.train.val_every == 0:
                val_records: list = []
                t0 = time.perf_counter()
                val = on_main(lambda: validate(cfg, val_runner, policy, tokenizer, generate_fn, val_records))
                # taken before this iteration's rollout
                metrics.update({**val, VAL_STEP: env_steps, "time/validation_s": time.perf_counter() - t0})
                val_samples = metrics_log.samples(val_records, tokenizer, iteration, env_steps) if main_rank else None
                restarts += val["val/worker_restarts"]
                failed += val["val/failed_episodes"]
                if on_validation is not None:
                    on_validation(iteration, env_steps, val)

            # ---- rollout: B groups x N trajectories, one sample per env step
            policy.eval()
            batch, dropped, parts, summary, train_restarts = on_main(
                lambda: checked_collect(cfg, train_runner, policy, tokenizer, iteration, generate_fn))
            restarts += train_restarts
            failed += summary["failed_episodes"]
            env_steps += len(batch.records)

            # ---- advantages (GiGPO Eq. 8, or GraphGPO / GRPO / RLOO), invalid-action penalty included
            t0 = time.perf_counter()
            if critic is not None:  # algo=ppo: token-level GAE from the critic's values
                parts = None  # no group-relative parts (the dump is refused for ppo in gigpo.checks)
                advantages, values, returns, adv_stats = ppo_advantages(cfg, critic, batch, critic.device)
                check_finite("advantage", np.concatenate(advantages))
            else:
                if parts is None:  # dynamic sampling already ran the estimator on this batch (collect)
                    parts = _advantage_parts(cfg, batch)  # A_E, A_S and R_t also go to the dump and the W&B table
                advantages, adv_stats = compute_step_advantages(cfg, batch, parts)
                check_finite("advantage", advantages)
            advantage_s = time.perf_counter() - t0

            # ---- PPO update
            if engine is not None:
                engine.sleep()  # frees the engine's GPU memory with rollout.sleep=true; no-op otherwise
            set_lr(optimizer, cfg, iteration)  # warm-up and decay as verl's schedulers (gigpo.schedule)
            dumping = main_rank and dump.dump_due(cfg.logger.rollout_dump, iteration)
            old_logprob = dump.sequence_logprobs(cfg, policy, batch.samples) if dumping else None
            t0 = time.perf_counter()
            if ds_engine is not None:
                loss_stats = ds.update(cfg, ds_engine, reference, batch, advantages, iteration)
            else:
                loss_stats = update(cfg, policy, reference, optimizer, batch, advantages, iteration)
            if critic is not None:
                loss_stats.update(update_critic(cfg, critic, critic_optimizer, batch.samples, values, returns,
                                                iteration, critic.device))
            update_s = time.perf_counter() - t0
            if engine is not None:
                engine.mark_stale()
            if dumping:  # the advantages the loss was given, with their parts and the log-probs around the update
                frame = dump.rollout_frame(batch, {**parts, "advantage": advantages}, tokenizer, iteration, env_steps,
                                           old_logprob, dump.sequence_logprobs(cfg, policy, batch.samples))
                dump.write(run_dir, frame, cfg.logger.rollout_dump_max_mb)
            check_finite("loss or gradient norm", loss_stats)

            # ---- log
            metrics.update({f"train/{k}": v for k, v in summary.items()})
            metrics.update(adv_stats)
            metrics.update(loss_stats)
            metrics.update(batch_metrics(batch, tokenizer.eos_token_id, cfg.model.max_prompt_tokens))
            metrics.update(reward_metrics(batch.reward, cfg.env.invalid_penalty * batch.invalid,
                                          parts["return"] if parts is not None else None))
            metrics.update({
                "train/lr": optimizer.param_groups[0]["lr"],
                "env_steps": env_steps,
                "train/dropped_groups": dropped,
                "env/failed_episodes": failed,
                "env/worker_restarts": restarts,
                "time/rollout_s": batch.total_s,
                "time/generate_s": batch.generate_s,
                "time/env_s": max(batch.total_s - batch.generate_s, 0.0),
                "time/advantage_s": advantage_s,
                "time/update_s": update_s,
                "time/iteration_s": time.perf_counter() - iteration_start,
                "time/wall_s": time.perf_counter() - wall_start,
                "perf/tokens_per_s": batch.tokens / max(batch.generate_s, 1e-9),
                "perf/peak_mem_mb": peak_memory_mb(),
            })
            done = iteration + 1
            budget_spent = bool(cfg.train.max_env_steps) and env_steps >= cfg.train.max_env_steps
            checkpoint_due = done % cfg.train.checkpoint_every == 0 or done == cfg.train.iterations or budget_spent
            if not main_rank:
                if checkpoint_due:  # every rank takes part in rank 0's DeepSpeed checkpoint below
                    ds.save_checkpoint(run_dir, done, ds_engine, {})
                continue
            train_samples = None if parts is None else metrics_log.train_samples(  # ppo: no group-relative parts
                batch, {**parts, "advantage": advantages}, tokenizer, iteration, env_steps)
            metrics_log.write(metrics, {**(val_samples or {}), **(train_samples or {})})
            bar.update(iteration + 1, env_steps, metrics)
            console.iteration_line(metrics, time.perf_counter() - iteration_start)

            # ---- checkpoint (after the metrics line, so a resumed run rewrites nothing it kept)
            if checkpoint_due:
                extra = {"env_steps": env_steps, "wall_s": time.perf_counter() - wall_start,
                         "config": json.dumps(config, sort_keys=True)}
                if critic is not None:
                    extra.update(critic=critic.state_dict(), critic_optimizer=critic_optimizer.state_dict())
                if ds_engine is not None:  # DeepSpeed's partitions, then last.pt with the full weights
                    ds.save_checkpoint(run_dir, done, ds_engine, extra)
                else:
                    save_checkpoint(run_dir, done, policy, optimizer, extra)
                metrics_log.log_checkpoint(run_dir / CHECKPOINT, done, env_steps)

        # ---- final validation, logged as the iteration after the last one
        val_records = []
        t0 = time.perf_counter()
        final_val = on_main(lambda: validate(cfg, val_runner, policy, tokenizer, generate_fn, val_records))
        validation_s = time.perf_counter() - t0
        if not main_rank:
            ds.shutdown()
            return float(final_val.get("val/success", 0.0))
        last = metrics_log.last_iteration() + 1
        metrics_log.write({"iter": last, "env_steps": env_steps, "final": True,
                           "time/wall_s": time.perf_counter() - wall_start,
                           "env/failed_episodes": final_val["val/failed_episodes"],
                           "env/worker_restarts": final_val["val/worker_restarts"], **final_val, VAL_STEP: env_steps,
                           "time/validation_s": validation_s},
                          metrics_log.samples(val_records, tokenizer, last, env_steps))
        if on_validation is not None:
            on_validation(last, env_steps, final_val)
    finally:
        gc.unfreeze()
        bar.close()
        for runner in (train_runner, val_runner):
            if runner is not None:
                runner.close()
    summary = {"final/val_success": final_val.get("val/success", 0.0), "env_steps": env_steps}
    atomic_write_text(run_dir / "summary.json", json.dumps({**summary, **final_val}, indent=2, sort_keys=True))
    metrics_log.close(summary)
    console.announce(console.end_line(run_dir, final_val, last, env_steps))
    if ds_engine is not None:
        ds.shutdown()
    return float(summary["final/val_success"])


# Keys a mode=eval command line may set (prefixes end with "."): what is played and how it runs and logs,
# never what was trained. Any other key whose value differs from the checkpoint's config is refused.
EVAL_KEYS = ("mode", "checkpoint", "run_dir", "experiment_name", "env.val_split", "env.val_episodes", "env.val_pool",
             "env.val_seed_offset", "env.workers", "env.step_timeout_s", "model.val_temperature", "train.device",
             "train.threads", "logger", "logger.")


def checkpoint_eval_config(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, dict, Path, list[str]]:
    """mode=eval of ``cfg.checkpoint`` (a file or a run folder): the config the checkpoint was trained with,
    changed only by the command line's ``EVAL_KEYS`` overrides. A command-line key outside them whose
    value differs from the trained one is refused, naming it (evaluating another env or model than the
    one trained would be silently wrong). Returns (config, checkpoint state, checkpoint file, the
    evaluation overrides applied)."""
    path = Path(cfg.checkpoint)
    file = path / CHECKPOINT if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"checkpoint: {file} does not exist")
    state = load_checkpoint(file)  # a corrupt file fails here, naming it, before the model is built
    if "config" not in state:
        raise ValueError(f"checkpoint {file} holds no config, so what it was trained on is unknown; it cannot "
                         "be evaluated")
    trained = OmegaConf.create(json.loads(state["config"]))
    allowed = lambda key: any(key == k or (k.endswith(".") and key.startswith(k)) for k in EVAL_KEYS)  # noqa: E731
    applied, refused = [], []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra.") or key == "experiment":
            continue
        if allowed(key):
            applied.append(override)
            continue
        given, saved = OmegaConf.select(cfg, key), OmegaConf.select(trained, key)
        if isinstance(given, DictConfig):  # a group (env=sokoban): name each key it changes
            given = OmegaConf.to_container(given, resolve=True)
            saved = OmegaConf.to_container(saved, resolve=True) if isinstance(saved, DictConfig) else {}
            refused += [f"{key}.{k}: trained with {saved.get(k, '<absent>')!r}, given {v!r}"
                        for k, v in given.items() if saved.get(k, "<absent>") != v]
        elif saved != given:
            refused.append(f"{key}: trained with {saved!r}, given {given!r}")
    if refused:
        raise ValueError(f"mode=eval evaluates {file} under the config it was trained with; only "
                         f"{', '.join(EVAL_KEYS)} may change. Refused: {'; '.join(refused)}")
    with open_dict(trained):
        for override in applied:
            key = override.split("=", 1)[0].lstrip("+~")
            OmegaConf.update(trained, key, OmegaConf.select(cfg, key), force_add=True)
        trained.mode, trained.checkpoint = "eval", str(file)
        trained.run_dir = str(file.parent.parent)
        trained.train.strategy = "single"  # last.pt holds the full weights: no DeepSpeed (or torchrun) needed
    return trained, state, file, applied


def evaluate(cfg: DictConfig, overrides: list[str] = ()) -> dict[str, float]:
    """mode=eval: load ``checkpoint`` (a file or a run dir) and report validation success per task type,
    under the config the checkpoint was trained with (``checkpoint_eval_config``; ``overrides``: the
    command line's).

    The result goes to ``eval.json`` in the evaluated run's folder (the one holding checkpoints/),
    with the checkpoint file, the iteration it was saved at, the env, the model, the trained config's
    sha256 and the evaluation overrides beside the metrics.
    """
    console.silence_third_party()
    cfg, state, file, applied = checkpoint_eval_config(cfg, list(overrides))
    check(cfg)
    run_dir = file.parent.parent
    iteration = int(state["iteration"])
    console.announce(f"evaluating {file.resolve()} (iteration {iteration}) | env {cfg.env.name} | "
                     f"{len(validation_seeds(cfg.env, evaluate=True))} episodes")
    seed_everything(cfg.train.seed)
    policy, _, tokenizer = build_policy(cfg, run_dir)
    policy.load_state_dict(state["model"])
    result, records = validate_once(cfg, policy, tokenizer)
    out = run_dir / "eval.json"
    record = {"checkpoint": str(file.resolve()), "iteration": iteration, "env": cfg.env.name,
              "model": cfg.model.path if cfg.model.name == "hf" else cfg.model.name,
              "config_sha256": config_hash(json.loads(state["config"])), "overrides": applied}
    atomic_write_text(out, json.dumps({**record, **result}, indent=2, sort_keys=True))
    log_evaluation(run_dir, cfg, {**result, VAL_STEP: int(state.get("env_steps", 0))}, records, tokenizer)
    for key, value in sorted(result.items()):
        print(f"{key:40s} {value:.3f}")
    console.announce(f"checkpoint {file.resolve()} (iteration {iteration}): validation success "
                     f"{result['val/success']:.3f} | wrote {out}")
    return result


def validate_once(cfg: DictConfig, policy, tokenizer) -> tuple[dict[str, float], list]:
    """One validation of ``policy`` on a fresh validation runner (closed after): metrics and the
    played records, for the two evaluation entries (a checkpoint, the model as loaded)."""
    runner = make_runner(cfg, validation=True)
    records: list = []
    try:
        return validate(cfg, runner, policy, tokenizer, records=records), records
    finally:
        runner.close()


def evaluate_as_loaded(cfg: DictConfig) -> dict[str, float]:
    """mode=eval without a checkpoint (``checkpoint`` unset or "none"): the model as loaded (model=hf:
    the pretrained checkpoint at model.path; model=tiny: its seeded random init), on the validation
    pool with the training prompts (``env.prompt_style``) and projection: the paper's prompting rows.

    ``run_dir`` becomes a finished run's folder that ``analysis.load`` reads like any other: config.yaml,
    metrics.jsonl (one final line at iteration 0, no env steps), summary.json, and eval.json. A folder
    holding a training run's checkpoint is refused: evaluate that with checkpoint=RUN_FOLDER.
    """
    console.silence_third_party()
    run_dir = Path(cfg.run_dir or ".").resolve()
    if (run_dir / CHECKPOINT).exists():
        raise FileExistsError(f"{run_dir} holds a training run ({CHECKPOINT}); evaluate it with checkpoint={run_dir}, "
                              "or give mode=eval without a checkpoint another run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    console.announce(f"evaluating the model as loaded ({cfg.model.name}{', ' + cfg.model.path if cfg.model.path else ''}"
                     f") | env {cfg.env.name} | {len(validation_seeds(cfg.env, evaluate=True))} episodes")
    config = redact(OmegaConf.to_container(cfg, resolve=True))  # what the run records: no URL passwords
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
    if cfg.train.threads > 0:  # before the provenance, which records the threads the run computes with
        torch.set_num_threads(cfg.train.threads)
    write_provenance(run_dir, config)
    seed_everything(cfg.train.seed)
    policy, _, tokenizer = build_policy(cfg, run_dir)
    limit = cfg.model.max_prompt_tokens
    if cfg.env.prompt_style == "react":  # prompts are cut from the left: cut examples would be a different prompt
        from gigpo.envs.render import react_examples

        examples = len(tokenizer(react_examples(cfg.env, env_options(cfg.env)), add_special_tokens=False)["input_ids"])
        if examples >= limit:
            raise ValueError(f"env.prompt_style=react: the {cfg.env.react_examples} examples (env.react_examples) take "
                             f"{examples} tokens, model.max_prompt_tokens={limit}: raise it or use fewer examples")
    result, records = validate_once(cfg, policy, tokenizer)
    cut = float(np.mean([len(r.payload.prompt_ids) >= limit for r in records])) if records else 0.0
    result["val/prompt_truncated_share"] = cut
    if cfg.env.prompt_style == "react" and cut > 0:
        raise ValueError(f"env.prompt_style=react: {cut:.1%} of the prompts reached model.max_prompt_tokens={limit} "
                         "and lost the start of their examples: raise model.max_prompt_tokens or lower "
                         "env.react_examples")
    atomic_write_text(run_dir / "metrics.jsonl", json.dumps({"iter": 0, "env_steps": 0, "final": True, **result,
                                                             VAL_STEP: 0}, sort_keys=True) + "\n")
    atomic_write_text(run_dir / "summary.json", json.dumps({"final/val_success": result["val/success"], "env_steps": 0,
                                                            **result}, indent=2, sort_keys=True))
    out = run_dir / "eval.json"
    atomic_write_text(out, json.dumps({"checkpoint": None, "iteration": 0, **result}, indent=2, sort_keys=True))
    log_evaluation(run_dir, cfg, {**result, VAL_STEP: 0}, records, tokenizer)
    for key, value in sorted(result.items()):
        print(f"{key:40s} {value:.3f}")
    console.announce(f"model as loaded: validation success {result['val/success']:.3f} | wrote {out}")
    return result
