"""Read a GGUF file (llama.cpp's format) of the Qwen2 or Llama architecture.

`load_gguf(path)` returns what a Hugging Face checkpoint folder would give:
- a config dict in `config.json` form (`architectures`, `hidden_size`, ... `rope_theta`),
- a state dict with Hugging Face parameter names (`model.layers.0.self_attn.q_proj.weight`),
  every tensor dequantized (Q4_1, Q8_0, K-quants, F16, ... through `gguf.quants.dequantize`)
  and cast to the requested dtype,
- a `Tokenizer` built from the file's `tokenizer.ggml.*` metadata and its chat template.

The result equals transformers' own GGUF loading (`from_pretrained(dir, gguf_file=...)`), which
the tests check tensor by tensor. Two things llama.cpp's converter does that are undone here:
- Llama-architecture q and k weights have their rows permuted within each head (llama.cpp's
  RoPE rotates adjacent pairs (0,1), (2,3)...; Hugging Face rotates halves (i, i + d/2)). Row
  `h*d + 2i + j` of the file is row `h*d + j*d/2 + i` of the original (j in {0, 1}). Qwen2 files
  are not permuted (llama.cpp runs Qwen2 with the NeoX-style rotation).
- Tied embeddings are not stored twice: no `output.weight` means `tie_word_embeddings`.

The tokenizer: only `tokenizer.ggml.model == "gpt2"` (byte-level BPE, as Qwen2 and SmolLM use).
Tokens are spelled in the byte alphabet in the file, except control tokens, which are added as
special tokens. How text is split before BPE follows `tokenizer.ggml.pre`, the way transformers
reads it: Qwen2's split for the Qwen family, Llama 3's for llama-bpe, and GPT-2's for the rest
(SmolLM's `smollm` included; its vocabulary has no digit merges, so GPT-2's split gives the same
tokens as the individual-digit split of SmolLM's own tokenizer.json).
Not supported: sentencepiece GGUFs (`llama` tokenizer model, e.g. Llama 2), MoE GGUFs, and
Llama 3.1's `rope_freqs` tensor; each raises `UnsupportedArchitectureError`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from model_core.errors import CheckpointError, UnsupportedArchitectureError
from model_core.tokenizer import Tokenizer

# GGUF `general.architecture` -> (Hugging Face architecture, model_type, q/k rows permuted?)
ARCHITECTURES: dict[str, tuple[str, str, bool]] = {
    "llama": ("LlamaForCausalLM", "llama", True),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", False),
}

# Tensor names: GGUF's standard names -> Hugging Face's.
GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")

# `tokenizer.ggml.pre` -> the regex that splits text before byte-level BPE (None: GPT-2's).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    "qwen2": QWEN2_SPLIT,
    "deepseek-r1-qwen": QWEN2_SPLIT,
    "llama3": LLAMA3_SPLIT,
    "llama-v3": LLAMA3_SPLIT,
    "llama-bpe": LLAMA3_SPLIT,
    "smaug-bpe": LLAMA3_SPLIT,
}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types


def load_gguf(
    path: str | Path, dtype: torch.dtype | str = torch.float32
) -> tuple[dict[str, Any], dict[str, torch.Tensor], Tokenizer]:
    """(config dict, state dict with Hugging Face names, tokenizer) from a GGUF file."""
    config, state_dict, _, tokenizer = load_gguf_blocks(path, dtype, keep_blocks=False)
    return config, state_dict, tokenizer


def load_gguf_blocks(path: str | Path, dtype: torch.dtype | str = torch.float32, *, keep_blocks: bool = True):
    """(config, state dict, blocks, tokenizer): with keep_blocks, every quantized 2-D weight stays
    as its raw blocks (`model_core.quantize.GGUFTensor`, memory-mapped from the file) in `blocks`,
    and the state dict holds a meta tensor of its shape in its place (`quantize_model` replaces
    the module); F32 / F16 tensors and biases are dequantized as always."""
    from model_core.quantize import GGUFTensor

    reader = _open(path)
    metadata = _metadata(reader)
    config = gguf_config(metadata, [t.name for t in reader.tensors])
    permute_qk = ARCHITECTURES[metadata["general.architecture"]][2]
    state_dict, blocks = {}, {}
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        heads = None
        if permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
            heads = config["num_attention_heads"]
        elif permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
            heads = config["num_key_value_heads"]
        kind = tensor.tensor_type.name
        if keep_blocks and kind not in ("F32", "F16", "BF16") and len(tensor.shape) == 2:
            raw = tensor.data if heads is None else unpermute_rows(np.asarray(tensor.data), heads)
            shape = (int(tensor.shape[1]), int(tensor.shape[0]))  # GGUF lists (columns, rows)
            blocks[name] = GGUFTensor(raw.reshape(shape[0], -1), kind, shape)
            state_dict[name] = torch.empty(shape, dtype=_dtype(dtype), device="meta")
            continue
        weights = _dequantize(tensor)
        if heads is not None:
            weights = unpermute_rows(weights, heads)
        weights = np.require(weights, requirements=["C", "W"])  # F32 tensors are read-only maps
        state_dict[name] = torch.from_numpy(weights).to(_dtype(dtype))
    _check_complete(state_dict, config, path)
    return config, state_dict, blocks, gguf_tokenizer(metadata)


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """The file's key/value metadata (no tensors read): `general.architecture`, `llama.*`, ..."""
    return _metadata(_open(path))


