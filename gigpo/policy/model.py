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

Sampling runs in gigpo's own KV-cache loop (``model.sampler=native``, ``_sample_native``), which
prefills each distinct prompt once, appends forced constrained tokens (probability 1 under the mask)
without sampling them, and drops finished rows; ``model.sampler=hf`` runs transformers' ``generate``
instead. Both draw from the same distribution (``tests/test_speed_equivalence.py``).

A response ends at its first EOS *by position* and keeps it, so the EOS is scored and trained
even when the tokenizer's pad id equals its EOS id.

Scoring computes logits only where they are used: the model runs over the whole sequence with
``logits_to_keep=1``, the decoder's final hidden states are caught by a forward hook, those of the
response positions are gathered, and only they go through the LM head, in chunks of
``LOGIT_CHUNK`` tokens; entropy only when asked. Calling the model itself, not its decoder, keeps
the wrappers' own forward hooks in play (DeepSpeed ZeRO-3 gathers and releases parameters there). With Qwen2.5's 151,936-token
vocabulary and 2,048-token prompts this is what keeps a scoring micro-batch small
(``python -m benchmarks.memory``).

Scoring with ``share_prompts`` runs each distinct prompt prefix of a batch once, in levels on each
other's KV caches (``_prompt_prefix_levels``), and the responses on their prompts' caches. The
prompt's last token is fed with the response, so no state the loss reads comes out of a prompt
pass. Only the positions whose states are read need the last decoder layer's output; the others
need its keys and values alone. So the last Qwen2 layer runs its queries, attention output and MLP
at the read positions only (``_last_layer_at``): none in a prefix level, one to a few in a feed of
some 25 tokens on the default config (the default update of fixed batches, 189 -> 162 ms).
The native sampler prefills its distinct prompts on the same plan (``_prefill``), each prompt's last
token as its feed, and decodes on from those caches.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, eager_attention_forward, rotate_half
from transformers.generation.logits_process import LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

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
        texts = [f"<action>{a}</action>" for a in actions]
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []:
            ids = ids + [tokenizer.eos_token_id]
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


