"""Typed config schema: one small dataclass per Hydra group, registered in the ConfigStore.

Hydra validates every YAML file and override against these classes at composition, so a typo
(`algo.step_wieght=1`) or a wrong type (`train.iterations=ten`) fails before training starts,
with the key named. Every field is read by code. Env-specific options live in subclasses of
``EnvConfig``; the fields a subclass adds are passed to the environment's constructor.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# ---- key roles: declared once, on the fields below (dataclass field metadata) ------------------
# Every key has one role; a field without one inherits its parent's (every logger.* key is logging),
# and a key with none above it is a setting. The lists of keys that are not settings are derived
# from these declarations (``keys_with_role``, ``role_of``), never written out elsewhere:
#
#   role       what it says                          folder & W&B name   table cell   resume
#   setting    what the run computes                 named               splits       refused if changed
#   budget     how long it runs                      left out            splits       may only grow
#   logging    what is recorded, where and how often left out            pooled       may change
#   execution  where and how it runs (same numbers)  left out            pooled       may change
ROLES = ("setting", "budget", "logging", "execution")
BUDGET = {"role": "budget"}
LOGGING = {"role": "logging"}
EXECUTION = {"role": "execution"}


@dataclass
class AlgoConfig:
    """Advantage estimator and the PPO-clip objective it feeds."""

    name: str = "gigpo"
    """Estimator in gigpo.advantage.ESTIMATORS: gigpo, graphgpo, grpo or rloo; or ppo (a learned
    critic and token-level GAE, gigpo.critic)."""
    group_size: int = 8
    """N: trajectories sampled from the same initial state."""
    step_weight: float = 1.0
    """w in A = A_E + w * A_S (GiGPO Eq. 8)."""
    gamma: float = 0.95
    """Discount of the step-level return (Eq. 5); with ppo, GAE's per-token discount."""
    lam: float = 1.0
    """GAE's lambda (algo=ppo only; verl's default 1)."""
    mode: str = "mean"
    """Normaliser: "mean" (F = 1) or "mean_std" (F = std + eps)."""
    eps: float = 1e-6
    """Added to the std in mode "mean_std"."""
    episode_stats: str = "trajectory"
    """"trajectory" (paper Eq. 3) or "step" (reference code: statistics over step rows)."""
    similarity: Optional[float] = None
    """Text-similarity threshold for anchor grouping; None groups identical anchors only."""
    similarity_match: str = "best"
    """With a similarity threshold, which founding anchor a new text joins: "best" (highest rapidfuzz
    ratio) or "first" (first whose difflib ratio reaches it: verl-agent's rule exactly)."""
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
    """"token_mean" (every response token of the mini-batch weighs the same), "seq_mean" (every step
    does) or "token_mean_per_micro" (verl's: each micro-batch's token mean / number of micro-batches)."""
    tis_cap: Optional[float] = None
    """Truncated importance sampling: weight each token's PG loss by min(pi_old / pi_rollout, tis_cap),
    correcting for a sampler that differs from the trainer (vLLM, bf16); None: off."""
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
    """Registered environment: sokoban, alfworld, webshop or gridnav."""
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
    projection: str = "strict"
    """Answer -> action: "paper" (the paper code: first <action> pair, lower-cased, valid iff tagged
    with <think></think> and no CJK; admissibility unchecked, the env's own verdict ignored) or
    "strict" (last <action> pair, valid iff admissible and accepted by the env)."""
    prompt_template: Optional[str] = None
    """File with a str.format prompt template (fields: gigpo.envs.prompts.FIELDS) replacing the
    env's built-in ones; None: built-in."""
    prompt_style: str = "plain"
    """"plain": the prompt alone; "react": k solved example episodes of the env's expert (ALFWorld's
    walkthroughs, WebShop's scripted expert, Sokoban's solver) before it (ReAct's few-shot prompt)."""
    react_examples: int = 2
    """k, the example episodes of env.prompt_style=react."""
    prompt_template_first: Optional[str] = None
    """Template file for steps without history (step 0, or history_len 0); None: prompt_template
    (or the built-in no-history template)."""
    val_episodes: int = 64
    """Validation episodes (held-out seeds or the validation split)."""
    val_seed_offset: int = 1_000_000
    """Validation uses seeds val_seed_offset, val_seed_offset + 1, ... (val_pool 0)."""
    val_pool: int = 0
    """> 0: validation plays val_episodes seeds drawn at random (without replacement, seeded by
    val_seed_offset, the same draw every time) from 0..val_pool-1, and mode=eval plays all of
    them once; 0: consecutive seeds from val_seed_offset."""
    workers: int = field(default=0, metadata=EXECUTION)
    """Env worker processes; 0 steps envs in the training process."""
    step_timeout_s: float = field(default=120.0, metadata=EXECUTION)
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
    """Reward of every step (a small cost for taking it)."""
    reward_box_on: float = 1.0
    """Reward for pushing a box onto a target."""
    reward_box_off: float = -1.0
    """Reward for pushing a box off a target."""
    reward_finish: float = 10.0
    """Reward for solving the room (every box on a target)."""


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
    shuffle_seed: Optional[int] = 0
    """Train split: seed s plays game order[s % 3553], order a fixed permutation drawn with this
    seed (task types mixed within an iteration); None: the sorted list."""


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
    goals: str = "human"
    """"human": the human instructions (test = goals 0-499); "synthetic": the benchmark's
    generated template goals (every option combination, weighted random draws, no held-out split)."""
    shuffle_seed: Optional[int] = 0
    """Train split (human goals): seed s plays goal order[s % n], order a fixed permutation drawn
    with this seed; None: goal order."""
    show_attrs: bool = False
    """Show the item page's Attributes sub-page (the benchmark hides it by default)."""


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
    view: str = "grid"
    """What the policy sees: "grid" (the whole maze as text) or "compass" (the goal's direction
    from the player, e.g. "goal: up, right": the same eight texts at every distance, so only the
    horizon changes between distances; the anchor stays the full grid state)."""


