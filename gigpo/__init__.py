"""gigpo: a research harness for GiGPO / GRPO / RLOO training of LLM agents (arXiv 2505.10978)."""

__version__ = "0.1.0"