PROMPT_CACHE = 8192
"""Prompts whose token ids ``encode_prompts`` keeps per tokenizer (as int32 arrays: 64 MiB at 2,048 tokens each)."""
_prompt_ids: "weakref.WeakKeyDictionary[PreTrainedTokenizerBase, dict]" = weakref.WeakKeyDictionary()


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each prompt, cut from the left beyond ``max_tokens``; each distinct prompt is encoded
    once (a group's trajectories share their first prompt) and kept: revisited states recur within a rollout
    and across iterations, and calling the tokenizer was a twentieth of an iteration."""
    cache = _prompt_ids.setdefault(tokenizer, {})
    keys = {p: (p, max_tokens) for p in dict.fromkeys(prompts)}
    found = {p: cache[k] for p, k in keys.items() if k in cache}  # taken before a full cache is cleared
    missing = [p for p in keys if p not in found]
    if missing:
        tokenizer.truncation_side = "left"
        ids = tokenizer(missing, truncation=True, max_length=max_tokens, add_special_tokens=False)["input_ids"]
        new = {p: np.asarray(i, dtype=np.int32) for p, i in zip(missing, ids)}
        if len(cache) + len(new) > PROMPT_CACHE:
            cache.clear()
        cache.update((keys[p], i) for p, i in new.items())
        found.update(new)
    return [found[p].tolist() for p in prompts]


@torch.inference_mode()  # no autograd bookkeeping at all: cheaper per op than no_grad
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
    also carries the sampler's log-prob of its tokens (from the processed scores it sampled from).

    ``cfg.sampler`` picks the loop: "native" (``_sample_native``) or "hf" (transformers' ``generate``);
    both sample from softmax(warp(mask(z / T))), the distribution ``token_logprobs`` scores.
    """
    prompt_ids = encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    eos = tokenizer.eos_token_id
    max_new_tokens = cfg.max_response_tokens
    tries = None
    if admissible is not None:
        tries = [ActionTrie.of(tokenizer, tuple(actions)) for actions in admissible]
        # A constrained response is as long as its action: never cut one (WebShop queries are long).
        max_new_tokens = max(max_new_tokens, max(t.depth for t in tries))
    samplers = {"native": _sample_native, "hf": _sample_hf}
    if cfg.sampler not in samplers:
        raise ValueError(f"model.sampler={cfg.sampler!r}: known samplers are {', '.join(samplers)}")
    sample = samplers[cfg.sampler]
    responses, scores = sample(model, tokenizer, prompt_ids, cfg, temperature, tries, max_new_tokens, logprobs)
    samples = []
    pad = tokenizer.pad_token_id
    texts: dict[tuple[int, ...], str] = {}  # a batch's responses repeat (a few actions): decode each once
    for row, response in enumerate(responses):
        # Cut after the first EOS by position: filtering pad ids would drop the EOS when pad == eos.
        if eos in response:
            response = response[: response.index(eos) + 1]
        response = response or [eos]
        # Strip only the final EOS: format tags must survive decoding whatever kind of token they are.
        key = tuple(response[:-1] if response[-1] == eos else response)
        if key not in texts:
            texts[key] = tokenizer.decode(list(key), skip_special_tokens=False)
        text = texts[key]
        allowed_here = None
        if tries is not None:
            allowed_here = [tries[row].allowed(tuple(response[:k]), pad) for k in range(len(response))]
        sampled = scores[row][: len(response)] if logprobs else None
        samples.append(Sample(prompt_ids[row], response, text, allowed_here, sampled))
    return samples


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded [B, W] ids and attention mask."""
    lengths = torch.tensor([len(r) for r in rows])  # [B]
    width = int(lengths.max())
    mask = torch.arange(width) >= width - lengths[:, None]  # [B, W]
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    ids[mask] = torch.tensor([t for r in rows for t in r], dtype=torch.long)
    return ids.to(device), mask.long().to(device)


def _sample_native(model, tokenizer, prompt_ids, cfg, temperature, tries, max_new_tokens, logprobs):
    """Token-by-token sampling with a KV cache, in a plain loop.

    Against transformers' ``generate`` it saves work, never changes the distribution:
    - each distinct prompt is prefilled once and its cache copied to the rows that share it, and the
      prefixes that distinct prompts share run once too (``_prefill``);
    - a constrained position with a single allowed token has probability 1 under the mask: it is
      appended without sampling (log-prob 0), and the tokens of all such positions reach the model
      together in the next forward (rows' new tokens are right-aligned, shorter ones padded on the
      left with masked holes: positions come from the attention mask, as with left padding); forced
      first tokens (``<action>``) are prefilled with their prompt, so one forward per step suffices;
    - a row leaves the batch at its EOS (or at ``max_new_tokens``), so the tail of an action after its
      last choice, forced up to the EOS, costs no forward at all.
    """
    device = next(model.parameters()).device
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    warpers = sampling_warpers(cfg.top_k, cfg.top_p) if temperature > 0 else []
    n = len(prompt_ids)
    responses: list[list[int]] = [[] for _ in range(n)]
    scores: list[list[float]] = [[] for _ in range(n)]

    def force(i: int) -> None:
        """Append sample i's forced tokens: a single allowed continuation has probability 1 under the mask."""
        while responses[i][-1:] != [eos] and len(responses[i]) < max_new_tokens:
            options = tries[i].allowed(tuple(responses[i]), pad)
            if len(options) != 1:
                break
            responses[i].append(options[0])
            if logprobs:
                scores[i].append(0.0)

    def unfinished(i: int) -> bool:
        return responses[i][-1:] != [eos] and len(responses[i]) < max_new_tokens

    # ---- forced first tokens join the prompt's prefill (an action fully forced needs no forward at all)
    if tries is not None:
        for i in range(n):
            force(i)
    active = [i for i in range(n) if unfinished(i)]  # batch row -> sample index
    if not active:
        return responses, scores

    # ---- prefill each distinct prompt (with its forced tokens) once, then give every row its prompt's cache
    slot: dict[tuple[int, ...], int] = {}  # distinct prompt + forced tokens -> its row in the prefill
    expand = torch.tensor([slot.setdefault((*prompt_ids[i], *responses[i]), len(slot)) for i in active],
                          device=device)  # [B]
    cache, mask, logits = _prefill(model, list(slot), pad, device)
    # Each row's cache row: copied out at the first decode forward (none when every action ends forced).
    cache_rows = expand
    mask = mask[expand]  # [B, W] attention mask of everything in the cache (holes masked)
    logits = logits[expand]  # [B, V]
    fed = [len(r) for r in responses]  # response tokens already in the cache

    while True:
        # ---- one token per active row from its logits
        z = logits.float()
        if temperature > 0 and temperature != 1.0:
            z = z / temperature
        if tries is not None:
            rows, tokens = [], []
            for b, i in enumerate(active):
                allowed = tries[i].allowed(tuple(responses[i]), pad)
                rows += [b] * len(allowed)
                tokens += allowed
            keep = torch.zeros_like(z, dtype=torch.bool)
            keep[rows, tokens] = True
            z = z.masked_fill(~keep, float("-inf"))
        for warp in warpers:
            z = warp(None, z)
        if temperature > 0:
            tokens = torch.multinomial(F.softmax(z, dim=-1), num_samples=1).squeeze(-1)
        else:
            tokens = z.argmax(-1)
        taken = F.log_softmax(z, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1).tolist() if logprobs else None
        still = []
        for b, (i, token) in enumerate(zip(active, tokens.tolist())):
            responses[i].append(token)
            if logprobs:
                scores[i].append(taken[b])
            if tries is not None:
                force(i)
            if unfinished(i):
                still.append(b)
        if not still:
            break
        # ---- drop finished rows, then feed every row's new tokens in one forward
        if len(still) < len(active):
            index = torch.tensor(still, device=device)
            cache_rows = index if cache_rows is None else cache_rows[index]
            mask = mask[index]
            active = [active[b] for b in still]
        if cache_rows is not None:
            cache.batch_select_indices(cache_rows)
            cache_rows = None
        new = [responses[i][fed[i]:] for i in active]
        for i in active:
            fed[i] = len(responses[i])
        ids, new_mask = _left_pad(new, pad, device)
        mask = torch.cat([mask, new_mask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                    logits_to_keep=1)
        cache, logits = out.cache, out.logits[:, -1]
    return responses, scores


def _prefill(model, sequences: list[tuple[int, ...]], pad_id: int, device):
    """The KV cache [S rows], its attention mask [S, W] and the next-token logits [S, V] of distinct token
    sequences, their shared prefixes run once: the scorer's levels (``_prompt_prefix_levels``) with each
    sequence's last token as its feed. A row's cached positions are its tokens' own (masked holes between
    its context and its last token), so positions counted from the mask continue each row correctly."""
    fake = [Sample(list(seq), [pad_id], "", None) for seq in sequences]  # one scored state: after the last token
    plan = _prompt_prefix_levels(fake, torch.tensor([len(seq) for seq in sequences]), pad_id, device)
    with _final_states(model) as (head, captured):
        states, cache = _shared_prompt_states(model, plan, captured, keep_cache=True)
    # Distinct sequences make one feed each, numbered in their order: row k of the cache is sequence k's.
    return cache, torch.cat([plan["context_mask"], plan["sample_attention"]], 1), head(states)


def _sample_hf(model, tokenizer, prompt_ids, cfg, temperature, tries, max_new_tokens, logprobs):
    """transformers' ``generate`` with the constraint as ``prefix_allowed_tokens_fn``."""
    ids, mask = _left_pad(prompt_ids, tokenizer.pad_token_id, model.device)
    width = ids.shape[1]
    def allowed(row: int, ids: torch.Tensor) -> list[int]:
        return tries[row].allowed(tuple(ids[width:].tolist()), tokenizer.pad_token_id)

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
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id, return_dict_in_generate=True, **sampling)
    recorder = _TakenLogprobs(temperature, sampling_warpers(cfg.top_k, cfg.top_p) if temperature > 0 else [])
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg,
                         prefix_allowed_tokens_fn=allowed if tries is not None else None,
                         logits_processor=LogitsProcessorList([recorder]) if logprobs else None)
    responses = out.sequences[:, width:].tolist()
    scores = None
    if logprobs:
        recorder(out.sequences, None)  # the last step's tokens
        scores = torch.stack(recorder.taken, 1).tolist()  # [B, T]
    return responses, scores


