"""Rotary position embeddings: a registry of inverse-frequency functions and the rotation itself.

`ROPE[rope_type](config) -> (inv_freq, attention_factor)`; every variant has that signature
(transformers' modeling_rope_utils convention). `attention_factor` multiplies cos and sin, so the
q·k logits scale by its square, as in transformers. Long-context variants (YaRN) register here too.
Positions are turned into cos/sin on the fly (no 128K table): `cos_sin(inv_freq, positions)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from model_core.config import ModelConfig
from model_core.errors import CheckpointError

RopeFn = Callable[[ModelConfig], tuple[torch.Tensor, float]]


def default_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    return 1.0 / (config.rope_theta**exponents), 1.0


def linear_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    inv_freq, attention_factor = default_inv_freq(config)
    return inv_freq / float(config.rope_scaling["factor"]), attention_factor


ROPE: dict[str, RopeFn] = {"default": default_inv_freq, "linear": linear_inv_freq}


def rope_for(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """The (inv_freq, attention_factor) that config.json's rope_scaling asks for."""
    kind = (config.rope_scaling or {}).get("rope_type", "default")
    if kind not in ROPE:
        raise CheckpointError(f"unsupported rope_scaling type {kind!r}; supported: {', '.join(sorted(ROPE))}")
    return ROPE[kind](config)


def cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, attention_factor: float = 1.0,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, T) -> cos, sin (B, 1, T, head_dim), computed in float32 then cast."""
    freqs = positions[..., None].float() * inv_freq.float()  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
    cos = (emb.cos() * attention_factor).to(dtype)
    sin = (emb.sin() * attention_factor).to(dtype)
    return cos[:, None], sin[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated by cos/sin (B, 1, T, D)."""
    return x * cos + rotate_half(x) * sin
