"""The scale path: vLLM rollouts (``rollout=vllm``) and DeepSpeed ZeRO updates (``train.strategy=deepspeed``).

Both import their heavy dependency lazily, so the default single-process CPU path never needs them.
"""