class _TakenLogprobs:
    """A logits processor keeping, step by step, the log-prob of the token ``generate`` then draws,
    without ``output_scores`` (which keeps [B, V] floats per step: gigabytes at 151,936 tokens).

    transformers runs custom processors after its own (the constraint mask) but before its warpers,
    so the sampled distribution is rebuilt here the way it is sampled: z / T, then top-k, top-p.
    The token drawn from step t's scores is the last input id of step t + 1's call."""

    def __init__(self, temperature: float, warpers: list):
        self.temperature, self.warpers = temperature, warpers
        self.pending: torch.Tensor | None = None  # [B, V] log-probs of the step not yet drawn
        self.taken: list[torch.Tensor] = []  # one [B] per generated token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None):
        if self.pending is not None:
            self.taken.append(self.pending.gather(-1, input_ids[:, -1:]).squeeze(-1).float().cpu())
            self.pending = None
        if scores is None:
            return None
        z = scores.float()
        if self.temperature > 0 and self.temperature != 1.0:
            z = z / self.temperature
        for warp in self.warpers:
            z = warp(None, z)
        self.pending = F.log_softmax(z, dim=-1)
        return scores


def pad_batch(samples: list[Sample], pad_id: int, device, vocab_size: int | None = None,
              share_prompts: bool = False) -> dict[str, torch.Tensor]:
    """Right-padded [B, L] input ids, attention mask, the mask of response tokens among targets [B, L-1],
    and (for constrained samples, given ``vocab_size``) the allowed-token mask [N, V] of the N response
    tokens only, in the row-major order of ``response_mask.nonzero()``.

    With ``share_prompts``, also what ``token_logprobs`` needs to run each distinct prompt prefix once
    (``_prompt_prefix_levels``)."""
    prompt_len = torch.tensor([len(s.prompt_ids) for s in samples])  # [B]
    lengths = prompt_len + torch.tensor([len(s.response_ids) for s in samples])  # [B]
    width = int(lengths.max())
    position = torch.arange(width)  # [L]
    attention = (position < lengths[:, None]).long()  # [B, L]
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    ids[attention.bool()] = _longs(itertools.chain.from_iterable(part for s in samples
                                                                 for part in (s.prompt_ids, s.response_ids)))
    target = position[:-1]  # aligned with targets ids[:, 1:]
    response_mask = ((target >= prompt_len[:, None] - 1) & (target < lengths[:, None] - 1)).float()  # [B, L-1]
    batch = {"input_ids": ids.to(device), "attention_mask": attention.to(device), "response_mask": response_mask.to(device)}
    if vocab_size is not None and any(s.allowed for s in samples):
        constrained, rows, tokens = [], [], []
        row = 0
        for s in samples:
            for k, options in enumerate(s.allowed or []):
                constrained.append(row + k)
                rows.extend([row + k] * len(options))
                tokens.extend(options)
            row += len(s.response_ids)
        allowed = torch.ones((row, vocab_size), dtype=torch.bool)  # [N, V]
        allowed[_longs(constrained)] = False
        allowed[_longs(rows), _longs(tokens)] = True
        batch["allowed"] = allowed.to(device)
    if share_prompts:
        batch.update(_prompt_prefix_levels(samples, prompt_len, pad_id, device))
    return batch


