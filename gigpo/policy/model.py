"""The policy: a transformers causal LM, batched sampling, and per-token log-probs.

Generation pads on the left (so every prompt ends where decoding starts) and uses the KV cache;
scoring for the loss pads on the right, so a sequence's real tokens sit at positions 0..L-1 in
both passes and the rotary position ids agree.

Constrained decoding (``admissible`` given) restricts sampling to the token prefix tree of
``<action>a</action><eos>`` for the admissible actions a. The policy is then the *masked*
distribution, and the loss scores responses under that same mask (each sample keeps the allowed
tokens of every response position), so the PPO ratio is exact and forced tokens (one choice,
log-prob 0) carry no gradient: learning concentrates on the tokens that choose the action.

The sampler and the scorer apply the same distribution: temperature, then ``model.top_k`` and
``model.top_p`` through transformers' own ``TopKLogitsWarper``/``TopPLogitsWarper`` in both places
(0 and 1.0, the defaults, switch them off). Nothing else may shape sampling: every generation
setting a checkpoint's ``generation_config.json`` carries (repetition_penalty, top_k, min_p, ...)
is dropped by ``load_hf`` and each ``generate`` call passes a complete, neutral config.

A response ends at its first EOS *by position* and keeps it, so the EOS is scored and trained
even when the tokenizer's pad id equals its EOS id.

Scoring computes logits only where they are used: the model runs over the whole sequence with
``logits_to_keep=1``, the decoder's final hidden states are caught by a forward hook, those of the
response positions are gathered, and only they go through the LM head, in chunks of
``LOGIT_CHUNK`` tokens; entropy only when asked. Calling the model itself, not its decoder, keeps
the wrappers' own forward hooks in play (DeepSpeed ZeRO-3 gathers and releases parameters there). With Qwen2.5's 151,936-token
vocabulary and 2,048-token prompts this is what keeps a scoring micro-batch small
(``python -m benchmarks.memory``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from gigpo.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LOGIT_CHUNK = 1024
"""Response tokens per LM-head call when scoring: [LOGIT_CHUNK, V] float32 logits at a time."""


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
    # The checkpoint's sampling defaults (Qwen2.5: top_k 20, top_p 0.8, repetition_penalty 1.05) would fill
    # every setting generate leaves unset, and the scorer would not know about them: keep the token ids only.
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=model.generation_config.bos_token_id)
    return model, tokenizer


def as_chat(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """Wrap a prompt in the tokenizer's chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


class ActionTrie:
    """Token prefix tree of the admissible responses ``<action>a</action><eos>``.

    Build it with ``ActionTrie.of(tokenizer, actions)``: the same action list recurs at almost
    every step of a rollout, and tokenising it again was a tenth of an iteration's time.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, actions: tuple[str, ...]):
        children: dict[tuple[int, ...], set[int]] = {}
        self.depth = 0
        for action in actions:
            ids = tokenizer.encode(f"<action>{action}</action>", add_special_tokens=False) + [tokenizer.eos_token_id]
            self.depth = max(self.depth, len(ids))
            for k in range(len(ids)):
                children.setdefault(tuple(ids[:k]), set()).add(ids[k])
        self.next = {prefix: sorted(tokens) for prefix, tokens in children.items()}

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def of(tokenizer: PreTrainedTokenizerBase, actions: tuple[str, ...]) -> "ActionTrie":
        """The (shared, read-only) trie of ``actions`` under ``tokenizer``."""
        return ActionTrie(tokenizer, actions)

    def allowed(self, prefix: tuple[int, ...], fallback: int) -> list[int]:
        return self.next.get(prefix, [fallback])


@dataclass
class Sample:
    """One generated response: token ids (prompt after truncation, response up to its EOS)."""

    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    allowed: list[list[int]] | None = None
    """Constrained decoding: the tokens allowed at each response position."""
    logprobs: list[float] | None = None
    """The sampler's log-prob of each response token (``generate(..., logprobs=True)``), for checks."""


def sampling_warpers(top_k: int, top_p: float) -> list:
    """The logits warpers after temperature, as transformers' sampler applies them (top-k, then top-p)."""
    warpers = []
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


