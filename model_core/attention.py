"""Attention backends: one registry, one signature.

    ATTENTION[name](q, k, v, *, causal, kv_lens=None, scale=None, need_lse=False) -> (out, lse)

q (B, Hq, T, D); k, v (B, Hkv, S, D) with Hq a multiple of Hkv (grouped-query attention is
handled inside). `kv_lens` (B,) masks keys j >= kv_lens[b]; by default every row has S keys.
`causal` is bottom-right aligned, as in flash-attn: query t of row b sees keys
j <= kv_lens[b] - T + t, so a chunk of new queries at the end of a cache lines up with its keys.
Returns out (B, Hq, T, D) in q's dtype and, when `need_lse`, the log-sum-exp of the scaled
logits (B, Hq, T) in float32 (Dual Chunk Attention merges partial attentions with it).

`eager` is the float32 reference the tests trust; `sdpa` is PyTorch's fused kernel (no LSE);
faster or LSE-returning kernels (CPU flash, flash-attn on CUDA) register here with the same
signature and are compared against `eager` in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def key_mask(q_len: int, k_len: int, causal: bool, kv_lens: torch.Tensor | None,
             device: torch.device) -> torch.Tensor | None:
    """Boolean mask (B or 1, 1, T, S), True where a query may attend; None when nothing is masked."""
    if kv_lens is None and (not causal or q_len == 1):
        return None
    keys = torch.arange(k_len, device=device)
    lens = (torch.full((1,), k_len, device=device) if kv_lens is None else kv_lens.to(device))[:, None, None]
    mask = keys[None, None, :] < lens  # (B, 1, S)
    if causal:
        queries = torch.arange(q_len, device=device)[None, :, None]  # (1, T, 1)
        mask = mask & (keys[None, None, :] <= lens - q_len + queries)  # (B, T, S)
    else:
        mask = mask.expand(-1, q_len, -1)
    return mask[:, None]  # (B, 1, T, S)


def eager_attention(q, k, v, *, causal, kv_lens=None, scale=None, need_lse=False):
    """Reference: explicit softmax in float32 over repeated key/value heads."""
    groups = q.shape[1] // k.shape[1]
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    k = k.repeat_interleave(groups, dim=1).float()  # (B, Hq, S, D)
    v = v.repeat_interleave(groups, dim=1).float()
    logits = torch.matmul(q.float(), k.transpose(-1, -2)) * scale  # (B, Hq, T, S)
    mask = key_mask(q.shape[2], k.shape[2], causal, kv_lens, q.device)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)  # (B, Hq, T)
    probs = torch.exp(logits - lse[..., None]).nan_to_num(0.0)  # rows with no key give zeros
    out = torch.matmul(probs, v).to(q.dtype)
    return out, (lse if need_lse else None)


def sdpa_attention(q, k, v, *, causal, kv_lens=None, scale=None, need_lse=False):
    """torch.nn.functional.scaled_dot_product_attention; the mask is built only when needed."""
    if need_lse:
        return eager_attention(q, k, v, causal=causal, kv_lens=kv_lens, scale=scale, need_lse=True)
    q_len, k_len = q.shape[2], k.shape[2]
    if kv_lens is None and causal and q_len == k_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True), None
    mask = key_mask(q_len, k_len, causal, kv_lens, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    return out, None


ATTENTION: dict[str, AttentionFn] = {"eager": eager_attention, "sdpa": sdpa_attention}


def default_backend(device: torch.device | str) -> str:
    """flash on CUDA when flash-attn is importable and registered, else sdpa."""
    if torch.device(device).type == "cuda" and "flash" in ATTENTION:
        return "flash"
    return "sdpa"