def _longs(values) -> torch.Tensor:
    """An int64 tensor of an iterable of ints, through numpy (torch.tensor of a Python list costs 3x more)."""
    return torch.from_numpy(np.fromiter(values, dtype=np.int64))


LEVEL_COST = 128
"""Prompt tokens one more prefix level must save to pay for its model call and cache copy (on the default
config, 32 to 512 timed alike)."""


def _prompt_prefix_levels(samples: list[Sample], prompt_len: torch.Tensor, pad_id: int, device) -> dict:
    """The prompts of a batch cut into levels of shared prefixes, for ``_shared_prompt_states``.

    A sample's *context* is its prompt without the last token, left-aligned (token c at position c,
    right-padded). Sorted, the distinct contexts D share prefixes with their neighbours: with
    lcp_k the common prefix length of neighbours k and k+1, the distinct prefixes of length b
    number H(b) = 1 + #{k: lcp_k < b}. Levels cut the columns at 0 = b_0 < b_1 < ... < b_m = W
    (the longest context); level j runs the columns [b_{j-1}, b_j) of the H(b_j) distinct prefixes
    of length b_j on the cache of their parent prefix at level j - 1. The cuts minimise
    sum_j H(b_j) (b_j - b_{j-1}) + LEVEL_COST m (dynamic programming over the cut points b = lcp_k,
    where H grows). Each sample then feeds its prompt's last token and its response tokens (positions
    len(prompt) - 1 + r) on its context's cache: their states predict its response tokens. A token the
    constrained mask forces (its allowed tokens are the token alone) has log-prob and entropy 0 and no
    gradient whatever the model says: it is not scored, and the feed stops at the last scored token;
    samples whose feeds agree (one prompt's responses up to the action's choice) share one. An empty
    context (1-token prompt) takes any cache row, masked out. When the last level's columns [b_{m-1}, W)
    cost no more than LEVEL_COST to repeat for each feed (F feeds over D contexts: (F - D)(W - b_{m-1})
    tokens; none when every context has one feed), the feeds carry them instead: one model call fewer,
    and no copy of the full-width cache (``merged``).

    Keys: ``prompt_levels`` (per level: ids [H, w], attention mask [H, b_j] over the columns so far,
    parent row [H] at the previous level); per distinct feed: ``context_mask`` [F, W], ``prompt_of``
    [F] (its context's row at the last level), ``sample_ids``, ``sample_attention``,
    ``sample_positions`` [F, R]; ``scored`` [N] (which response tokens are scored, row-major) and
    ``scored_at`` [M, 2] (the feed row and position of each scored token's state); ``merged``."""
    contexts = sorted({tuple(s.prompt_ids[:-1]) for s in samples if len(s.prompt_ids) > 1})
    row_of = {c: k for k, c in enumerate(contexts)}
    scored = [[not (s.allowed and s.allowed[k] == [t]) for k, t in enumerate(s.response_ids)] for s in samples]
    # Each sample's feed (its prompt's last token, then its response up to the last scored token), once per
    # distinct (context, feed): responses to one prompt that differ only after their last choice share it.
    feeds: dict[tuple, int] = {}
    feed_of, first = [], []
    for i, (s, flags) in enumerate(zip(samples, scored)):
        n = max([k + 1 for k, yes in enumerate(flags) if yes], default=1)
        key = (row_of.get(tuple(s.prompt_ids[:-1]), -1), s.prompt_ids[-1], *s.response_ids[: n - 1])
        if key not in feeds:
            feeds[key] = len(feeds)
            first.append(i)
        feed_of.append(feeds[key])
    lengths = torch.tensor([len(key) - 1 for key in feeds])  # [F]
    sample_attention = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # [F, R]
    sample_ids = torch.full(sample_attention.shape, pad_id, dtype=torch.long)
    sample_ids[sample_attention] = _longs(t for key in feeds for t in key[1:])
    has_context = torch.tensor([key[0] >= 0 for key in feeds])  # [F]
    prompt_of = torch.tensor([max(key[0], 0) for key in feeds])  # [F]
    # The state at feed position k predicts response token k: one per scored token, row-major over samples.
    where = [(feed_of[i], k) for i, flags in enumerate(scored) for k, yes in enumerate(flags) if yes]
    out = {"prompt_of": prompt_of.to(device), "sample_ids": sample_ids.to(device),
           "sample_attention": sample_attention.long().to(device),
           "sample_positions": (prompt_len[first][:, None] - 1 + torch.arange(sample_attention.shape[1])).to(device),
           "scored": torch.from_numpy(np.fromiter(itertools.chain.from_iterable(scored), dtype=bool)).to(device),
           "scored_at": _longs(itertools.chain.from_iterable(where)).reshape(-1, 2).to(device),
           "prompt_levels": [], "merged": False}
    width = max((len(c) for c in contexts), default=0)
    lengths = torch.tensor([len(c) for c in contexts], dtype=torch.long)  # [D]
    context_mask = torch.arange(width)[None, :] < lengths[:, None]  # [D, W]
    context_ids = torch.full(context_mask.shape, pad_id, dtype=torch.long)
    if contexts:
        context_ids[context_mask] = _longs(itertools.chain.from_iterable(contexts))
    if not contexts:  # 1-token prompts only: the feeds run alone
        out["context_mask"] = torch.zeros((len(feeds), 0), dtype=torch.long, device=device)
        return out
    out["context_mask"] = (context_mask[prompt_of] & has_context[:, None]).long().to(device)  # [F, W]
    marked = context_ids.masked_fill(~context_mask, -1)  # padding differs from every token
    same = (marked[:-1] == marked[1:]).long()  # [D-1, W]
    lcp = same.cumprod(-1).sum(-1)  # [D-1] common prefix of sorted neighbours

    def rows(b: int) -> torch.Tensor:  # [D]: each context's row among the distinct prefixes of length b
        return torch.cat([torch.zeros(1, dtype=torch.long), (lcp < b).long().cumsum(0)])

    ordered = sorted(lcp.tolist())
    cuts = sorted({b for b in ordered if b > 0} | {width})
    best: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}
    for b in cuts:
        h = 1 + bisect.bisect_left(ordered, b)  # 1 + #{k: lcp_k < b}
        best[b] = min((cost + h * (b - a) + LEVEL_COST, levels + (b,)) for a, (cost, levels) in best.items())
    cuts = best[width][1]
    start, previous = 0, None
    for b in cuts[:-1]:
        start, previous = _add_level(out["prompt_levels"], rows(b), previous, context_ids, context_mask, start, b, device)
    last = cuts[-1] - start
    if bool(has_context.all()) and (len(feeds) - len(contexts)) * last <= LEVEL_COST:
        # The feeds run the last level's columns themselves, on the cache of the level before it.
        out["merged"] = True
        out["sample_ids"] = torch.cat([context_ids[prompt_of, start:], sample_ids], 1).to(device)
        out["sample_attention"] = torch.cat([context_mask[prompt_of, start:], sample_attention], 1).long().to(device)
        out["sample_positions"] = torch.cat([torch.arange(start, width).expand(len(feeds), last),
                                             prompt_len[first][:, None] - 1 + torch.arange(sample_attention.shape[1])],
                                            1).to(device)
        out["context_mask"] = out["context_mask"][:, :start]
        out["prompt_of"] = (previous[prompt_of] if previous is not None else torch.zeros_like(prompt_of)).to(device)
        out["scored_at"][:, 1] += last
        return out
    _add_level(out["prompt_levels"], rows(width), previous, context_ids, context_mask, start, width, device)
    return out


