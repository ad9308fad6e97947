"""Attention backends: one registry, one signature.

    ATTENTION[name](q, k, v, *, causal, kv_lens=None, scale=None, need_lse=False) -> (out, lse)

q (B, Hq, T, D); k, v (B, Hkv, S, D) with Hq a multiple of Hkv (grouped-query attention is
handled inside). `kv_lens` (B,) masks keys j >= kv_lens[b]; by default every row has S keys.
`causal` is bottom-right aligned, as in flash-attn: query t of row b sees keys
j <= kv_lens[b] - T + t, so a chunk of new queries at the end of a cache lines up with its keys.
Returns out (B, Hq, T, D) in q's dtype and, when `need_lse`, the log-sum-exp of the scaled
logits (B, Hq, T) in float32, float64 for float64 inputs (Dual Chunk Attention merges partial attentions with it).

`eager` is the float32 reference the tests trust; `sdpa` is PyTorch's fused kernel, which has no
LSE, so `need_lse` sends it to the LSE-returning kernel of the device. `cpu_flash` is PyTorch's
blockwise CPU kernel (`aten._scaled_dot_product_flash_attention_for_cpu`, a private op that
returns the LSE); `flash` is flash-attn 2 (`flash_attn_func` / `flash_attn_with_kvcache` with the
LSE they return), registered only when flash_attn imports and CUDA is available. All are compared
against `eager` in tests/model_core/test_attention_backends.py.

`merge_partials` combines attentions over disjoint key sets by their LSE (the partial attentions
of DCA, or a split causal block): lse = logsumexp_i lse_i, out = sum_i exp(lse_i - lse) * out_i.
A query that sees no key has out 0 and lse -inf, so it drops out of a merge.
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
    """Reference: explicit softmax in float32 (float64 for float64 inputs) over repeated key/value heads."""
    groups = q.shape[1] // k.shape[1]
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    compute = torch.promote_types(q.dtype, torch.float32)
    k = k.repeat_interleave(groups, dim=1).to(compute)  # (B, Hq, S, D)
    v = v.repeat_interleave(groups, dim=1).to(compute)
    logits = torch.matmul(q.to(compute), k.transpose(-1, -2)) * scale  # (B, Hq, T, S)
    mask = key_mask(q.shape[2], k.shape[2], causal, kv_lens, q.device)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)  # (B, Hq, T)
    probs = torch.exp(logits - lse[..., None]).nan_to_num(0.0)  # rows with no key give zeros
    out = torch.matmul(probs, v).to(q.dtype)
    return out, (lse if need_lse else None)


def sdpa_attention(q, k, v, *, causal, kv_lens=None, scale=None, need_lse=False):
    """torch.nn.functional.scaled_dot_product_attention; the mask is built only when needed.

    SDPA returns no LSE: with `need_lse` this runs the CPU flash kernel on CPU, and elsewhere the
    eager reference over blocks of queries (memory bounded by the block, not by T x S).
    """
    if need_lse:
        if q.device.type == "cpu":
            return cpu_flash_attention(q, k, v, causal=causal, kv_lens=kv_lens, scale=scale, need_lse=True)
        return blocked_eager_attention(q, k, v, causal=causal, kv_lens=kv_lens, scale=scale)
    q_len, k_len = q.shape[2], k.shape[2]
    if kv_lens is None and causal and q_len == k_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True), None
    if q.device.type == "cpu" and kv_lens is None and causal and 1 < q_len < k_len:
        # A prefill chunk at the end of the cache: SDPA would need a (T, S) mask, which it turns
        # into floats (~10 bytes per key per query); the CPU flash kernel splits it without one.
        return cpu_flash_attention(q, k, v, causal=True, scale=scale)
    mask = key_mask(q_len, k_len, causal, kv_lens, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    return out, None


def blocked_eager_attention(q, k, v, *, causal, kv_lens=None, scale=None, block=256):
    """The eager reference with its LSE, over blocks of `block` queries (bounded temporaries)."""
    q_len, k_len = q.shape[2], k.shape[2]
    outs, lses = [], []
    for start in range(0, q_len, block):
        stop = min(start + block, q_len)
        # Query `start + t` of the full block keeps its bottom-right causal limit: drop the keys
        # no query of this block may see, so the sub-block is again bottom-right aligned.
        visible = k_len - (q_len - stop) if causal else k_len
        lens = None if kv_lens is None else (kv_lens - (q_len - stop) if causal else kv_lens)
        if lens is not None:
            lens = lens.clamp(min=0, max=visible)
        out, lse = eager_attention(q[:, :, start:stop], k[:, :, :visible], v[:, :, :visible],
                                   causal=causal, kv_lens=lens, scale=scale, need_lse=True)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _cpu_flash(q, k, v, causal: bool, mask: torch.Tensor | None, scale):
    """One call of PyTorch's CPU flash kernel: (out, lse). Its causal mask is top-left aligned."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=causal, attn_mask=mask,
                                                                       scale=scale)


