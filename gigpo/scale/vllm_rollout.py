"""Rollouts through vLLM's offline engine (``rollout=vllm``), a drop-in for ``gigpo.policy.model.generate``.

``VLLMRollout(cfg, policy, tokenizer, optimizer).generate`` has ``generate``'s signature and returns
the same ``Sample`` objects (plus vLLM's log-prob of every sampled token, for diagnostics: the loss
still recomputes old log-probs with the policy, so engine/trainer numerics never enter the ratio).

Weight sync: after every optimizer step the engine is marked stale (an optimizer step hook), and the
next ``generate`` pushes the policy's weights (LoRA folded in) into the running engine. Assumption,
for vLLM 0.32 (V1 engine, model in a worker process): ``LLM.collective_rpc(fn, args=...)`` runs
``fn(worker, *args)`` in each worker and the worker's model is ``worker.model_runner.model`` with
vLLM's ``load_weights(weights=[(hf_name, tensor), ...])`` (as TRL's vllm_serve does); shipping a
function needs ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``, set here. The weights travel pickled through
the RPC queue: fine for 1.5B, slow (seconds per sync) for 7B; a CUDA-IPC or NCCL path is the upgrade.

Unsupported: constrained decoding (``model.constrained=true``), tensor parallelism (one engine, one GPU).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Iterator

import torch

from gigpo.policy.model import Sample

INSTALL = "rollout=vllm needs vLLM (GPU only): pip install -c constraints-gpu.txt -e '.[gpu]'"


@dataclass
class VLLMSample(Sample):
    logprobs: list[float] = field(default_factory=list)
    """vLLM's log-prob of each response token (NaN for an EOS vLLM stopped on but did not return)."""


def merged_weights(policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF checkpoint name, tensor) of every weight, with LoRA adapters folded in (W + s * B A) and
    the policy left untouched (no merge/unmerge round trip drifting bf16 weights)."""
    if not hasattr(policy, "get_base_model"):  # a plain transformers model
        yield from ((n, p.detach()) for n, p in policy.named_parameters())
        return
    from peft.tuners.lora import LoraLayer

    base = policy.get_base_model()
    deltas = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
            deltas[f"{name}.weight"] = weight.detach() + delta.to(weight.dtype)
    for name, p in base.named_parameters():
        if "lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        yield name, deltas.get(name, p.detach())


def _load_weights(worker, weights) -> None:
    """Runs inside each vLLM worker (see the module docstring for the assumption)."""
    worker.model_runner.model.load_weights(weights=weights)


class VLLMRollout:
    """A vLLM engine mirroring the policy; ``generate`` is a drop-in for gigpo.policy.model.generate."""

    def __init__(self, cfg, policy, tokenizer, optimizer: torch.optim.Optimizer | None = None):
        if cfg.model.constrained:
            raise ValueError("model.constrained=true is not supported with rollout=vllm (the action prefix tree "
                             "needs a per-step logits processor); set model.constrained=false or rollout=hf")
        try:
            import vllm
        except ImportError as err:
            raise ImportError(INSTALL) from err
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc ships _load_weights
        self._export_dir = None
        if cfg.model.name == "hf" and cfg.model.lora_rank == 0:
            path = cfg.model.path  # weights equal the checkpoint's until the first update
        else:  # tiny random init, or LoRA: start from the policy's own weights
            self._export_dir = tempfile.TemporaryDirectory(prefix="gigpo_vllm_")
            path = self._export_dir.name
            _export(policy, tokenizer, path)
        self.llm = vllm.LLM(model=path, tokenizer=path, dtype=cfg.model.dtype, seed=cfg.train.seed,
                            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                            max_model_len=cfg.model.max_prompt_tokens + cfg.model.max_response_tokens,
                            enable_prefix_caching=True, enforce_eager=cfg.model.name == "tiny")
        self.stale = False
        if optimizer is not None:
            optimizer.register_step_post_hook(lambda *_: self.mark_stale())

    def mark_stale(self) -> None:
        self.stale = True

    @torch.no_grad()
    def sync(self, policy) -> None:
        """Push the policy's current weights into the engine and drop its (now wrong) prefix cache."""
        weights = [(name, tensor.to("cpu", copy=True)) for name, tensor in merged_weights(policy)]
        self.llm.collective_rpc(_load_weights, args=(weights,))
        self.llm.reset_prefix_cache()
        self.stale = False

    def generate(self, model, tokenizer, prompts: list[str], cfg, temperature: float,
                 admissible: list[list[str]] | None = None) -> list[VLLMSample]:
        """Sample one response per prompt (greedy when temperature == 0), as gigpo.policy.model.generate."""
        from vllm import SamplingParams

        if admissible is not None:
            raise ValueError("constrained decoding (model.constrained=true) is not supported with rollout=vllm")
        if self.stale:
            self.sync(model)
        tokenizer.truncation_side = "left"  # the same prompt ids as the HF path
        prompt_ids = tokenizer(prompts, truncation=True, max_length=cfg.max_prompt_tokens,
                               add_special_tokens=False)["input_ids"]
        eos = tokenizer.eos_token_id
        params = SamplingParams(temperature=temperature, top_p=cfg.top_p if temperature > 0 else 1.0,
                                max_tokens=cfg.max_response_tokens, logprobs=0, stop_token_ids=[eos])
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        samples = []
        for ids, output in zip(prompt_ids, outputs):
            completion = output.outputs[0]
            response = list(completion.token_ids)
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs or [], response)]
            if eos in response:
                cut = response.index(eos) + 1
                response, logprobs = response[:cut], logprobs[:cut]
            elif completion.finish_reason == "stop":  # stopped on EOS without returning it
                response.append(eos)
                logprobs.append(float("nan"))
            if not response:
                response, logprobs = [eos], [float("nan")]
            text = tokenizer.decode([t for t in response if t != eos], skip_special_tokens=False)
            samples.append(VLLMSample(list(ids), response, text, None, logprobs))
        return samples


def _export(policy, tokenizer, path: str) -> None:
    """Save the policy (LoRA folded in) and tokenizer as a plain transformers checkpoint for vLLM."""
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    state = {name: tensor.to("cpu", copy=True) for name, tensor in merged_weights(policy)}
    base.save_pretrained(path, state_dict=state)
    tokenizer.save_pretrained(path)
