"""Peak memory of one scoring micro-batch at Qwen2.5's vocabulary: full-vocabulary logits over every
position (the old ``token_logprobs``, kept here as the baseline) vs response-only logits (today's).

The model is a 2-layer Qwen2 with hidden size 64 and Qwen2.5's 151,936-token vocabulary, so the LM
head's logits dominate, as they do at 1.5B with long prompts; prompt 2,048 and response 256 tokens.
Each measurement runs in a fresh process: on CUDA the peak is ``torch.cuda.max_memory_allocated``
above the model and batch, on the CPU the rise of the process's peak RSS (``ru_maxrss``) above its
RSS after building them. Modes: ``logprobs`` (the no-grad old/reference pass), ``entropy`` (the
same with entropy, as logged) and ``train`` (log-probs and entropy with a graph, then backward).

    python -m benchmarks.memory                 # CPU, micro-batch 1
    python -m benchmarks.memory --device cuda --batch 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F

from gigpo.tracking import peak_memory_mb, reset_peak_memory

QWEN_VOCAB = 151_936


def full_vocab_logprobs(model, batch: dict[str, torch.Tensor], temperature: float = 1.0, with_entropy: bool = False):
    """The old ``token_logprobs``: float32 logits, log-softmax (and entropy) at every position for the
    whole vocabulary; ``batch["allowed"]`` is [N, V] over response positions (today's ``pad_batch``)
    and is spread back to the old [B, L-1, V] layout first."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    if "allowed" in batch:
        where = batch["response_mask"].bool()
        allowed = torch.ones((*where.shape, batch["allowed"].shape[-1]), dtype=torch.bool, device=logits.device)
        allowed[where] = batch["allowed"]
        logits = logits.masked_fill(~allowed[..., : logits.shape[-1]], float("-inf"))
    logp = F.log_softmax(logits, dim=-1)
    taken = logp.gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return taken, None
    entropy = -(logp.exp() * logp.clamp(min=-1e30)).nan_to_num().sum(-1)
    return taken, entropy


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(variant: str, mode: str, device: str, batch_size: int, prompt: int, response: int) -> float:
    """Peak MB of one scoring micro-batch above the model and batch (run in a fresh process)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from gigpo.policy.model import Sample, pad_batch, token_logprobs

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = Qwen2Config(vocab_size=QWEN_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=prompt + response,
                         tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config).to(device)
    g = torch.Generator().manual_seed(0)
    samples = [Sample(torch.randint(0, QWEN_VOCAB, (prompt,), generator=g).tolist(),
                      torch.randint(0, QWEN_VOCAB, (response,), generator=g).tolist(), "")
               for _ in range(batch_size)]
    batch = pad_batch(samples, 0, device)
    score = token_logprobs if variant == "response_only" else full_vocab_logprobs
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_memory()  # the high-water mark from here on: imports and model init do not count
        base = rss_mb()
    if mode == "train":
        logp, entropy = score(model, batch, 1.0, True)
        (logp.sum() + entropy.sum()).backward()
    else:
        with torch.no_grad():
            score(model, batch, 1.0, mode == "entropy")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return peak_memory_mb() - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1, help="samples in the micro-batch")
    parser.add_argument("--prompt", type=int, default=2048)
    parser.add_argument("--response", type=int, default=256)
    parser.add_argument("--modes", default="logprobs,entropy,train")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.device, args.batch, args.prompt, args.response)))
        return
    print(f"one scoring micro-batch: {args.batch} x (prompt {args.prompt} + response {args.response}) tokens, "
          f"vocab {QWEN_VOCAB}, hidden 64, {args.device}; peak MB above model and batch")
    print(f"{'mode':10s}{'full_vocab':>14s}{'response_only':>16s}{'ratio':>9s}")
    for mode in args.modes.split(","):
        peaks = {}
        for variant in ("full_vocab", "response_only"):
            out = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", variant, mode,
                                  "--device", args.device, "--batch", str(args.batch), "--prompt", str(args.prompt),
                                  "--response", str(args.response)], capture_output=True, text=True, check=True)
            peaks[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = peaks["full_vocab"] / max(peaks["response_only"], 1e-9)
        print(f"{mode:10s}{peaks['full_vocab']:14.0f}{peaks['response_only']:16.0f}{ratio:8.1f}x")


if __name__ == "__main__":
    main()
