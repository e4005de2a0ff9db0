"""The policy: a transformers causal LM, batched sampling, and per-token log-probs.

Generation pads on the left (so every prompt ends where decoding starts) and uses the KV cache;
scoring for the loss pads on the right, so a sequence's real tokens sit at positions 0..L-1 in
both passes and the rotary position ids agree.

Constrained decoding (``admissible`` given) restricts sampling to the token prefix tree of
``<action>a</action><eos>`` for the admissible actions a. The policy is then the *masked*
distribution, and the loss scores responses under that same mask (each sample keeps the allowed
tokens of every response position), so the PPO ratio is exact and forced tokens (one choice,
log-prob 0) carry no gradient: learning concentrates on the tokens that choose the action.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from gigpo.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_tiny(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen2ForCausalLM:
    """A small Qwen2 with random init (the caller seeds torch first)."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_prompt_tokens + cfg.max_response_tokens,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return Qwen2ForCausalLM(config).to(DTYPES[cfg.dtype])


def load_hf(cfg: ModelConfig) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A local checkpoint (model.path) with its tokenizer and chat template; nothing is downloaded."""
    if not cfg.path:
        raise ValueError("model.path: model=hf needs model.path=DIR, a local checkpoint folder")
    tokenizer = AutoTokenizer.from_pretrained(cfg.path, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(cfg.path, dtype=DTYPES[cfg.dtype], local_files_only=True)
    return model, tokenizer


def as_chat(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """Wrap a prompt in the tokenizer's chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


class ActionTrie:
    """Token prefix tree of the admissible responses ``<action>a</action><eos>``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, actions: list[str]):
        self.next: dict[tuple[int, ...], set[int]] = {}
        self.depth = 0
        for action in actions:
            ids = tokenizer.encode(f"<action>{action}</action>", add_special_tokens=False) + [tokenizer.eos_token_id]
            self.depth = max(self.depth, len(ids))
            for k in range(len(ids)):
                self.next.setdefault(tuple(ids[:k]), set()).add(ids[k])

    def allowed(self, prefix: tuple[int, ...], fallback: int) -> list[int]:
        return sorted(self.next.get(prefix, {fallback}))


@dataclass
class Sample:
    """One generated response: token ids (prompt after truncation, response up to its EOS)."""

    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    allowed: list[list[int]] | None = None
    """Constrained decoding: the tokens allowed at each response position."""


@torch.no_grad()
def generate(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: ModelConfig,
    temperature: float,
    admissible: list[list[str]] | None = None,
) -> list[Sample]:
    """Sample one response per prompt (greedy when temperature == 0)."""
    tokenizer.truncation_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                    max_length=cfg.max_prompt_tokens, add_special_tokens=False).to(model.device)
    width = enc["input_ids"].shape[1]
    allowed = None
    max_new_tokens = cfg.max_response_tokens
    if admissible is not None:
        tries = [ActionTrie(tokenizer, actions) for actions in admissible]

        def allowed(row: int, ids: torch.Tensor) -> list[int]:
            return tries[row].allowed(tuple(ids[width:].tolist()), tokenizer.pad_token_id)

        # A constrained response is as long as its action: never cut one (WebShop queries are long).
        max_new_tokens = max(max_new_tokens, max(t.depth for t in tries))

    sampling = dict(do_sample=True, temperature=temperature, top_p=cfg.top_p, top_k=None) if temperature > 0 else dict(
        do_sample=False
    )
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id, **sampling)
    out = model.generate(**enc, generation_config=gen_cfg, prefix_allowed_tokens_fn=allowed)
    samples = []
    for row in range(len(prompts)):
        prompt_ids = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
        response = out[row, width:].tolist()
        if tokenizer.eos_token_id in response:
            response = response[: response.index(tokenizer.eos_token_id) + 1]
        response = [t for t in response if t != tokenizer.pad_token_id] or [tokenizer.eos_token_id]
        # Strip only EOS: format tags must survive decoding whatever kind of token they are.
        text = tokenizer.decode([t for t in response if t != tokenizer.eos_token_id], skip_special_tokens=False)
        allowed_here = None
        if admissible is not None:
            allowed_here = [tries[row].allowed(tuple(response[:k]), tokenizer.pad_token_id) for k in range(len(response))]
        samples.append(Sample(prompt_ids, response, text, allowed_here))
    return samples


def pad_batch(samples: list[Sample], pad_id: int, device, vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded [B, L] input ids, attention mask, the mask of response tokens among targets, and
    (for constrained samples, given ``vocab_size``) the allowed-token mask [B, L-1, V]."""
    prompt_ids = [s.prompt_ids for s in samples]
    response_ids = [s.response_ids for s in samples]
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(lengths), width), dtype=torch.long)
    response_mask = torch.zeros((len(lengths), width - 1), dtype=torch.float32)  # aligned with targets ids[:, 1:]
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention[i, : len(p) + len(r)] = 1
        response_mask[i, len(p) - 1 : len(p) + len(r) - 1] = 1.0
    batch = {"input_ids": ids.to(device), "attention_mask": attention.to(device), "response_mask": response_mask.to(device)}
    if vocab_size is not None and any(s.allowed for s in samples):
        allowed = torch.ones((len(samples), width - 1, vocab_size), dtype=torch.bool)
        for i, s in enumerate(samples):
            for k, tokens in enumerate(s.allowed or []):
                row = allowed[i, len(s.prompt_ids) - 1 + k]
                row.zero_()
                row[tokens] = True
        batch["allowed"] = allowed.to(device)
    return batch


def token_logprobs(model, batch: dict[str, torch.Tensor], temperature: float = 1.0, with_entropy: bool = False):
    """log pi(y_t | y_<t) of every target token, [B, L-1] (and the entropy per position when asked)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    if "allowed" in batch:  # constrained decoding: the policy is the masked distribution
        logits = logits.masked_fill(~batch["allowed"][..., : logits.shape[-1]], float("-inf"))
    logp = F.log_softmax(logits, dim=-1)
    taken = logp.gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return taken, None
    entropy = -(logp.exp() * logp.clamp(min=-1e30)).nan_to_num().sum(-1)
    return taken, entropy