def _add_level(levels: list, row: torch.Tensor, previous: torch.Tensor | None, context_ids: torch.Tensor,
               context_mask: torch.Tensor, start: int, b: int, device) -> tuple[int, torch.Tensor]:
    """Append the level of columns [start, b) of the distinct prefixes (``row``: each context's prefix row)."""
    first = torch.cat([torch.ones(1, dtype=torch.bool), row[1:] != row[:-1]]).nonzero().squeeze(-1)  # [H]
    parent = previous[first] if previous is not None else torch.zeros(len(first), dtype=torch.long)
    levels.append((context_ids[first, start:b].to(device), context_mask[first, :b].long().to(device), parent.to(device)))
    return b, row


class _Rows(torch.autograd.Function):
    """``x.index_select(0, rows)`` whose backward makes the incoming gradient contiguous before its
    ``index_add_``: the attention's key and value gradients arrive strided, and ``index_add_`` from a
    strided source falls back to a per-element scatter (3x slower on the scorer's caches). Same sums,
    same order: the gradient is bit-identical."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.count = x.shape[0]
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rows,) = ctx.saved_tensors
        return grad.new_zeros((ctx.count, *grad.shape[1:])).index_add_(0, rows, grad.contiguous()), None


def _select_rows(cache, rows: torch.Tensor) -> None:
    """``cache.batch_select_indices(rows)`` through ``_Rows`` (an index_select), whose backward (an
    index_add) took 2.5x less time than advanced indexing's (an accumulating index_put) on the scorer's caches."""
    for layer in cache.layers:
        layer.keys, layer.values = _Rows.apply(layer.keys, rows), _Rows.apply(layer.values, rows)


def _shared_prompt_states(model, batch: dict[str, torch.Tensor], captured: list, keep_cache: bool = False):
    """Final hidden states [N, H] of the positions predicting the response tokens (row-major), each
    distinct prompt prefix run once (``_prompt_prefix_levels``): each level runs on its parents' KV
    cache, copied to their children, and the samples run on their contexts'. The copies are indices
    into the graph, so every sample's gradient reaches the prefixes it shares. Positions are the
    columns (contexts are left-aligned); masked holes of shorter contexts are never attended. The last
    layer computes outputs at the read positions only (``_last_layer_at``). With ``keep_cache``, also the
    KV cache of the feeds' rows (prefixes and feeds), else None."""
    cache = None
    nothing = batch["scored_at"][:0]
    for ids, mask, parent in batch["prompt_levels"]:
        if cache is not None:
            _select_rows(cache, parent)
        positions = torch.arange(mask.shape[1] - ids.shape[1], mask.shape[1], device=ids.device).expand_as(ids)
        with _last_layer_at(model, nothing):  # a prefix level's states are never read: its keys and values only
            cache = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                          logits_to_keep=1).cache
    attention = batch["sample_attention"]  # [B, R]
    if cache is not None:
        _select_rows(cache, batch["prompt_of"])
    with _last_layer_at(model, batch["scored_at"]) as compact:
        out = model(input_ids=batch["sample_ids"], attention_mask=torch.cat([batch["context_mask"], attention], 1),
                    position_ids=batch["sample_positions"], cache=cache, use_cache=keep_cache or cache is not None,
                    logits_to_keep=1)
    rows, positions = batch["scored_at"].unbind(-1)
    states = captured[-1][:, 0] if compact else captured[-1][rows, positions]  # compact: [M, 1, H] already
    return states, out.cache if keep_cache else None


