"""The float64 oracle for Dual Chunk Attention and the small random inputs it is checked on.

Shared by test_dca.py and test_attention_backends.py (a helper module, not a test file).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from model_core.dca import DcaOptions, temperature

HEAD_DIM, Q_HEADS, KV_HEADS = 8, 4, 2  # grouped-query attention: two query heads per key head


def rope(theta: float = 100.0) -> SimpleNamespace:
    exponents = torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM
    return SimpleNamespace(inv_freq=1.0 / theta**exponents, attention_factor=1.0)


def random_qkv(length: int, seed: int, batch: int = 1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, Q_HEADS, length, HEAD_DIM, generator=gen, dtype=dtype)
    k = torch.randn(batch, KV_HEADS, length, HEAD_DIM, generator=gen, dtype=dtype)
    v = torch.randn(batch, KV_HEADS, length, HEAD_DIM, generator=gen, dtype=dtype)
    return q, k, v


def rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE applied in float64 with cos/sin tables made in float32, as the model's are."""
    angles = positions[:, None].float() * inv_freq.float()  # (N, D/2)
    cos, sin = angles.cos().double().repeat(1, 2), angles.sin().double().repeat(1, 2)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def dense_oracle(q, k, v, opts: DcaOptions, inv_freq) -> torch.Tensor:
    """The paper's Eq. 8: one softmax over logits whose query position depends on chunk distance,
    each query's logits scaled by s² of its own position (s = max(1, 0.1·ln((i+1)/original)+1))."""
    length, chunk_len = q.shape[2], opts.chunk_len
    pos = torch.arange(length)
    query_pos = [
        pos % chunk_len,
        (pos % chunk_len + chunk_len).clamp(max=opts.chunk_size),
        torch.full_like(pos, opts.chunk_size),
    ]  # intra, successive, inter
    keys = rotate(k.double(), pos % chunk_len, inv_freq).repeat_interleave(
        Q_HEADS // KV_HEADS, dim=1
    )
    distance = (pos[:, None] // chunk_len - pos[None, :] // chunk_len).clamp(
        max=2
    )  # (N, N): 0, 1, 2+
    logits = torch.zeros(q.shape[0], Q_HEADS, length, length, dtype=torch.float64)
    for kind, qp in enumerate(query_pos):
        scores = rotate(q.double(), qp, inv_freq) @ keys.transpose(-1, -2)
        logits = torch.where(distance == kind, scores, logits)
    s = temperature(pos + 1, opts.original_max_position_embeddings)  # (N,) float64
    logits = logits * (s * s)[:, None] / math.sqrt(HEAD_DIM)
    logits = logits.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
    values = v.double().repeat_interleave(Q_HEADS // KV_HEADS, dim=1)
    return torch.softmax(logits, dim=-1) @ values
