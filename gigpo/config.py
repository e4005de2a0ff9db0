"""Typed config schema: one small dataclass per Hydra group, registered in the ConfigStore.

Hydra validates every YAML file and override against these classes at composition, so a typo
(`algo.step_wieght=1`) or a wrong type (`train.iterations=ten`) fails before training starts,
with the key named. Every field is read by code. Env-specific options live in subclasses of
``EnvConfig``; the fields a subclass adds are passed to the environment's constructor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class AlgoConfig:
    """Advantage estimator and the PPO-clip objective it feeds."""

    name: str = "gigpo"
    """Estimator in gigpo.advantage.ESTIMATORS: gigpo, graphgpo, grpo or rloo."""
    group_size: int = 8
    """N: trajectories sampled from the same initial state."""
    step_weight: float = 1.0
    """w in A = A_E + w * A_S (GiGPO Eq. 8)."""
    gamma: float = 0.95
    """Discount of the step-level return (Eq. 5)."""
    mode: str = "mean"
    """Normaliser: "mean" (F = 1) or "mean_std" (F = std + eps)."""
    eps: float = 1e-6
    """Added to the std in mode "mean_std"."""
    episode_stats: str = "trajectory"
    """"trajectory" (paper Eq. 3) or "step" (reference code: statistics over step rows)."""
    similarity: Optional[float] = None
    """Text-similarity threshold for anchor grouping; None groups identical anchors only."""
    clip_low: float = 0.2
    """PPO ratio clip below: ratio >= 1 - clip_low."""
    clip_high: float = 0.2
    """PPO ratio clip above: ratio <= 1 + clip_high (asymmetric "clip-higher" allowed)."""
    clip_ratio_c: float = 3.0
    """Dual-clip bound c > 1: a negative-advantage token's loss is at most -c * A (verl's default 3); inf disables."""
    kl_coef: float = 0.0
    """Weight of the low-variance (k3) KL to the frozen reference policy; 0 disables it."""
    kl_clamp: Optional[float] = 10.0
    """The per-token k3 estimate is clamped to [-kl_clamp, kl_clamp] (verl's low_var_kl); None: no clamp."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus; 0 disables it."""
    loss_agg: str = "token_mean"
    """"token_mean" (every response token weighs the same) or "seq_mean" (every step does)."""
    penalty_placement: str = "step"
    """Where env.invalid_penalty lands: "step" (reference code: only the invalid row's own episode
    score and step input) or "reward" (subtracted from r_t before returns, reaching every row)."""
    omega: float = 0.8
    """GraphGPO's distance decay in r = success_reward * omega ** d (paper: 0.1 ALFWorld, 0.2 WebShop,
    0.8 Sokoban); read by graphgpo only."""
    success_reward: float = 10.0
    """GraphGPO's R_succ: the env's reward for success (env.success_reward, Sokoban's reward_finish,
    all 10 in the paper setting); read by graphgpo only."""
    dynamic_sampling: bool = False
    """Drop groups in which the estimator gives every row advantage 0 (no signal) and roll out more."""
    max_resample: int = 2
    """With dynamic sampling: extra rollout rounds at most, per iteration."""


@dataclass
class EnvConfig:
    """Keys shared by every environment: batch shape, prompting and the worker pool."""

    name: str = MISSING
    """Registered environment: sokoban, alfworld or webshop."""
    groups: int = 8
    """B: task groups per iteration (each rolled out group_size times)."""
    max_steps: int = 10
    """Episode step limit."""
    history_len: int = 2
    """Previous (observation, action) pairs shown in the prompt."""
    compact_prompt: bool = True
    """Short template for small models without a chat template."""
    invalid_penalty: float = 0.1
    """Subtracted from the reward of a step whose action was invalid."""
    val_episodes: int = 64
    """Validation episodes (held-out seeds or the validation split)."""
    val_seed_offset: int = 1_000_000
    """Validation uses seeds val_seed_offset, val_seed_offset + 1, ..."""
    workers: int = 0
    """Env worker processes; 0 steps envs in the training process."""
    step_timeout_s: float = 120.0
    """A worker silent for longer is restarted and its trajectories fail."""


@dataclass
class SokobanConfig(EnvConfig):
    name: str = "sokoban"
    max_steps: int = 15
    easy: bool = False
    """Preset: easy 5x5 room, solution 1-2 pushes away; else the paper's 6x6 room, one box."""
    dim: Optional[int] = None
    """Room side length, walls included; None: the preset's."""
    num_boxes: Optional[int] = None
    """Boxes (and targets); None: the preset's."""
    gen_steps: Optional[int] = None
    """Reverse-play moves scrambling the solved room; None: the preset's."""
    min_solution_steps: Optional[int] = None
    """Rooms solvable in fewer moves are regenerated; None: the preset's."""
    reward_step: float = -0.1
    reward_box_on: float = 1.0
    reward_box_off: float = -1.0
    reward_finish: float = 10.0


@dataclass
class AlfWorldConfig(EnvConfig):
    name: str = "alfworld"
    max_steps: int = 50
    compact_prompt: bool = False
    split: str = "train"
    """Training split: train."""
    val_split: str = "eval_in_distribution"
    """Validation split: eval_in_distribution (valid_seen) or eval_out_of_distribution."""
    data_dir: Optional[str] = None
    """Folder holding json_2.1.1/; None: $ALFWORLD_DATA or the archives in ../shared."""
    success_reward: float = 10.0
    """Reward on success (the paper uses 10)."""


@dataclass
class WebShopConfig(EnvConfig):
    name: str = "webshop"
    max_steps: int = 15
    num_products: int = 1000
    """Generated catalog size (ignored with data_dir)."""
    data_dir: Optional[str] = None
    """Folder with the real WebShop json files; None: the generated catalog."""
    split: str = "train"
    val_split: str = "test"
    reward_mode: str = "success"
    """"success": success_reward on a perfect purchase, else 0; "score": the WebShop score."""
    success_reward: float = 10.0


@dataclass
class GridNavConfig(EnvConfig):
    name: str = "gridnav"
    max_steps: int = 10
    size: int = 7
    """Interior side length of the grid (walls excluded)."""
    distance: int = 4
    """The horizon knob: every instance's shortest solution has exactly this many moves."""
    wall_density: float = 0.3
    """Probability that an interior cell is a wall."""
    reward_goal: float = 10.0
    """Reward on reaching the goal (the only reward)."""


@dataclass
class ModelConfig:
    """The policy: a transformers causal LM and how it samples."""

    name: str = "tiny"
    """"tiny": a small Qwen2 built from this config with random init; "hf": load from path."""
    path: Optional[str] = None
    """Local checkpoint folder for name=hf (e.g. Qwen2.5-1.5B-Instruct)."""
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 128
    vocab_size: int = 512
    """Target size of the BPE tokenizer trained on environment text (tiny model)."""
    max_prompt_tokens: int = 512
    """Prompts are cut from the left beyond this."""
    max_response_tokens: int = 16
    temperature: float = 1.0
    """Rollout sampling temperature."""
    top_k: int = 0
    """Rollout sampling keeps the k likeliest tokens; 0 keeps all. The scorer applies the same cut."""
    top_p: float = 1.0
    """Rollout nucleus sampling; 1.0 keeps all. The scorer applies the same cut."""
    val_temperature: float = 0.4
    """Validation temperature (the paper evaluates at 0.4); 0 is greedy."""
    constrained: bool = True
    """Decode only `<action>a</action>` for admissible a (prefix tree); for format-blind models."""
    sampler: str = "native"
    """"native": gigpo's own KV-cache sampling loop (forced tokens in one step, finished rows dropped);
    "hf": transformers' ``generate``. Both draw from the same distribution."""
    dtype: str = "float32"
    """float32 or bfloat16."""
    gradient_checkpointing: bool = False
    lora_rank: int = 0
    """LoRA rank through peft; 0 trains all weights."""
    lora_alpha: int = 16
    lora_dropout: float = 0.0


@dataclass
class TrainConfig:
    iterations: int = 450
    max_env_steps: int = 0
    """Stop once this many env steps were collected (a fair budget across group sizes); 0: no cap."""
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.0
    ppo_epochs: int = 1
    mini_batch_size: int = 128
    """Samples (env steps) per optimizer step."""
    micro_batch_size: int = 64
    """Samples per forward pass (gradient accumulation inside a mini-batch)."""
    grad_clip: float = 1.0
    val_every: int = 10
    """Validate every K iterations (and at 0 and at the end)."""
    checkpoint_every: int = 10
    resume: bool = True
    """Continue from the run directory's last checkpoint when one exists."""
    device: str = "cpu"
    strategy: str = "single"
    """"single" process, or "deepspeed" (ZeRO, launched with deepspeed/torchrun)."""
    zero_stage: int = 2
    offload: bool = False
    """DeepSpeed optimizer/parameter offload to CPU."""
    threads: int = 1
    """torch CPU threads; 0 keeps torch's default. One is fastest for the tiny model (and immune
    to OpenMP spin-waiting when env workers share the cores); raise it for big models on CPU."""


@dataclass
class LoggerConfig:
    name: str = "wandb"
    """"wandb" or "none" (metrics.jsonl only)."""
    mode: str = "offline"
    """W&B mode: online, offline or disabled. Online falls back to offline without an API key."""
    project: str = "gigpo"
    entity: Optional[str] = None
    group: Optional[str] = None
    """W&B group; None: experiment_name."""


@dataclass
class RolloutConfig:
    name: str = "hf"
    """"hf" (transformers generate) or "vllm"."""
    gpu_memory_utilization: float = 0.4
    sleep: bool = False
    """vLLM sleep mode: level-2 sleep during the update (frees weights and KV cache); weights pushed on wake."""


@dataclass
class Config:
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    env: EnvConfig = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    experiment_name: str = "default"
    """Experiment name: W&B group and output folder."""
    mode: str = "train"
    """"train", or "eval" (evaluate `checkpoint` on the validation split)."""
    checkpoint: Optional[str] = None
    """Checkpoint file or run directory for mode=eval."""
    run_dir: Optional[str] = None
    """Output folder; None: Hydra's output dir, or the current dir outside Hydra."""


ENV_SCHEMAS = {"sokoban": SokobanConfig, "alfworld": AlfWorldConfig, "webshop": WebShopConfig,
               "gridnav": GridNavConfig}


def env_options(env, validation: bool = False) -> dict[str, Any]:
    """The environment constructor's kwargs: the keys the env's schema adds to EnvConfig, plus
    max_steps. With ``validation``, ``split`` becomes the schema's ``val_split`` where it has one."""
    base = {f.name for f in dataclasses.fields(EnvConfig)}
    options = {f.name: env[f.name] for f in dataclasses.fields(ENV_SCHEMAS[env.name]) if f.name not in base}
    options["max_steps"] = env.max_steps
    val_split = options.pop("val_split", None)
    if validation and val_split is not None:
        options["split"] = val_split
    return options


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore; YAML files extend them via their defaults list."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="algo", name="algo_schema", node=AlgoConfig)
    for name, schema in ENV_SCHEMAS.items():
        cs.store(group="env", name=f"{name}_schema", node=schema)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    cs.store(group="train", name="train_schema", node=TrainConfig)
    cs.store(group="rollout", name="rollout_schema", node=RolloutConfig)


CHOICES = {
    "algo.name": ("gigpo", "graphgpo", "grpo", "rloo"),
    "algo.penalty_placement": ("step", "reward"),
    "algo.mode": ("mean", "mean_std"),
    "algo.episode_stats": ("trajectory", "step"),
    "algo.loss_agg": ("token_mean", "seq_mean"),
    "env.name": tuple(ENV_SCHEMAS),
    "model.name": ("tiny", "hf"),
    "model.dtype": ("float32", "bfloat16"),
    "logger.name": ("wandb", "none"),
    "logger.mode": ("online", "offline", "disabled"),
    "train.strategy": ("single", "deepspeed"),
    "rollout.name": ("hf", "vllm"),
    "mode": ("train", "eval"),
}
POSITIVE = ("algo.group_size", "env.groups", "env.max_steps", "env.val_episodes", "train.mini_batch_size",
            "train.micro_batch_size", "train.val_every", "train.checkpoint_every", "train.ppo_epochs")


def check(cfg) -> None:
    """Value checks Hydra's types cannot express; raises ValueError naming the key and value."""
    from omegaconf import OmegaConf

    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not one of {list(allowed)}")
    for key in POSITIVE:
        value = OmegaConf.select(cfg, key)
        if value < 1:
            raise ValueError(f"{key}={value!r} must be >= 1")
    if not 0.0 <= cfg.algo.gamma <= 1.0:
        raise ValueError(f"algo.gamma={cfg.algo.gamma!r} must be in [0, 1]")
    if not cfg.algo.clip_ratio_c > 1.0:
        raise ValueError(f"algo.clip_ratio_c={cfg.algo.clip_ratio_c!r} must be > 1 (inf disables dual-clip)")
    if cfg.model.top_k < 0 or not 0.0 < cfg.model.top_p <= 1.0:
        raise ValueError(f"model.top_k={cfg.model.top_k!r} must be >= 0 and model.top_p={cfg.model.top_p!r} in (0, 1]")
    if not 0.0 < cfg.algo.omega <= 1.0:
        raise ValueError(f"algo.omega={cfg.algo.omega!r} must be in (0, 1]")
    if cfg.algo.similarity is not None and not 0.0 < cfg.algo.similarity <= 1.0:
        raise ValueError(f"algo.similarity={cfg.algo.similarity!r} must be in (0, 1] or null")
    if cfg.mode == "eval" and not cfg.checkpoint:
        raise ValueError("checkpoint: mode=eval needs checkpoint=PATH (a checkpoint file or a run folder)")
