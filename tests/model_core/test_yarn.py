"""YaRN: our inverse frequencies and attention factor equal transformers', and so do the logits."""

from __future__ import annotations

import math

import pytest
import torch

from model_core import load_engine
from model_core.config import KNOWN_SIZES
from model_core.loading import load_model
from model_core.model import forward_full
from model_core.rope import default_inv_freq, rope_for
from tests.model_core.conftest import build_checkpoint

QWEN2_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}


def transformers_yarn(size: str, rope_scaling: dict):
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ours = KNOWN_SIZES[size]
    config = transformers.Qwen2Config(
        hidden_size=ours.hidden_size,
        num_attention_heads=ours.num_attention_heads,
        num_key_value_heads=ours.num_key_value_heads,
        rope_theta=ours.rope_theta,
        max_position_embeddings=ours.max_position_embeddings,
        rope_scaling={**rope_scaling, "type": rope_scaling["rope_type"]},
    )
    return ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")


@pytest.mark.parametrize("size", ["7B", "0.5B"])
@pytest.mark.parametrize("extra", [{}, {"beta_fast": 16, "beta_slow": 2}, {"truncate": False}])
def test_yarn_tables_equal_transformers(size, extra):
    scaling = {**QWEN2_YARN, **extra}
    inv_freq, factor = rope_for(KNOWN_SIZES[size].replace(rope_scaling=scaling))
    their_inv_freq, their_factor = transformers_yarn(size, scaling)
    assert factor == pytest.approx(their_factor, abs=1e-12)
    assert torch.equal(inv_freq, their_inv_freq), (
        f"max difference {(inv_freq - their_inv_freq).abs().max():.2e}"
    )


def test_qwen2_7b_yarn_numbers():
    config = KNOWN_SIZES["7B"].replace(rope_scaling=QWEN2_YARN)
    inv_freq, factor = rope_for(config)
    base, _ = default_inv_freq(config)
    assert factor == pytest.approx(0.1 * math.log(4) + 1) and round(factor, 4) == 1.1386
    ratio = base / inv_freq
    assert torch.allclose(ratio[:24], torch.ones(24)), "dims 0-23 keep the original frequency"
    assert torch.allclose(ratio[40:], torch.full((24,), 4.0)), (
        "dims 40-63 are divided by the factor"
    )
    assert ratio[31].item() == pytest.approx(1.5455, abs=1e-4)


@pytest.fixture(scope="module")
def yarn_checkpoint(tmp_path_factory):
    scaling = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    return build_checkpoint(
        tmp_path_factory.mktemp("yarn"),
        "dense",
        seed=7,
        max_position_embeddings=128,
        rope_scaling=scaling,
    )


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_yarn_checkpoint_logits_match_transformers_past_the_original_length(
    yarn_checkpoint, backend
):
    path, hf_model = yarn_checkpoint
    model, config, _ = load_model(path)
    assert config.rope_scaling["rope_type"] == "yarn"
    ids = torch.randint(
        0, config.vocab_size, (1, 100), generator=torch.Generator().manual_seed(1)
    )  # > 32
    with torch.no_grad():
        err = (forward_full(model, ids, backend=backend) - hf_model(ids).logits).abs().max().item()
    assert err < 1e-4, f"max abs logit difference {err:.2e} with YaRN ({backend})"


def test_yarn_checkpoint_window_is_factor_times_original(yarn_checkpoint):
    engine = load_engine(yarn_checkpoint[0])
    assert engine.window == 128 and engine.config.max_position_embeddings == 128


def test_long_context_yarn_at_run_time_equals_a_yarn_checkpoint(yarn_checkpoint, dense_checkpoint):
    """`--long-context yarn` on a plain checkpoint gives transformers' YaRN model on the same weights."""
    import transformers

    path, hf_plain = dense_checkpoint  # trained length 512 (TINY)
    engine = load_engine(
        path, long_context="yarn", long_context_options={"factor": 4.0, "chunk_size": None}
    )
    assert engine.window == 2048 and engine.config.rope_scaling["factor"] == 4.0
    config = transformers.Qwen2Config(
        **{
            **hf_plain.config.to_dict(),
            "rope_scaling": {
                "type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 512,
                "rope_theta": 1e6,
            },
        }
    )
    hf_yarn = transformers.Qwen2ForCausalLM(config)
    hf_yarn.load_state_dict(hf_plain.state_dict())
    hf_yarn.eval()
    ids = torch.randint(0, 256, (1, 600), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        err = (forward_full(engine.model, ids) - hf_yarn(ids).logits).abs().max().item()
    assert err < 1e-4, f"max abs logit difference {err:.2e} for run-time YaRN"


def test_default_yarn_factor_reaches_128k_from_32k():
    from model_core.engine import RuntimeOptions
    from model_core.long_context import configure

    class Stub:
        def reset_rope(self):
            pass

    _, config, runtime, window = configure(Stub(), KNOWN_SIZES["7B"], RuntimeOptions(), "yarn", {})
    assert config.rope_scaling == QWEN2_YARN and window == 131072 and runtime.mode == "plain"