@contextlib.contextmanager
def _last_layer_at(model, at: torch.Tensor):
    """While open, the model's last decoder layer computes its output only at ``at`` [M, 2] (row,
    position) and returns it as [M, 1, H]; keys and values still at every position (the cache gets
    them all). Yields whether it applies: a Qwen2 layer without sliding window, under sdpa or eager
    attention (the kernels that take a 4D mask; flash-attention's take padding masks). Otherwise the
    model is left as it is and the full output comes back."""
    backbone, _ = backbone_and_head(model)
    layers = getattr(backbone, "layers", None)
    layer = layers[-1] if layers is not None and len(layers) else None
    if not (isinstance(layer, Qwen2DecoderLayer) and layer.self_attn.sliding_window is None
            and layer.self_attn.config._attn_implementation in ("sdpa", "eager")):
        yield False
        return
    layer.forward = functools.partial(_decoder_layer_at, layer, at)
    try:
        yield True
    finally:
        del layer.forward


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of one tensor, x cos + rotate_half(x) sin (transformers' ``apply_rotary_pos_emb``
    rotates queries and keys of one shape together; here the queries are a few rows of the keys')."""
    return x * cos + rotate_half(x) * sin


def _decoder_layer_at(layer, at: torch.Tensor, hidden_states: torch.Tensor, attention_mask=None, position_ids=None,
                      cache=None, use_cache=False, position_embeddings=None, **kwargs) -> torch.Tensor:
    """``Qwen2DecoderLayer.forward`` with queries at ``at`` only (``_last_layer_at``). With n, n' the two
    RMS norms: keys and values of n(x) at every position (into the cache), then at each read position p
    y_p = x_p + o(attention(q(n(x_p)), K, V)) and out_p = y_p + mlp(n'(y_p)). The rows of the other
    positions are never read (the model's last layer), so their attention output and MLP are skipped."""
    attn = layer.self_attn
    batch, length, _ = hidden_states.shape
    h = layer.input_layernorm(hidden_states)  # [B, L, H]
    shape = (batch, length, -1, attn.head_dim)
    cos, sin = (t.expand(batch, length, -1) for t in position_embeddings)  # [B, L, d]
    keys = _rope(attn.k_proj(h).view(shape).transpose(1, 2), cos[:, None], sin[:, None])  # [B, kv heads, L, d]
    values = attn.v_proj(h).view(shape).transpose(1, 2)
    if cache is not None:
        keys, values = cache.update(keys, values, attn.layer_idx)  # [B, kv heads, K, d]
    rows, positions = at.unbind(-1)  # [M]
    if not len(rows):
        return hidden_states[rows, positions][:, None]  # [0, 1, H]
    query = attn.q_proj(h[rows, positions]).view(len(rows), 1, -1, attn.head_dim).transpose(1, 2)  # [M, heads, 1, d]
    query = _rope(query, cos[rows, positions][:, None, None], sin[rows, positions][:, None, None])
    if attention_mask is None:  # plain causal: position p sees the K - L cached columns and itself and before
        span = torch.arange(keys.shape[2], device=keys.device)
        mask = (span <= keys.shape[2] - length + positions[:, None])[:, None, None]  # [M, 1, 1, K]
    else:
        mask = attention_mask.expand(batch, -1, length, -1)[rows, :, positions][:, :, None]  # [M, 1, 1, K]
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)  # sdpa, eager
    out, _ = interface(attn, query, _Rows.apply(keys, rows), _Rows.apply(values, rows), mask,
                       dropout=attn.attention_dropout if attn.training else 0.0, scaling=attn.scaling,
                       sliding_window=None)
    hidden = hidden_states[rows, positions][:, None] + attn.o_proj(out.reshape(len(rows), 1, -1))  # [M, 1, H]
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


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


