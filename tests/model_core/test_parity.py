"""Our Qwen2 against transformers' on the same saved files: logits and greedy generation."""

from __future__ import annotations

import json

import pytest
import torch

from model_core.loading import load_model
from model_core.model import forward_full

CHECKPOINTS = ["dense_checkpoint", "tied_checkpoint", "moe_checkpoint"]


@pytest.mark.parametrize("fixture", CHECKPOINTS)
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_logits_match_transformers(fixture, backend, request):
    path, hf_model = request.getfixturevalue(fixture)
    model, config, _ = load_model(path)
    ids = torch.randint(0, config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = forward_full(model, ids, backend=backend)
        theirs = hf_model(ids).logits
    err = (ours - theirs).abs().max().item()
    assert err < 1e-4, f"max abs logit difference {err:.2e} on {fixture} ({backend})"


def test_sharded_checkpoint_is_really_sharded(dense_checkpoint):
    path, _ = dense_checkpoint
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1


def test_llama_checkpoint_runs_without_qkv_bias(tmp_path):
    from tests.model_core.conftest import build_checkpoint

    path, hf_model = build_checkpoint(tmp_path, "llama", seed=5)
    model, config, _ = load_model(path)
    assert not config.attention_bias
    ids = torch.arange(30)[None] % config.vocab_size
    with torch.no_grad():
        err = (forward_full(model, ids) - hf_model(ids).logits).abs().max().item()
    assert err < 1e-4, f"llama max abs logit difference {err:.2e}"
