"""Value checks of a composed config, run before anything is built or written (``check``).

Hydra's types catch typos and wrong types at composition; these catch values: ranges, allowed
sets, combinations, and (``runtime``) what this machine must provide. They live apart from the
schema (gigpo.config) because some need the environment modules (prompt templates, projections).
"""

from __future__ import annotations

from gigpo.advantage import EPISODE_STATS, MODES, PENALTY_PLACEMENTS, SIMILARITY_MATCHES
from gigpo.config import ENV_SCHEMAS


def _check_prompts(env) -> None:
    """Projection and prompt-template checks: the env has the projection, template files load,
    and a history_len > 0 meets a template that shows history."""
    from gigpo.envs import env_module, projection
    from gigpo.envs.prompts import HISTORY_FIELDS, load_template, template_fields

    projection(env.name, env.projection)
    if env.prompt_style == "react" and not hasattr(env_module(env.name), "expert_policy"):
        raise ValueError(f"env.prompt_style=react: environment {env.name!r} has no expert_policy to draw examples "
                         "from; use env.prompt_style=plain")
    if env.prompt_style == "react" and env.react_examples < 1:
        raise ValueError(f"env.react_examples={env.react_examples!r} must be >= 1 with env.prompt_style=react")
    module = env_module(env.name)
    templates = {}
    if env.prompt_template:
        templates["env.prompt_template"] = load_template(env.prompt_template)
    elif env.compact_prompt:
        templates["env.compact_prompt=true (COMPACT_PROMPT)"] = module.PROMPTS.compact
    else:
        templates["env.compact_prompt=false (PROMPT)"] = module.PROMPTS.full
    if env.prompt_template_first:
        load_template(env.prompt_template_first)
    for name, text in templates.items():
        if env.history_len > 0 and not template_fields(text) & HISTORY_FIELDS:
            raise ValueError(f"env.history_len={env.history_len} but {name} shows no history (none of "
                             f"{sorted(HISTORY_FIELDS)}); set env.history_len=0 or use a template with history")


CHOICES = {
    "algo.name": ("gigpo", "graphgpo", "grpo", "rloo", "ppo"),
    "algo.penalty_placement": PENALTY_PLACEMENTS,
    "algo.mode": MODES,
    "algo.episode_stats": EPISODE_STATS,
    "algo.loss_agg": ("token_mean", "seq_mean", "token_mean_per_micro"),
    "algo.similarity_match": SIMILARITY_MATCHES,
    "env.name": tuple(ENV_SCHEMAS),
    "model.name": ("tiny", "hf"),
    "model.dtype": ("float32", "bfloat16"),
    "logger.name": ("wandb", "none"),
    "logger.mode": ("online", "offline", "disabled"),
    "train.strategy": ("single", "deepspeed"),
    "train.lr_schedule": ("constant", "cosine"),
    "rollout.name": ("hf", "vllm"),
    "mode": ("train", "eval"),
    "env.projection": ("paper", "strict"),
    "env.prompt_style": ("plain", "react"),
}
POSITIVE = ("algo.group_size", "env.groups", "env.max_steps", "env.val_episodes", "train.mini_batch_size",
            "train.micro_batch_size", "train.val_every", "train.checkpoint_every", "train.ppo_epochs",
            "train.iterations", "model.max_prompt_tokens", "model.max_response_tokens", "model.hidden_size",
            "model.layers", "model.heads", "model.intermediate_size", "model.vocab_size")
NON_NEGATIVE = ("train.lr", "train.weight_decay", "train.grad_clip", "train.max_env_steps", "train.threads",
                "algo.clip_low", "algo.clip_high", "algo.kl_coef", "algo.entropy_coef", "algo.eps",
                "algo.max_resample", "env.history_len", "env.workers", "env.invalid_penalty", "model.temperature",
                "model.val_temperature", "model.lora_rank", "model.lora_dropout", "logger.val_table_rows",
                "logger.train_table_rows", "logger.rollout_dump_max_mb",
                "algo.step_weight", "env.val_seed_offset", "env.val_pool")
# textworld 1.7.0 (ALFWorld's engine) breaks on Python 3.13 (PEP 667); checked by hand, see README.
ALFWORLD_MAX_PYTHON = (3, 13)
# Optional extras: env or feature -> (module that must import, pip command that installs it).
EXTRAS = {
    "env=alfworld": ("textworld", 'pip install -c constraints.txt -e ".[alfworld]"'),
    "train.strategy=deepspeed": ("deepspeed", 'pip install -c constraints.txt -e ".[scale]"'),
    "model.lora_rank>0": ("peft", 'pip install -c constraints.txt -e ".[scale]"'),
    "rollout=vllm": ("vllm", 'pip install -c constraints-gpu.txt -e ".[gpu]"'),
}