@contextlib.contextmanager
def _final_states(model):
    """(LM head, list the decoder's final hidden states of each model call are appended to) while open.
    The model itself is called (so DeepSpeed's and peft's hooks on it run) with logits for the last
    position only; the states come from a forward hook on its decoder."""
    backbone, head = backbone_and_head(model)
    captured = []
    hook = backbone.register_forward_hook(lambda module, args, out: captured.append(out[0]))
    try:
        yield head, captured
    finally:
        hook.remove()


def token_logprobs(model, batch: dict[str, torch.Tensor], temperature: float = 1.0, with_entropy: bool = False,
                   top_k: int = 0, top_p: float = 1.0, entropy_grad: bool = True):
    """log pi(y_t | y_<t) of every response token, [B, L-1] (0 elsewhere), and the entropy of pi at
    those positions when asked (without a graph unless ``entropy_grad``).

    pi is softmax(warp(z / T)) with z the logits, masked to the allowed tokens under constrained
    decoding, and warp the sampler's top-k/top-p (``sampling_warpers``): the distribution sampled from.
    """
    where = batch["response_mask"].bool()  # [B, L-1]
    with _final_states(model) as (head, captured):
        if "prompt_of" in batch:
            states, _ = _shared_prompt_states(model, batch, captured)  # [N, H]
        else:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1)
            states = captured[-1][:, :-1][where]  # [N, H]
    targets = batch["input_ids"][:, 1:][where]  # [N]
    allowed = batch.get("allowed")  # [N, V] or None
    scored = batch.get("scored")  # [N]: False where the mask allows only the target (log-prob and entropy 0)
    if scored is not None:  # states come for the scored tokens only
        targets, allowed = targets[scored], allowed[scored] if allowed is not None else None
    warpers = sampling_warpers(top_k, top_p)
    taken, entropies = [], []
    for start in range(0, max(states.shape[0], 1), LOGIT_CHUNK):  # once even with none: the graph stays whole
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
    out = torch.zeros(where.shape, dtype=torch.float32, device=states.device)

    def place(values: torch.Tensor) -> torch.Tensor:  # [N] or [scored] values -> [B, L-1], 0 elsewhere
        if scored is not None:
            values = torch.zeros(scored.shape, dtype=values.dtype, device=values.device).masked_scatter(scored, values)
        return out.masked_scatter(where, values)

    logp = place(torch.cat(taken))
    if not with_entropy:
        return logp, None
    return logp, place(torch.cat(entropies))
