"""``python -m gigpo.export``: a trained run's policy as a plain transformers folder (LoRA merged),
loaded back without peft, with the logits of the policy in the checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["env.groups=2", "algo.group_size=4", "env.val_episodes=2", "train.val_every=10", "train.mini_batch_size=32",
        "train.iterations=1", "logger=none"]
TEXT = "task: push the box <action>up</action> left"

# Runs in a fresh interpreter where importing peft fails (transformers then sees no peft): the
# folder must load with AutoModelForCausalLM/AutoTokenizer alone. Writes ids and logits to argv[2].
LOAD_WITHOUT_PEFT = """
import sys, torch
sys.modules["peft"] = None
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, out, text = sys.argv[1], sys.argv[2], sys.argv[3]
tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(ids).logits
torch.save({"ids": ids, "logits": logits, "class": type(model).__name__, "eos": tokenizer.eos_token_id}, out)
"""


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def train_and_export(tmp: Path, overrides: list[str]) -> tuple[Path, Path]:
    run_dir, out_dir = tmp / "run", tmp / "export"
    trained = run([str(ROOT / "run.py"), *TINY, *overrides, f"run_dir={run_dir}"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    exported = run(["-m", "gigpo.export", str(run_dir), str(out_dir)])
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "at iteration 1" in exported.stdout
    return run_dir, out_dir


def reload_without_peft(out_dir: Path, tmp: Path) -> dict:
    result = run(["-c", LOAD_WITHOUT_PEFT, str(out_dir), str(tmp / "reloaded.pt"), TEXT])
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp / "reloaded.pt", weights_only=True)


def policy_logits(run_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from gigpo.export import load_policy

    policy, tokenizer, _, _ = load_policy(run_dir)
    assert tokenizer(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"].equal(ids)  # same tokenizer
    with torch.no_grad():
        return policy(ids).logits


def assert_vllm_loadable(out_dir: Path, architecture: str) -> None:
    """What vLLM reads from a model folder (vllm/model_executor/model_loader/default_loader.py globs
    ``*.safetensors``; the registry maps config.json's ``architectures``; ``load_weights`` takes HF names)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((out_dir / "config.json").read_text())
    assert config["architectures"] == [architecture] and config["model_type"] == "qwen2"
    assert config["max_position_embeddings"] > 0 and config["dtype"] == "float32"
    assert sorted(p.name for p in out_dir.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(out_dir.glob("*.bin")) and not (out_dir / "adapter_config.json").exists()
    with safe_open(out_dir / "model.safetensors", "pt") as f:
        names = set(f.keys())
    plain = set(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out_dir)).state_dict())
    assert names <= plain and plain - names <= {"lm_head.weight"}  # tied head: stored once
    assert not any("lora_" in n or n.startswith("base_model.") for n in names)
    assert (out_dir / "tokenizer.json").exists() and (out_dir / "generation_config.json").exists()


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    return (tmp, *train_and_export(tmp, []))


def test_export_of_a_tiny_run_reloads_with_identical_logits(tiny_export):
    tmp, run_dir, out_dir = tiny_export
    reloaded = reload_without_peft(out_dir, tmp)
    assert reloaded["class"] == "Qwen2ForCausalLM"
    # Same weights, same class, same input: bitwise equal logits.
    assert torch.equal(reloaded["logits"], policy_logits(run_dir, reloaded["ids"]))
    assert_vllm_loadable(out_dir, "Qwen2ForCausalLM")

    manifest = json.loads((out_dir / "gigpo_export.json").read_text())
    provenance = json.loads((run_dir / "provenance.json").read_text())
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert manifest["iteration"] == last["iteration"] == 1 and manifest["lora_merged"] is False
    assert manifest["config_sha256"] == provenance["config_sha256"] and manifest["run_dir"] == str(run_dir)
    assert json.loads((out_dir / "generation_config.json").read_text())["eos_token_id"] == reloaded["eos"]


def test_export_refuses_a_non_empty_out_dir_and_a_run_without_checkpoint(tiny_export, tmp_path):
    _, run_dir, out_dir = tiny_export
    again = run(["-m", "gigpo.export", str(run_dir), str(out_dir)])
    assert again.returncode != 0 and f"{out_dir} already exists" in again.stderr
    missing = run(["-m", "gigpo.export", str(tmp_path), str(tmp_path / "out")])
    assert missing.returncode != 0 and "checkpoints/last.pt does not exist" in missing.stderr
    assert not (tmp_path / "out").exists()


def test_export_of_a_lora_run_on_an_hf_checkpoint_merges_the_adapter(tmp_path):
    """model=hf (a local tiny Qwen2 with its own tokenizer) + LoRA: the export holds W + s * B A,
    loads without peft, and its logits equal the adapter model's to float32 rounding."""
    from gigpo.config import ModelConfig
    from gigpo.policy.model import build_tiny
    from gigpo.policy.tokenizer import build_tokenizer
    from gigpo.scale.vllm_rollout import merged_weights

    tokenizer = build_tokenizer([TEXT + " right down box wall"] * 50, 300)
    torch.manual_seed(0)
    source = tmp_path / "source"
    build_tiny(ModelConfig(), tokenizer).save_pretrained(source)
    tokenizer.save_pretrained(source)
    run_dir, out_dir = train_and_export(tmp_path, ["model=hf", f"model.path={source}", "model.dtype=float32",
                                                   "model.max_response_tokens=8", "model.lora_rank=4", "train.lr=0.05"])
    reloaded = reload_without_peft(out_dir, tmp_path)
    # (W + s B A) x and W x + s B (A x) round differently: equal to float32 rounding, not bitwise.
    torch.testing.assert_close(reloaded["logits"], policy_logits(run_dir, reloaded["ids"]), rtol=1e-5, atol=1e-5)
    assert_vllm_loadable(out_dir, "Qwen2ForCausalLM")

    from gigpo.export import load_policy
    from safetensors.torch import load_file

    policy, _, _, _ = load_policy(run_dir)
    exported = load_file(out_dir / "model.safetensors")
    base = load_file(source / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(exported[name], base[name])  # the adapter trained and is folded in
    for key, weight in merged_weights(policy):  # the file holds the vLLM weight sync's fold exactly
        torch.testing.assert_close(exported[key], weight, rtol=1e-6, atol=1e-6)
    assert json.loads((out_dir / "gigpo_export.json").read_text())["lora_merged"] is True
    assert (json.loads((out_dir / "tokenizer_config.json").read_text())["eos_token"]
            == json.loads((source / "tokenizer_config.json").read_text())["eos_token"])

    source.rename(tmp_path / "moved")
    gone = run(["-m", "gigpo.export", str(run_dir), str(tmp_path / "again")])
    assert gone.returncode != 0 and f"model.path={source} (the source checkpoint" in gone.stderr
