"""Long-context modes through load_engine and the Engine, as the CLI and the passkey experiment use them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from model_core import SamplingParams, load_engine
from model_core.long_context import LongContextError
from model_core.model import forward_full

DCA_SMALL = {"chunk_size": 16, "local_size": 4}  # chunk_len 12: a 40-token prompt spans four chunks


def random_prompt(length: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_dca_through_load_engine_sets_mode_sizes_and_window(dense_checkpoint):
    engine = load_engine(
        dense_checkpoint[0], long_context="dca", long_context_options={**DCA_SMALL, "factor": None}
    )  # CLI passes unset flags as None
    assert engine.runtime.mode == "dca"
    assert engine.runtime.mode_options == {**DCA_SMALL, "original_max_position_embeddings": 512}
    assert engine.window == 131072 and engine.config.max_position_embeddings == 131072


def test_dca_defaults_follow_chunkllama_for_the_trained_length(dense_checkpoint):
    engine = load_engine(
        dense_checkpoint[0], long_context="dca", long_context_options={"window": 4096}
    )
    assert engine.runtime.mode_options == {
        "chunk_size": 384,
        "local_size": 32,
        "original_max_position_embeddings": 512,
    }
    assert engine.window == 4096


def test_dual_chunk_attention_config_in_config_json_turns_dca_on(dense_checkpoint, tmp_path):
    path = tmp_path / "dca"
    shutil.copytree(dense_checkpoint[0], path)
    raw = json.loads((path / "config.json").read_text())
    raw["dual_chunk_attention_config"] = {
        "chunk_size": 64,
        "local_size": 8,
        "original_max_position_embeddings": 256,
    }
    (path / "config.json").write_text(json.dumps(raw))
    engine = load_engine(path)
    assert engine.runtime.mode == "dca"
    assert engine.runtime.mode_options == raw["dual_chunk_attention_config"]
    engine = load_engine(path, long_context="dca", long_context_options={"local_size": 16})
    assert (
        engine.runtime.mode_options["local_size"] == 16
        and engine.runtime.mode_options["chunk_size"] == 64
    )


@pytest.mark.parametrize(
    "mode,options,message",
    [
        ("rope", {}, "unknown long-context mode"),
        ("dca", {"chunk_size": 8, "local_size": 8}, "local_size < chunk_size"),
        ("dca", {"factor": 2.0}, "do not apply"),
        ("yarn", {"chunk_size": 64}, "do not apply"),
        ("yarn", {"factor": 0.5}, "at least 1"),
    ],
)
def test_bad_long_context_settings_are_user_errors(dense_checkpoint, mode, options, message):
    with pytest.raises(LongContextError, match=message) as info:
        load_engine(dense_checkpoint[0], long_context=mode, long_context_options=options)
    assert info.value.user_error


def test_dca_changes_nothing_within_the_trained_length(dense_checkpoint):
    prompt = random_prompt(100, seed=1)
    params = SamplingParams(max_new_tokens=8)
    plain = load_engine(dense_checkpoint[0]).generate([prompt], params)[0]
    dca = load_engine(dense_checkpoint[0], long_context="dca").generate([prompt], params)[0]
    assert dca.token_ids == plain.token_ids


def test_dca_engine_prefill_then_decode_equals_one_full_forward(dense_checkpoint):
    engine = load_engine(
        dense_checkpoint[0], long_context="dca", long_context_options=DCA_SMALL, prefill_chunk=7
    )
    prompt = random_prompt(40, seed=2)
    out = engine.generate([prompt], SamplingParams(max_new_tokens=10))[0]
    with torch.no_grad():
        full = forward_full(
            engine.model,
            torch.tensor([prompt + out.token_ids]),
            backend="eager",
            mode="dca",
            mode_options=engine.runtime.mode_options,
        )[0]
    assert out.token_ids == full[len(prompt) - 1 : -1].argmax(-1).tolist()


def test_dca_with_temperature_chunked_prefill_equals_one_shot(dense_checkpoint):
    options = {**DCA_SMALL, "original_max_position_embeddings": 4}  # s = 1.23 at position 39
    prompt = random_prompt(40, seed=3)
    params = SamplingParams(max_new_tokens=6)
    one_shot = load_engine(
        dense_checkpoint[0], long_context="dca", long_context_options=options, prefill_chunk=64
    )
    chunked = load_engine(
        dense_checkpoint[0], long_context="dca", long_context_options=options, prefill_chunk=5
    )
    first = one_shot.generate([prompt], params)[0].token_ids
    assert chunked.generate([prompt], params)[0].token_ids == first
    ids = torch.tensor([prompt])
    with torch.no_grad():  # and the temperature is really applied
        hot = forward_full(
            one_shot.model, ids, mode="dca", mode_options=one_shot.runtime.mode_options
        )
        cold = forward_full(
            one_shot.model,
            ids,
            mode="dca",
            mode_options={**options, "original_max_position_embeddings": 0},
        )
    assert (hot - cold).abs().max().item() > 1e-3


def test_batched_dca_generation_equals_each_prompt_alone(dense_checkpoint):
    engine = load_engine(
        dense_checkpoint[0], long_context="dca", long_context_options=DCA_SMALL, prefill_chunk=9
    )
    prompts = [random_prompt(n, seed=n) for n in (5, 30, 47)]  # rows in chunks 0, 2 and 3
    params = SamplingParams(max_new_tokens=8)
    batched = engine.generate(prompts, params)
    for prompt, together in zip(prompts, batched, strict=True):
        assert together.token_ids == engine.generate([prompt], params)[0].token_ids, (
            f"prompt of {len(prompt)} tokens differs in a batch"
        )


def test_plain_rope_window_can_be_widened_for_extrapolation_experiments(dense_checkpoint):
    engine = load_engine(
        dense_checkpoint[0], long_context="none", long_context_options={"window": 2048}
    )
    assert engine.runtime.mode == "plain" and engine.window == 2048
    assert engine.config.rope_scaling is None
