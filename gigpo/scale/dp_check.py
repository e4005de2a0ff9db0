"""One PPO update of a small random Qwen2 on a fixed synthetic batch, single-process or through DeepSpeed.

tests/test_scale.py runs it as ``python -m gigpo.scale.dp_check --strategy single`` and as
``torchrun --nproc_per_node K -m gigpo.scale.dp_check --strategy deepspeed`` and compares the loss
metrics and the updated weights: data parallelism must not change the update.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf
from transformers import Qwen2Config, Qwen2ForCausalLM

from gigpo.config import Config
from gigpo.policy.model import Sample


def make_cfg(args):
    cfg = OmegaConf.structured(Config)
    cfg.train.update(lr=1e-3, mini_batch_size=8, micro_batch_size=3, ppo_epochs=2, seed=0, device="cpu",
                     zero_stage=args.zero_stage, strategy=args.strategy)
    cfg.algo.update(kl_coef=0.01, entropy_coef=0.001, loss_agg=args.loss_agg)
    return cfg


def make_problem(samples: int = 12, vocab: int = 97):
    """Model (seeded init), its frozen reference, and a synthetic batch with advantages."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)
    policy = Qwen2ForCausalLM(config)
    reference = Qwen2ForCausalLM(config).requires_grad_(False).eval()
    reference.load_state_dict(policy.state_dict())
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(samples):
        p, r = int(torch.randint(3, 9, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
        ids = torch.randint(2, vocab, (p + r,), generator=g).tolist()
        rows.append(Sample(ids[:p], ids[p:], ""))
    advantages = torch.randn(samples, generator=g).numpy()
    return policy, reference, SimpleNamespace(samples=rows), advantages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=["single", "deepspeed"], default="single")
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--loss-agg", default="token_mean")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = make_cfg(args)
    policy, reference, batch, advantages = make_problem()
    if args.strategy == "single":
        from gigpo.ppo import update

        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        metrics = update(cfg, policy, reference, optimizer, batch, advantages, iteration=0)
        params = {n: p.detach().clone() for n, p in policy.named_parameters()}
        torch.save({"metrics": metrics, "params": params}, args.out)
        return
    from gigpo.scale import deepspeed as ds

    engine = ds.wrap(cfg, policy)
    metrics = ds.update(cfg, engine, reference, batch, advantages, iteration=0)
    params = ds.full_module_state(engine)  # whole weights on rank 0
    if ds.rank() == 0:
        torch.save({"metrics": metrics, "params": params, "world_size": ds.world_size()}, args.out)
    ds.shutdown()


if __name__ == "__main__":
    main()