@dataclass
class ModelConfig:
    """The policy: a transformers causal LM and how it samples."""

    name: str = "tiny"
    """"tiny": a small Qwen2 built from this config with random init; "hf": load from path."""
    path: Optional[str] = None
    """Local checkpoint folder for name=hf (e.g. Qwen2.5-1.5B-Instruct)."""
    hidden_size: int = 64
    """Tiny model: hidden width."""
    layers: int = 2
    """Tiny model: transformer layers."""
    heads: int = 4
    """Tiny model: attention heads (must divide hidden_size)."""
    intermediate_size: int = 128
    """Tiny model: MLP width."""
    vocab_size: int = 512
    """Target size of the BPE tokenizer trained on environment text (tiny model)."""
    max_prompt_tokens: int = 512
    """Prompts are cut from the left beyond this."""
    max_response_tokens: int = 16
    """Response tokens sampled per step at most; a longer answer is cut (counted in response/truncated_share)."""
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
    """Recompute activations in the backward pass (less memory, more time)."""
    lora_rank: int = 0
    """LoRA rank through peft; 0 trains all weights."""
    lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_rank)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""


@dataclass
class TrainConfig:
    iterations: int = field(default=450, metadata=BUDGET)
    """Training iterations (each: rollout, advantages, PPO update)."""
    max_env_steps: int = field(default=0, metadata=BUDGET)
    """Stop once this many env steps were collected (a fair budget across group sizes); 0: no cap."""
    seed: int = 0
    """Seeds python, numpy and torch (sampling, the tiny model's init); the episodes an iteration plays depend on the iteration only."""
    lr: float = 1e-3
    """AdamW peak learning rate (constant unless lr_schedule or a warm-up says otherwise)."""
    lr_warmup_steps: int = 0
    """Iterations of linear warm-up from 0 to lr (verl's lr_warmup_steps); 0: lr_warmup_ratio decides."""
    lr_warmup_ratio: float = 0.0
    """Warm-up as a share of train.iterations when lr_warmup_steps is 0 (verl's lr_warmup_steps_ratio)."""
    lr_schedule: str = "constant"
    """After warm-up: "constant", or "cosine" decay to min_lr_ratio * lr at train.iterations (verl's warmup_style)."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine decay as a share of lr (verl's min_lr_ratio)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    ppo_epochs: int = 1
    """Passes over each iteration's batch."""
    mini_batch_size: int = 128
    """Samples (env steps) per optimizer step."""
    micro_batch_size: int = 64
    """Distinct samples per forward pass (gradient accumulation inside a mini-batch); the embedded tiny
    default (conf/config.yaml) sets 128, a whole mini-batch."""
    grad_clip: float = 1.0
    """Gradient norm clip per optimizer step; 0: no clipping (as DeepSpeed reads 0)."""
    val_every: int = field(default=10, metadata=LOGGING)
    """Validate every K iterations (and at 0 and at the end)."""
    checkpoint_every: int = field(default=10, metadata=LOGGING)
    """Write checkpoints/last.pt every K iterations (and at the end)."""
    resume: bool = field(default=True, metadata=EXECUTION)
    """Continue from the run directory's last checkpoint when one exists (refused if the saved
    config differs in a key that changes training; see gigpo.tracking.RESUME_ALLOWED)."""
    overwrite: bool = field(default=False, metadata=EXECUTION)
    """With resume=false, delete a run already in the run directory and start over; without it
    such a folder is refused, so its metrics are never wiped silently."""
    device: str = field(default="cpu", metadata=EXECUTION)
    """Torch device of the policy: cpu or cuda."""
    strategy: str = "single"
    """"single" process, or "deepspeed" (ZeRO, launched with deepspeed/torchrun)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (2, or 3 on one rank) with train.strategy=deepspeed."""
    offload: bool = False
    """DeepSpeed optimizer/parameter offload to CPU."""
    threads: int = field(default=1, metadata=EXECUTION)
    """torch CPU threads; 0 keeps torch's default. One is fastest for the tiny model (and immune
    to OpenMP spin-waiting when env workers share the cores); raise it for big models on CPU."""


@dataclass
class CriticConfig:
    """The value model of algo=ppo (gigpo.critic): a copy of the policy's backbone with a scalar head."""

    lr: float = 1e-3
    """The critic's AdamW learning rate (verl-agent's PPO scripts: 1e-5 for Qwen2.5)."""
    cliprange_value: float = 0.5
    """Value clipping: the new value enters the clipped loss term within +-cliprange_value of the old (verl's 0.5)."""


@dataclass
class LoggerConfig:
    name: str = "wandb"
    """"wandb" or "none" (metrics.jsonl only)."""
    mode: str = "offline"
    """W&B mode: online, offline or disabled. Online falls back to offline without an API key."""
    project: str = "gigpo"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (user or team); None: the default of the logged-in account."""
    group: Optional[str] = None
    """W&B group; None: experiment_name."""
    val_table_rows: int = 16
    """Env steps of sampled validation trajectories logged as a W&B table per validation; 0: none."""
    log_checkpoints: bool = False
    """Log each checkpoint written (checkpoints/last.pt) as a version of a W&B model artifact."""
    verl_names: bool = False
    """W&B gets verl-agent's names (actor/pg_loss, ...) for the metrics gigpo.metrics.VERL_NAMES maps;
    metrics.jsonl keeps the harness names."""
    rollout_dump: str = "none"
    """Training rollouts written to ``rollouts/iter_<k>.parquet`` (gigpo.dump): "every" iteration,
    every N ("5"), or "none"."""
    rollout_dump_max_mb: float = 1000.0
    """Dumping stops (with a warning) once ``rollouts/`` holds this many MiB."""
    train_table_rows: int = 16
    """Env steps of whole training trajectories (with their advantages) in the W&B ``samples/train``
    table per iteration; 0: none."""


@dataclass
class RolloutConfig:
    name: str = "hf"
    """"hf" (transformers generate) or "vllm"."""
    gpu_memory_utilization: float = field(default=0.4, metadata=EXECUTION)
    """Share of GPU memory vLLM may take for weights and KV cache."""
    sleep: bool = field(default=False, metadata=EXECUTION)
    """vLLM sleep mode: level-2 sleep during the update (frees weights and KV cache); weights pushed on wake."""


@dataclass
class SweepConfig:
    """Which Optuna trial a run belongs to: set by sweeps (sweeps.run, hydra/sweeper=optuna_gigpo)."""

    study: Optional[str] = None
    """Study name; None: the run is not part of a sweep."""
    trial: Optional[int] = None
    """Trial number in the study."""
    seed_index: int = 0
    """k of this run among the trial's seeds (train.seed = base + k)."""
    seeds: int = 1
    """Runs the trial trains, one after another; its objective is their mean."""
    points: int = 10
    """Pruning grid points per seed (sweeps.objective.PruningReporter)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The trial's sampled parameters (also applied as overrides), kept in the run's record."""
    storage: Optional[str] = None
    """Set by the Hydra sweeper on its jobs: the study's RDB URL or journal file, from which run.py
    rebuilds the trial (sweeps.objective.launched_trial); None for every other run."""


