"""Model configuration read from a checkpoint's config.json, and the table of known Qwen2 sizes.

One frozen dataclass covers dense Qwen2, Qwen2-MoE and Llama (Qwen2 without QKV bias). It reads
both the classic keys (`rope_theta`, `rope_scaling`) that real checkpoints carry and the
`rope_parameters` block that transformers 5 writes. `dual_chunk_attention_config` is parsed and
kept for the long-context code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_core.errors import CheckpointError, UnsupportedArchitectureError

ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen2MoeForCausalLM", "LlamaForCausalLM")
_MODEL_TYPES = {"qwen2": "Qwen2ForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM", "llama": "LlamaForCausalLM"}


@dataclass(frozen=True)
class ModelConfig:
    architecture: str = "Qwen2ForCausalLM"
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    head_dim: int = 64
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True
    attention_bias: bool = True  # Qwen2's QKV bias; False for Llama
    hidden_act: str = "silu"
    rope_scaling: dict[str, Any] | None = None
    dual_chunk_attention_config: dict[str, Any] | None = None
    # Mixture of experts (Qwen2MoeForCausalLM); num_experts == 0 means dense.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_sparse_layer(self, layer_idx: int) -> bool:
        return (
            self.is_moe
            and layer_idx not in self.mlp_only_layers
            and (layer_idx + 1) % self.decoder_sparse_step == 0
        )

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        architecture = _architecture(raw)
        hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
        rope_theta, rope_scaling = _rope(raw)
        if architecture == "LlamaForCausalLM":
            bias = bool(raw.get("attention_bias", False))
        else:
            bias = bool(raw.get("qkv_bias", True))
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            architecture=architecture,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=bias,
            hidden_act=str(raw.get("hidden_act", "silu")),
            rope_scaling=rope_scaling,
            dual_chunk_attention_config=raw.get("dual_chunk_attention_config"),
            num_experts=int(raw.get("num_experts", 0) or 0),
            num_experts_per_tok=int(raw.get("num_experts_per_tok", 0) or 0),
            moe_intermediate_size=int(raw.get("moe_intermediate_size", 0) or 0),
            shared_expert_intermediate_size=int(raw.get("shared_expert_intermediate_size", 0) or 0),
            norm_topk_prob=bool(raw.get("norm_topk_prob", False)),
            decoder_sparse_step=int(raw.get("decoder_sparse_step", 1) or 1),
            mlp_only_layers=tuple(raw.get("mlp_only_layers") or ()),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        config_path = Path(path) / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{path}: no config.json (is this a Hugging Face checkpoint folder?)")
        try:
            raw = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from exc
        try:
            return cls.from_dict(raw)
        except KeyError as exc:
            raise CheckpointError(f"{config_path}: missing key {exc}") from exc


def _architecture(raw: dict[str, Any]) -> str:
    names = raw.get("architectures") or [_MODEL_TYPES.get(raw.get("model_type", ""), "")]
    for name in names:
        if name in ARCHITECTURES:
            return name
    raise UnsupportedArchitectureError(
        f"unsupported architecture {names or raw.get('model_type')!r}; supported: {', '.join(ARCHITECTURES)}"
    )


def _rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either the classic keys or transformers 5's rope_parameters."""
    params = raw.get("rope_parameters") or {}
    theta = float(raw.get("rope_theta") or params.get("rope_theta") or 10000.0)
    scaling = raw.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling:
        scaling = dict(scaling)
        kind = scaling.pop("type", None) or scaling.pop("rope_type", None) or "default"
        scaling["rope_type"] = kind
        if kind == "default":
            return theta, None
        return theta, scaling
    return theta, None


# The published Qwen2 sizes (Qwen2 Technical Report, Table 1; the checkpoints' config.json).
_QWEN2_COMMON = dict(architecture="Qwen2ForCausalLM", rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                     max_position_embeddings=32768, attention_bias=True, eos_token_ids=(151643, 151645))
KNOWN_SIZES: dict[str, ModelConfig] = {
    "0.5B": ModelConfig(**_QWEN2_COMMON, vocab_size=151936, hidden_size=896, intermediate_size=4864,
                        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                        head_dim=64, tie_word_embeddings=True),
    "1.5B": ModelConfig(**_QWEN2_COMMON, vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                        head_dim=128, tie_word_embeddings=True),
    "7B": ModelConfig(**_QWEN2_COMMON, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                      num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                      head_dim=128, tie_word_embeddings=False),
    "72B": ModelConfig(**_QWEN2_COMMON, vocab_size=152064, hidden_size=8192, intermediate_size=29568,
                       num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                       head_dim=128, tie_word_embeddings=False),
    "57B-A14B": ModelConfig(**{**_QWEN2_COMMON, "architecture": "Qwen2MoeForCausalLM"},
                            vocab_size=151936, hidden_size=3584, intermediate_size=18944,
                            num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                            head_dim=128, tie_word_embeddings=False, num_experts=64,
                            num_experts_per_tok=8, moe_intermediate_size=2560,
                            shared_expert_intermediate_size=20480, norm_topk_prob=False),
}