def gguf_config(metadata: dict[str, Any], tensor_names: list[str]) -> dict[str, Any]:
    """The Hugging Face config.json dict the metadata describes."""
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
        )
    architecture, model_type, _ = ARCHITECTURES[arch]

    def key(name: str, default: Any = None) -> Any:
        return metadata.get(f"{arch}.{name}", default)

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    vocab = key("vocab_size") or len(metadata["tokenizer.ggml.tokens"])
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": int(
            key("attention.key_length") or key("rope.dimension_count") or hidden // heads
        ),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(key),
        "max_position_embeddings": int(key("context_length")),
        "vocab_size": int(vocab),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "hidden_act": "silu",
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
    }
    if model_type == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
    return config


def hf_tensor_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`, and the global ones."""
    if match := _LAYER_NAME.fullmatch(gguf_name):
        layer, part, kind = match.groups()
        if part in LAYER_TENSORS:
            return f"model.layers.{layer}.{LAYER_TENSORS[part]}.{kind}"
    else:
        base, _, kind = gguf_name.rpartition(".")
        if base in GLOBAL_TENSORS:
            return f"{GLOBAL_TENSORS[base]}.{kind}"
    if gguf_name == "rope_freqs.weight" or "_exps." in gguf_name or "_shexp." in gguf_name:
        raise UnsupportedArchitectureError(
            f"GGUF tensor {gguf_name!r} (Llama 3.1 RoPE frequencies or MoE experts) is not supported"
        )
    raise CheckpointError(f"unexpected GGUF tensor {gguf_name!r}")


def unpermute_rows(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order: within each head, rows (2i, 2i+1) go back to (i, i+d/2)."""
    rows = weights.shape[0]
    head_dim = rows // n_heads
    # (heads, d/2, 2, ...) -> (heads, 2, d/2, ...): the pair index becomes the half index
    by_head = weights.reshape(n_heads, head_dim // 2, 2, *weights.shape[1:])
    return by_head.swapaxes(1, 2).reshape(weights.shape)


def gguf_tokenizer(metadata: dict[str, Any]) -> Tokenizer:
    """The byte-level BPE tokenizer described by `tokenizer.ggml.*`, with the chat template."""
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise UnsupportedArchitectureError(
            f"GGUF tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2')"
        )
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    types: list[int] = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    byte_spelling = _byte_spelling()
    vocab = {}
    for index, token in enumerate(tokens):
        spelled = (
            token if set(token) <= alphabet else "".join(byte_spelling[b] for b in token.encode())
        )
        vocab[spelled] = index
    merges = [tuple(merge.split(" ", 1)) for merge in metadata.get("tokenizer.ggml.merges", [])]
    backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = _pre_tokenizer(metadata.get("tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()
    control = [
        t for t, kind in zip(tokens, types, strict=True) if kind == CONTROL and set(t) <= alphabet
    ]
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    user_defined = [
        t for t, kind in zip(tokens, types, strict=True) if kind == USER_DEFINED and t in vocab
    ]
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user_defined])

    def token_at(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}")
        return None if index is None or index >= len(tokens) else tokens[index]

    bos = token_at("bos_token_id")
    if metadata.get("tokenizer.ggml.add_bos_token") and bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    # end of generation: the eos token, and llama.cpp's end-of-turn / end-of-message ones
    eos_ids = [
        metadata[f"tokenizer.ggml.{key}"]
        for key in ("eos_token_id", "eot_token_id", "eom_token_id")
        if metadata.get(f"tokenizer.ggml.{key}") is not None
    ]
    return Tokenizer(
        backend,
        special_tokens={
            "bos_token": bos,
            "eos_token": token_at("eos_token_id"),
            "unk_token": token_at("unknown_token_id"),
            "pad_token": token_at("padding_token_id"),
        },
        chat_template=metadata.get("tokenizer.chat_template"),
        eos_token_ids=eos_ids,
    )


def _pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    split = PRE_TOKENIZER_SPLITS.get(pre or "")
    if split is None:  # GPT-2's own split, inside ByteLevel
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _byte_spelling() -> dict[int, str]:
    """GPT-2's map from each byte to the printable character that spells it in the vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    spelling, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            spelling[byte] = chr(byte)
        else:
            spelling[byte] = chr(256 + extra)
            extra += 1
    return spelling


def _rope_scaling(key) -> dict[str, Any] | None:
    kind = key("rope.scaling.type")
    if kind in (None, "none"):
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "factor": float(key("rope.scaling.factor", 1.0))}
    if key("rope.scaling.original_context_length"):
        scaling["original_max_position_embeddings"] = int(
            key("rope.scaling.original_context_length")
        )
    return scaling


def _open(path: str | Path):
    import gguf

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as exc:
        raise CheckpointError(f"{path}: not a readable GGUF file ({exc})") from exc


def _metadata(reader) -> dict[str, Any]:
    return {name: field.contents() for name, field in reader.fields.items()}


def _dequantize(tensor) -> np.ndarray:
    import gguf

    return gguf.quants.dequantize(tensor.data, tensor.tensor_type)


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise CheckpointError(f"unknown dtype {dtype!r}")
    return resolved


def _check_complete(state_dict: dict[str, torch.Tensor], config: dict[str, Any], path) -> None:
    """Every parameter the model needs is there: nothing is half-loaded silently."""
    expected = ["model.embed_tokens.weight", "model.norm.weight"]
    if not config["tie_word_embeddings"]:
        expected.append("lm_head.weight")
    for layer in range(config["num_hidden_layers"]):
        expected += [f"model.layers.{layer}.{name}.weight" for name in LAYER_TENSORS.values()]
    missing = [name for name in expected if name not in state_dict]
    if missing:
        raise CheckpointError(f"{path}: GGUF lacks {len(missing)} tensors, e.g. {missing[:3]}")
