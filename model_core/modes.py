"""Attention modes: how positions enter attention. One registry, one signature.

    ATTENTION_MODES[name](q, k, v, ctx, layer, rope) -> out

q (B, Hq, T, D) and k, v (B, Hkv, T, D) come un-rotated from the projections; the mode applies
the rotary embedding its way, writes the keys to `ctx.cache` (if any) as it wants them stored,
reads the keys it needs back and calls the backend `attention.ATTENTION[ctx.backend]`.
`rope` is the model's `RotaryEmbedding` (inv_freq, attention_factor).

- "plain": RoPE at each token's own position (also YaRN: its frequencies live in `rope`).
- "dca": Dual Chunk Attention (model_core.dca).

The model only looks modes up here (model.py and dca.py do not import each other).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from model_core.attention import ATTENTION
from model_core.cache import ForwardContext
from model_core.dca import dca_attention
from model_core.rope import apply_rope


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext,
                    layer: int, rope) -> torch.Tensor:
    """RoPE at the tokens' own positions, then causal attention over the cache (or the input)."""
    cos, sin = ctx.cos_sin
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if ctx.cache is None:
        out, _ = ATTENTION[ctx.backend](q, k, v, causal=True)
        return out
    ctx.cache.write(layer, ctx.rows, ctx.positions, k, v)
    kv_lens = ctx.kv_lens
    k_all, v_all = ctx.cache.read(layer, ctx.rows, int(kv_lens.max()))
    uniform = q.shape[0] == 1 or bool((kv_lens == kv_lens[0]).all())
    out, _ = ATTENTION[ctx.backend](q, k_all, v_all, causal=True, kv_lens=None if uniform else kv_lens)
    return out


AttentionMode = Callable[..., torch.Tensor]
ATTENTION_MODES: dict[str, AttentionMode] = {"plain": plain_attention, "dca": dca_attention}