@dataclass
class Config:
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    env: EnvConfig = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig, metadata=LOGGING)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    """The learned critic (read with algo=ppo only)."""
    experiment_name: str = field(default="default", metadata=LOGGING)
    """Experiment name: W&B group and output folder."""
    mode: str = "train"
    """"train", or "eval" (evaluate `checkpoint` on the validation split)."""
    checkpoint: Optional[str] = None
    """Checkpoint file or run directory for mode=eval; None (or "none"): evaluate the model as loaded
    (the untrained or pretrained model, the paper's prompting rows)."""
    run_dir: Optional[str] = field(default=None, metadata=EXECUTION)
    """Output folder; None: Hydra's output dir, or the current dir outside Hydra."""
    sweep: SweepConfig = field(default_factory=SweepConfig, metadata=LOGGING)
    """The sweep trial this run belongs to (empty outside sweeps)."""


@functools.lru_cache(maxsize=None)
def key_roles() -> Mapping[str, str]:
    """Every config key (dotted, over every env schema) -> its declared role (module header)."""
    roles: dict[str, str] = {}

    def walk(schema, prefix: str, inherited: str) -> None:
        for f in dataclasses.fields(schema):
            role, key = f.metadata.get("role", inherited), f"{prefix}{f.name}"
            if schema is Config and f.name == "env":
                for env_schema in ENV_SCHEMAS.values():
                    walk(env_schema, "env.", role)
            elif f.type in _SCHEMAS:  # annotations are strings (``from __future__ import annotations``)
                walk(_SCHEMAS[f.type], f"{key}.", role)
            else:
                roles[key] = role

    walk(Config, "", "setting")
    return MappingProxyType(roles)


def role_of(key: str) -> str:
    """The role of a dotted key: declared, or that of its group when the group declares one (a key
    under ``sweep.params`` and the group choice ``logger=none`` are logging); any other key (a group
    choice such as ``algo``) is a setting."""
    roles = key_roles()
    if key in roles:
        return roles[key]
    group = next((f for f in dataclasses.fields(Config) if f.name == key.split(".")[0]), None)
    return group.metadata.get("role", "setting") if group is not None else "setting"


def keys_with_role(*roles: str) -> tuple[str, ...]:
    """The keys declared (or inheriting) one of ``roles``, sorted."""
    return tuple(sorted(k for k, r in key_roles().items() if r in roles))


# Hydra group choices that are no config key: ``experiment=NAME`` sets experiment_name, which names
# the folder above the run's.
CHOICES_NOT_IN_NAME = ("experiment",)


def not_in_name(key: str) -> bool:
    """Whether an override's key stays out of folder, study and W&B run names: every role but setting."""
    return key in CHOICES_NOT_IN_NAME or role_of(key) != "setting"


ENV_SCHEMAS = {"sokoban": SokobanConfig, "alfworld": AlfWorldConfig, "webshop": WebShopConfig,
               "gridnav": GridNavConfig}
_SCHEMAS = {c.__name__: c for c in (AlgoConfig, EnvConfig, ModelConfig, TrainConfig, LoggerConfig, RolloutConfig, CriticConfig,
                                    SweepConfig, Config)}



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
