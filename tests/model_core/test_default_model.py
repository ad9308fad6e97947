"""The offline default model (Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M) end to end, as a user
meets it: loaded quantized (the default), and in float32 for parity with transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from model_core import SamplingParams, load_engine
from model_core.model import forward_full


@pytest.fixture(scope="module")
def engine():
    return load_engine()  # quantized: the file's blocks kept (model_core.quantize)


def test_default_engine_keeps_weights_quantized(engine):
    from model_core.quantize import QuantizedEmbedding, QuantizedLinear

    model = engine.model
    assert isinstance(model.model.embed_tokens, QuantizedEmbedding)
    assert isinstance(model.lm_head, QuantizedLinear)
    assert all(isinstance(layer.mlp.down_proj, QuantizedLinear) for layer in model.model.layers)
    assert not [name for name, p in model.named_parameters() if p.dim() == 2], "a float matrix is left"


def test_logits_match_transformers_gguf_loading(hf_default_model):
    """On the float32 dequantized weights (quantize='none'): within 1e-3 of transformers."""
    hf = hf_default_model
    reference_engine = load_engine(quantize="none")
    ids = torch.tensor([reference_engine.tokenizer.encode("The Eiffel Tower was completed in 1889. It stands in Paris.")])
    with torch.no_grad():
        ours = forward_full(reference_engine.model, ids)
        theirs = hf(ids).logits
    err = (ours - theirs).abs().max().item()
    assert err < 1e-3, f"max abs logit difference {err:.2e} against transformers' GGUF loading"
    assert torch.equal(ours[0, -1].argmax(), theirs[0, -1].argmax())


def test_answers_a_question_about_a_text(engine):
    messages = [{"role": "system", "content": "Answer the question using the given text."},
                {"role": "user", "content": "Text: The Eiffel Tower was completed in 1889.\n\n"
                                            "Question: When was the tower completed?"}]
    answer = engine.chat(messages, params=SamplingParams(max_new_tokens=40))
    assert "1889" in answer.text, answer.text
    assert answer.finish_reason == "stop"


def test_streamed_text_equals_final_text_and_stops_at_stop_string(engine):
    prompt = engine.tokenizer.encode(engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write one sentence about the sea."}]))
    # Both runs below find the prompt's first block in the prefix cache: a cold prefill attends in
    # one causal pass, a cached prefix's tail in two merged by LSE, and the last bits of float
    # rounding may tip a greedy near-tie ("a vast, open area" / "a vast, unforgiving landscape").
    engine.generate([prompt], SamplingParams(max_new_tokens=1))
    free = engine.generate([prompt], SamplingParams(max_new_tokens=24))[0].text
    stop = free[len(free) // 2 : len(free) // 2 + 3]  # a stop string taken from the free answer
    pieces: list[str] = []
    result = engine.generate([prompt], SamplingParams(max_new_tokens=24, stop=[stop]),
                             on_text=lambda _row, piece: pieces.append(piece))[0]
    assert result.finish_reason == "stop"
    assert result.text == free[: free.index(stop)], (free, stop, result.text)
    assert "".join(pieces) == result.text


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longctx.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_generate_json_prints_new_token_ids_and_text(engine):
    ids = ",".join(map(str, engine.tokenizer.encode("The capital of France is")))
    done = run_cli("generate", "--prompt-ids", ids, "--max-new-tokens", "6", "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    expected = engine.generate([[int(i) for i in ids.split(",")]], SamplingParams(max_new_tokens=6))[0]
    assert printed["token_ids"] == expected.token_ids
    assert printed["text"] == expected.text


@pytest.mark.parametrize("args, message", [
    (("--prompt", "hi", "--temperature", "-1"), "temperature"),
    (("--prompt", "hi", "--model", "/no/such/checkpoint"), "no such file"),
    (("--prompt-ids", "1,x"), "comma-separated integers"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    done = run_cli("generate", *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_cli_chat_answers_each_turn_until_an_empty_line():
    done = subprocess.run(
        [sys.executable, "-m", "longctx.cli", "chat", "--max-new-tokens", "30",
         "--system", "Answer using the given text."],
        input="Text: The Eiffel Tower was completed in 1889. When was the tower completed?\n\n",
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("model> ") == 1 and "1889" in done.stdout, done.stdout