def cpu_flash_attention(q, k, v, *, causal, kv_lens=None, scale=None, need_lse=False):
    """PyTorch's blockwise CPU kernel (GQA inside, float32 LSE), aligned to this module's masks.

    Without kv_lens no mask is built: a bottom-right causal block with more keys than queries is
    split into the prefix every query sees (no mask) and a square causal block, merged by LSE.
    With kv_lens an additive (B, 1, T, S) mask is built; the kernel reports lse 0 for a query
    that sees no key, which is corrected to -inf.
    """
    q_len, k_len = q.shape[2], k.shape[2]
    if kv_lens is None and (not causal or q_len == 1 or q_len == k_len):
        out, lse = _cpu_flash(q, k, v, causal and q_len > 1, None, scale)
    elif kv_lens is None and q_len < k_len:
        prefix = k_len - q_len
        out, lse = merge_partials([
            _cpu_flash(q, k[:, :, :prefix], v[:, :, :prefix], False, None, scale),
            _cpu_flash(q, k[:, :, prefix:], v[:, :, prefix:], True, None, scale),
        ])
    else:
        allowed = key_mask(q_len, k_len, causal, kv_lens, q.device)  # (B, 1, T, S)
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
        out, lse = _cpu_flash(q, k, v, False, mask, scale)
        lse = lse.masked_fill(~allowed.any(-1), float("-inf"))  # (B, 1, T) broadcast over heads
    return out, (lse if need_lse else None)


def merge_partials(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Attentions of the same queries over disjoint key sets -> the attention over their union."""
    if len(parts) == 1:
        return parts[0]
    compute = torch.promote_types(parts[0][0].dtype, torch.float32)
    lses = torch.stack([lse.to(compute) for _, lse in parts])  # (P, B, H, T)
    total = torch.logsumexp(lses, dim=0)  # (B, H, T)
    weights = torch.exp(lses - total).nan_to_num(0.0)  # a query with no key anywhere: all zeros
    out = sum(w[..., None] * o.to(compute) for w, (o, _) in zip(weights, parts, strict=True))
    return out.to(parts[0][0].dtype), total


def flash_attention(q, k, v, *, causal, kv_lens=None, scale=None, need_lse=False):
    """flash-attn 2 on CUDA in fp16/bf16 (float32 inputs go to sdpa); bottom-right causal, GQA inside.

    Without kv_lens: `flash_attn_func(..., return_attn_probs=need_lse)`. With kv_lens (rows of
    different lengths in one cache): `flash_attn_with_kvcache(cache_seqlens=kv_lens,
    return_softmax_lse=need_lse)`, which reads the cache in place.
    """
    if q.dtype not in (torch.float16, torch.bfloat16):
        return sdpa_attention(q, k, v, causal=causal, kv_lens=kv_lens, scale=scale, need_lse=need_lse)
    from flash_attn import flash_attn_func, flash_attn_with_kvcache

    q_len = q.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, T, H, D): flash layout
    if kv_lens is None:
        result = flash_attn_func(qt, kt, vt, softmax_scale=scale, causal=causal, return_attn_probs=need_lse)
    else:
        result = flash_attn_with_kvcache(qt, kt, vt, cache_seqlens=kv_lens.to(torch.int32), softmax_scale=scale,
                                         causal=causal, return_softmax_lse=need_lse)
    out, lse = (result[0], result[1]) if need_lse else (result, None)
    if lse is not None:
        lse = lse[..., :q_len].float()  # (B, H, T); older releases pad T
        lse = lse.masked_fill(torch.isposinf(lse), float("-inf"))  # flash-attn: +inf for a query with no key
        if kv_lens is not None:
            lse = lse.masked_fill((kv_lens == 0)[:, None, None], float("-inf"))
    return out.transpose(1, 2), lse


ATTENTION: dict[str, AttentionFn] = {"eager": eager_attention, "sdpa": sdpa_attention,
                                     "cpu_flash": cpu_flash_attention}


def _flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:  # ImportError, or a CUDA/ABI mismatch raised while importing
        return False
    return torch.cuda.is_available()


if _flash_available():
    ATTENTION["flash"] = flash_attention


def default_backend(device: torch.device | str) -> str:
    """flash on CUDA when flash-attn is importable and registered, else sdpa."""
    if torch.device(device).type == "cuda" and "flash" in ATTENTION:
        return "flash"
    return "sdpa"