@torch.no_grad()
def generate(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: ModelConfig,
    temperature: float,
    admissible: list[list[str]] | None = None,
    logprobs: bool = False,
) -> list[Sample]:
    """Sample one response per prompt (greedy when temperature == 0); with ``logprobs``, each sample
    also carries the sampler's log-prob of its tokens (from the processed scores it sampled from)."""
    tokenizer.truncation_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                    max_length=cfg.max_prompt_tokens, add_special_tokens=False).to(model.device)
    width = enc["input_ids"].shape[1]
    allowed = None
    max_new_tokens = cfg.max_response_tokens
    eos = tokenizer.eos_token_id
    if admissible is not None:
        tries = [ActionTrie.of(tokenizer, tuple(actions)) for actions in admissible]

        def allowed(row: int, ids: torch.Tensor) -> list[int]:
            return tries[row].allowed(tuple(ids[width:].tolist()), tokenizer.pad_token_id)

        # A constrained response is as long as its action: never cut one (WebShop queries are long).
        max_new_tokens = max(max_new_tokens, max(t.depth for t in tries))

    # Every setting that shapes the distribution is set here, to a neutral value unless configured:
    # an unset one would be filled from the model's generation_config, then from transformers'
    # defaults (top_k 50), and the sampled policy would no longer be the scored one.
    neutral = dict(top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
                   repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
                   min_new_tokens=0, num_beams=1, renormalize_logits=False)
    if temperature > 0:
        sampling = dict(neutral, do_sample=True, temperature=temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    else:
        sampling = dict(neutral, do_sample=False, temperature=1.0)
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
                               output_scores=logprobs, return_dict_in_generate=True, **sampling)
    out = model.generate(**enc, generation_config=gen_cfg, prefix_allowed_tokens_fn=allowed)
    sequences = out.sequences
    samples = []
    for row in range(len(prompts)):
        prompt_ids = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
        response = sequences[row, width:].tolist()
        # Cut after the first EOS by position: filtering pad ids would drop the EOS when pad == eos.
        if eos in response:
            response = response[: response.index(eos) + 1]
        response = response or [eos]
        # Strip only the final EOS: format tags must survive decoding whatever kind of token they are.
        text = tokenizer.decode(response[:-1] if response[-1] == eos else response, skip_special_tokens=False)
        allowed_here = None
        if admissible is not None:
            allowed_here = [tries[row].allowed(tuple(response[:k]), tokenizer.pad_token_id) for k in range(len(response))]
        sampled = None
        if logprobs:
            sampled = [float(torch.log_softmax(out.scores[k][row].float(), -1)[token]) for k, token in
                       enumerate(response[: len(out.scores)])]
        samples.append(Sample(prompt_ids, response, text, allowed_here, sampled))
    return samples


def pad_batch(samples: list[Sample], pad_id: int, device, vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded [B, L] input ids, attention mask, the mask of response tokens among targets [B, L-1],
    and (for constrained samples, given ``vocab_size``) the allowed-token mask [N, V] of the N response
    tokens only, in the row-major order of ``response_mask.nonzero()``."""
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
        allowed = torch.ones((sum(len(r) for r in response_ids), vocab_size), dtype=torch.bool)
        row = 0
        for s in samples:
            if s.allowed:
                for k, tokens in enumerate(s.allowed):
                    allowed[row + k].zero_()
                    allowed[row + k, tokens] = True
            row += len(s.response_ids)
        batch["allowed"] = allowed.to(device)
    return batch


def backbone_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack (whose output holds the final hidden states) and the LM head of a causal LM,
    seen through a DeepSpeed engine or DDP (``.module``) and peft (``get_base_model()``)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    head = model.get_output_embeddings()
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else None
    if backbone is None or backbone is model:
        backbone = getattr(model, "model", None)
    if head is None or backbone is None:
        raise TypeError(f"token_logprobs: cannot find the decoder and LM head of {type(model).__name__}")
    return backbone, head


def token_logprobs(model, batch: dict[str, torch.Tensor], temperature: float = 1.0, with_entropy: bool = False,
                   top_k: int = 0, top_p: float = 1.0, entropy_grad: bool = True):
    """log pi(y_t | y_<t) of every response token, [B, L-1] (0 elsewhere), and the entropy of pi at
    those positions when asked (without a graph unless ``entropy_grad``).

    pi is softmax(warp(z / T)) with z the logits, masked to the allowed tokens under constrained
    decoding, and warp the sampler's top-k/top-p (``sampling_warpers``): the distribution sampled from.
    """
    backbone, head = backbone_and_head(model)
    # The model itself is called (so DeepSpeed's and peft's hooks on it run) with logits for the last
    # position only; the decoder's final hidden states are taken from a hook on it.
    captured = []
    hook = backbone.register_forward_hook(lambda module, args, out: captured.append(out[0]))
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1)
    finally:
        hook.remove()
    hidden = captured[-1]  # [B, L, H]
    where = batch["response_mask"].bool()  # [B, L-1]
    states = hidden[:, :-1][where]  # [N, H]
    targets = batch["input_ids"][:, 1:][where]  # [N]
    allowed = batch.get("allowed")  # [N, V] or None
    warpers = sampling_warpers(top_k, top_p)
    taken, entropies = [], []
    for start in range(0, states.shape[0], LOGIT_CHUNK):
        chunk = slice(start, start + LOGIT_CHUNK)
        logits = head(states[chunk]).float()  # [n, V]
        if temperature > 0 and temperature != 1.0:
            logits = logits / temperature
        if allowed is not None:  # constrained decoding: the policy is the masked distribution
            logits = logits.masked_fill(~allowed[chunk, : logits.shape[-1]], float("-inf"))
        for warp in warpers:
            logits = warp(None, logits)
        logp = F.log_softmax(logits, dim=-1)
        taken.append(logp.gather(-1, targets[chunk].unsqueeze(-1)).squeeze(-1))
        if with_entropy:
            p = logp if entropy_grad else logp.detach()
            entropies.append(-(p.exp() * p.clamp(min=-1e30)).nan_to_num().sum(-1))
        del logits, logp
    out = torch.zeros(where.shape, dtype=torch.float32, device=hidden.device)
    logp = out.masked_scatter(where, torch.cat(taken)) if taken else out
    if not with_entropy:
        return logp, None
    return logp, out.masked_scatter(where, torch.cat(entropies)) if entropies else out
