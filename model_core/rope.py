"""Rotary position embeddings: a registry of inverse-frequency functions and the rotation itself.

`ROPE[rope_type](config) -> (inv_freq, attention_factor)`; every variant has that signature
(transformers' modeling_rope_utils convention). `attention_factor` multiplies cos and sin, so the
q·k logits scale by its square, as in transformers. Long-context variants (YaRN) register here too.
Positions are turned into cos/sin on the fly (no 128K table): `cos_sin(inv_freq, positions)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from model_core import kernels
from model_core.config import ModelConfig
from model_core.errors import CheckpointError

ROPE_KERNEL_TOKENS = 16  # up to this many tokens per row, `kernels.rope` (decode steps)

RopeFn = Callable[[ModelConfig], tuple[torch.Tensor, float]]


def default_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    return 1.0 / (config.rope_theta**exponents), 1.0


def linear_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    inv_freq, attention_factor = default_inv_freq(config)
    return inv_freq / float(config.rope_scaling["factor"]), attention_factor


def yarn_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """YaRN "NTK-by-parts" (arXiv 2309.00071), static, exactly as transformers >= 4.56.

    Dimensions that turn more than beta_fast times over the original context keep their
    frequency, those that turn less than beta_slow times are divided by `factor`, and a linear
    ramp blends the ones between. The attention factor 0.1·ln(factor)+1 (or the DeepSeek ratio
    when mscale and mscale_all_dim are given) multiplies cos and sin.
    """
    params = config.rope_scaling
    dim, base = config.head_dim, config.rope_theta
    original = params.get("original_max_position_embeddings") or config.max_position_embeddings
    factor = params.get("factor") or config.max_position_embeddings / original
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast, beta_slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    pos_freqs = base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp  # 1: keep the original frequency, 0: divide it by factor
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


ROPE: dict[str, RopeFn] = {"default": default_inv_freq, "linear": linear_inv_freq, "yarn": yarn_inv_freq}


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
    """x (B, H, T, D) rotated by cos/sin (B, 1, T, D). A decode step's few float32 tokens on the CPU
    take one call of `kernels.rope` (the same arithmetic) instead of six eager ops."""
    if x.shape[2] <= ROPE_KERNEL_TOKENS and x.dtype == cos.dtype == torch.float32 and x.device.type == "cpu":
        rotated = kernels.rope(x, cos, sin)
        if rotated is not None:
            return rotated
    return rope_reference(x, cos, sin)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin
