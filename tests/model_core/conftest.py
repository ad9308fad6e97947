"""Tiny random Qwen2 checkpoints built with transformers' own classes (the numerical reference)."""

from __future__ import annotations

import pytest
import torch

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            rope_theta=1_000_000.0, rms_norm_eps=1e-6)


def build_checkpoint(path, kind: str = "dense", tied: bool = False, seed: int = 0, **overrides):
    """Save a random transformers model (sharded safetensors) and return (path, hf_model)."""
    import transformers

    torch.manual_seed(seed)
    params = {**TINY, **overrides}
    if kind == "moe":
        config = transformers.Qwen2MoeConfig(**params, moe_intermediate_size=32,
                                             shared_expert_intermediate_size=96, num_experts=8,
                                             num_experts_per_tok=2, norm_topk_prob=overrides.get("norm_topk_prob", True),
                                             tie_word_embeddings=tied)
        model = transformers.Qwen2MoeForCausalLM(config)
    elif kind == "llama":
        config = transformers.LlamaConfig(**params, tie_word_embeddings=tied)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen2Config(**params, tie_word_embeddings=tied)
        model = transformers.Qwen2ForCausalLM(config)
    # transformers initialises biases to zero; random biases make the QKV-bias path observable.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    model.eval()
    model.save_pretrained(path, max_shard_size="200KB")
    return path, model


@pytest.fixture(scope="session")
def dense_checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("dense"), "dense", tied=False)


@pytest.fixture(scope="session")
def tied_checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("tied"), "dense", tied=True, seed=1)


@pytest.fixture(scope="session")
def moe_checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("moe"), "moe", seed=2)


@pytest.fixture(scope="session")
def hf_gguf_model():
    """transformers' own GGUF loading of a shipped model by name, each loaded once per session."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to read GGUF
    from model_core.paths import shipped_model_path

    loaded = {}

    def load(name: str):
        if name not in loaded:
            path = shipped_model_path(name)
            loaded[name] = transformers.AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        return loaded[name]

    return load


@pytest.fixture(scope="session")
def hf_default_model(hf_gguf_model):
    """transformers' own GGUF loading of the offline default model (Qwen2.5-Coder-0.5B-Instruct)."""
    from model_core.paths import DEFAULT_MODEL

    return hf_gguf_model(DEFAULT_MODEL)