def _check_model_path(path: str) -> None:
    """model=hf loads with ``local_files_only``: the path must be a checkpoint folder (with config.json)
    here, or a hub id already in the local Hugging Face cache; else the load would fail after the
    run folder exists."""
    import os

    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"model.path={path!r} is a folder without config.json: not a transformers checkpoint")
        return
    hub_id = path.count("/") == 1 and not path.startswith((".", "~", "/"))
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(path, "config.json"), str):
            return
    raise ValueError(f"model.path={path!r} does not exist" + (" and is not in the local Hugging Face cache (nothing "
                                                              "is downloaded)" if hub_id else "")
                     + ": give a local checkpoint folder (e.g. Qwen2.5-1.5B-Instruct/)")


def check(cfg, runtime: bool = True) -> None:
    """Value checks Hydra's types cannot express, run before anything is built or written.

    Raises ValueError naming the key, its value and the allowed range. With ``runtime`` (the
    default; run.py and sweeps) it also checks what this machine must provide: CUDA for
    train.device=cuda, the torchrun launcher for train.strategy=deepspeed, and each optional
    extra a config needs (the error gives the pip command).
    """
    import importlib.util
    import math
    import os
    import sys

    from omegaconf import OmegaConf

    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not one of {list(allowed)}")
    for key in POSITIVE:
        value = OmegaConf.select(cfg, key)
        if value < 1:
            raise ValueError(f"{key}={value!r} must be >= 1")
    for key in NON_NEGATIVE:
        value = OmegaConf.select(cfg, key)
        if not value >= 0 or not math.isfinite(value):  # NaN fails both
            raise ValueError(f"{key}={value!r} must be a finite number >= 0")

    def within(key: str, low: float, high: float, low_open: bool = False) -> None:
        value = OmegaConf.select(cfg, key)
        if not ((low < value) if low_open else (low <= value)) or not value <= high:
            raise ValueError(f"{key}={value!r} must be in {'(' if low_open else '['}{low}, {high}]")

    within("algo.gamma", 0.0, 1.0)
    within("algo.lam", 0.0, 1.0)
    if not cfg.critic.lr >= 0 or not math.isfinite(cfg.critic.lr):
        raise ValueError(f"critic.lr={cfg.critic.lr!r} must be a finite number >= 0")
    if not cfg.critic.cliprange_value > 0:
        raise ValueError(f"critic.cliprange_value={cfg.critic.cliprange_value!r} must be > 0")
    if cfg.algo.name == "ppo" and cfg.algo.dynamic_sampling:
        raise ValueError("algo.dynamic_sampling=true with algo.name=ppo: a group carries signal by the group-relative "
                         "estimators' advantages, which ppo (a learned critic) does not compute; use "
                         "algo.dynamic_sampling=false")
    within("train.lr_warmup_ratio", 0.0, 1.0)
    within("train.min_lr_ratio", 0.0, 1.0)
    if cfg.train.lr_warmup_steps < 0:
        raise ValueError(f"train.lr_warmup_steps={cfg.train.lr_warmup_steps!r} must be >= 0")
    if cfg.train.max_env_steps and (cfg.train.lr_schedule != "constant" or cfg.train.lr_warmup_ratio > 0):
        raise ValueError(f"train.lr_schedule={cfg.train.lr_schedule} / train.lr_warmup_ratio="
                         f"{cfg.train.lr_warmup_ratio}: the schedule's horizon is train.iterations, but "
                         f"train.max_env_steps={cfg.train.max_env_steps} may end the run at any iteration; use "
                         "train.lr_warmup_steps with a constant schedule, or train.max_env_steps=0")
    within("model.top_p", 0.0, 1.0, low_open=True)
    within("model.lora_dropout", 0.0, 1.0)
    within("rollout.gpu_memory_utilization", 0.0, 1.0, low_open=True)
    if cfg.algo.similarity is not None:
        within("algo.similarity", 0.0, 1.0, low_open=True)
    if cfg.algo.tis_cap is not None and not (cfg.algo.tis_cap >= 1.0 and math.isfinite(cfg.algo.tis_cap)):
        raise ValueError(f"algo.tis_cap={cfg.algo.tis_cap!r} must be a finite number >= 1 (null turns it off)")
    if cfg.algo.name in ("grpo", "rloo") and cfg.algo.group_size < 2:
        raise ValueError(f"algo.group_size={cfg.algo.group_size} must be >= 2 for algo.name={cfg.algo.name} "
                         "(the baseline is the other trajectories of the group)")
    if not cfg.env.step_timeout_s > 0:
        raise ValueError(f"env.step_timeout_s={cfg.env.step_timeout_s!r} must be > 0")
    if cfg.model.hidden_size % cfg.model.heads:
        raise ValueError(f"model.heads={cfg.model.heads} must divide model.hidden_size={cfg.model.hidden_size}")
    if not cfg.algo.clip_ratio_c > 1.0:
        raise ValueError(f"algo.clip_ratio_c={cfg.algo.clip_ratio_c!r} must be > 1 (inf disables dual-clip)")
    if cfg.model.top_k < 0:
        raise ValueError(f"model.top_k={cfg.model.top_k!r} must be >= 0 (0 turns top-k off)")
    within("algo.omega", 0.0, 1.0, low_open=True)
    if cfg.algo.kl_clamp is not None and not cfg.algo.kl_clamp > 0:  # a clamp <= 0 turns the KL term off
        raise ValueError(f"algo.kl_clamp={cfg.algo.kl_clamp!r} must be > 0 (null: no clamp)")
    if not (cfg.algo.success_reward > 0 and math.isfinite(cfg.algo.success_reward)):  # GraphGPO's r = R_succ * omega**d
        raise ValueError(f"algo.success_reward={cfg.algo.success_reward!r} must be a finite number > 0 (GraphGPO's "
                         "step reward R_succ * omega**d would vanish or flip sign)")
    if not cfg.model.temperature > 0:  # greedy rollouts make a group's trajectories identical: no signal
        raise ValueError(f"model.temperature={cfg.model.temperature!r} must be > 0 for training rollouts (a group "
                         "of identical greedy trajectories has no advantage); model.val_temperature=0 is greedy")
    from gigpo.envs import env_module

    module = env_module(cfg.env.name)
    if hasattr(module, "check_options"):  # each env declares which of its options it can run with
        module.check_options(cfg.env)
    _check_prompts(cfg.env)
    if cfg.env.projection == "paper" and cfg.model.constrained:
        raise ValueError("env.projection=paper needs <think> tags, which model.constrained=true never writes "
                         "(every step would be invalid); use env.projection=strict or model.constrained=false")
    spec = str(cfg.logger.rollout_dump)
    if not (spec in ("every", "none") or (spec.isdigit() and int(spec) >= 1)):
        raise ValueError(f"logger.rollout_dump={spec!r} must be 'every', 'none' or a positive integer N (every N "
                         "iterations)")
    if spec != "none" and cfg.algo.name == "ppo":
        raise ValueError("logger.rollout_dump with algo.name=ppo: the dump records the group-relative estimators' "
                         "parts (A_E, A_S), which ppo's critic-based advantages have none of; use logger.rollout_dump=none")
    if spec != "none" and cfg.train.strategy == "deepspeed" and cfg.train.zero_stage == 3:
        raise ValueError("logger.rollout_dump: the dump scores log-probs on rank 0 alone, which cannot gather ZeRO-3's "
                         "partitioned weights; use train.zero_stage=2 or logger.rollout_dump=none")
    if cfg.model.name == "hf" and not cfg.model.path:
        raise ValueError("model.path: model=hf needs model.path=DIR, a local checkpoint folder")
    if not runtime:
        return
    if cfg.train.strategy == "deepspeed" and not ("WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ):
        raise ValueError("train.strategy=deepspeed needs a distributed launcher (no WORLD_SIZE/LOCAL_RANK set): "
                         "torchrun --nproc_per_node K run.py train.strategy=deepspeed ...")
    if (cfg.train.strategy == "deepspeed" and cfg.train.zero_stage == 3 and cfg.mode == "train"
            and int(os.environ.get("WORLD_SIZE", "1")) > 1):  # rank 0's all-gathers would meet others' broadcasts
        raise ValueError("train.zero_stage=3 with several ranks: the training loop rolls out on rank 0 alone, which "
                         "cannot gather ZeRO-3's partitioned weights; use train.zero_stage=2")
    if str(cfg.train.device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"train.device={cfg.train.device}: CUDA is not available on this machine "
                             "(use train.device=cpu)")
    if cfg.model.name == "hf":
        _check_model_path(cfg.model.path)
    if cfg.env.name == "alfworld" and sys.version_info >= ALFWORLD_MAX_PYTHON:
        raise ValueError(f"env=alfworld does not run on Python {sys.version.split()[0]}: its engine, textworld 1.7, "
                         "assigns to locals() before eval, which Python 3.13 ignores (PEP 667); use Python 3.11 "
                         "or 3.12 for ALFWorld")
    needed = {"env=alfworld": cfg.env.name == "alfworld", "train.strategy=deepspeed": cfg.train.strategy == "deepspeed",
              "model.lora_rank>0": cfg.model.lora_rank > 0, "rollout=vllm": cfg.rollout.name == "vllm"}
    for what, (module, command) in EXTRAS.items():
        if needed[what] and importlib.util.find_spec(module) is None:
            raise ValueError(f"{what} needs the Python package {module!r}, which is not installed: {command}")
