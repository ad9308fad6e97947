"""Dual Chunk Attention against a dense float64 oracle, plain attention, and itself (cache paths)."""

from __future__ import annotations

import math

import pytest
import torch

from model_core.cache import ForwardContext, KVCache
from model_core.config import ModelConfig
from model_core.dca import DcaOptions, dca_attention, temperature
from model_core.modes import plain_attention
from tests.model_core.dca_oracle import HEAD_DIM, KV_HEADS, dense_oracle, random_qkv, rope


def dca_context(
    opts: DcaOptions,
    positions: torch.Tensor,
    backend: str,
    cache=None,
    rows=slice(0, 1),
) -> ForwardContext:
    options = {
        "chunk_size": opts.chunk_size,
        "local_size": opts.local_size,
        "original_max_position_embeddings": opts.original_max_position_embeddings,
    }
    return ForwardContext(
        positions=positions,
        cache=cache,
        rows=rows,
        backend=backend,
        mode="dca",
        mode_options=options,
    )


def one_shot(q, k, v, opts, backend="eager") -> torch.Tensor:
    positions = torch.arange(q.shape[2]).expand(q.shape[0], -1)
    return dca_attention(q, k, v, dca_context(opts, positions, backend), 0, rope())


def tiny_cache(batch: int, max_len: int, dtype=torch.float64) -> KVCache:
    config = ModelConfig(num_hidden_layers=1, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM)
    return KVCache(config, batch, max_len, dtype, "cpu")


SIZES = [
    (8, 2, 0),
    (12, 4, 10),
    (7, 1, 16),
    (16, 6, 24),
]  # chunk_size, local_size, original (0: no temperature)


@pytest.mark.parametrize("chunk_size,local_size,original", SIZES)
@pytest.mark.parametrize("backend", ["eager", "sdpa", "cpu_flash"])
def test_dca_equals_dense_oracle_over_four_chunks(chunk_size, local_size, original, backend):
    opts = DcaOptions(chunk_size, local_size, original)
    length = 4 * opts.chunk_len + 3  # five chunks, the last one partial
    q, k, v = random_qkv(length, seed=chunk_size, batch=2)
    err = (
        (one_shot(q, k, v, opts, backend) - dense_oracle(q, k, v, opts, rope().inv_freq))
        .abs()
        .max()
        .item()
    )
    assert err < 1e-10, (
        f"DCA ({backend}, chunk {chunk_size}, local {local_size}) is off the oracle by {err:.2e}"
    )


def test_relative_positions_stay_within_chunk_size():
    opts = DcaOptions(12, 4)
    pos = torch.arange(5 * opts.chunk_len)
    distance = (pos[:, None] // opts.chunk_len - pos[None, :] // opts.chunk_len).clamp(max=2)
    query_pos = torch.stack(
        [
            pos % opts.chunk_len,
            (pos % opts.chunk_len + opts.chunk_len).clamp(max=12),
            torch.full_like(pos, 12),
        ]
    )  # (3, N)
    rel = torch.empty(len(pos), len(pos), dtype=torch.long)
    for kind in range(3):
        rel = torch.where(
            distance == kind, query_pos[kind][:, None] - (pos % opts.chunk_len)[None, :], rel
        )
    causal = pos[None, :] <= pos[:, None]
    assert int(rel[causal].max()) == 12 and int(rel[causal].min()) == 0
    # The first local_size queries of a chunk keep their exact distance to the previous chunk.
    i, j = 2 * opts.chunk_len + 1, 2 * opts.chunk_len - 3
    assert int(rel[i, j]) == i - j


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_within_one_chunk_dca_is_plain_attention(backend):
    opts = DcaOptions(chunk_size=40, local_size=8, original_max_position_embeddings=64)
    q, k, v = random_qkv(opts.chunk_len, seed=3, dtype=torch.float32)
    positions = torch.arange(opts.chunk_len)[None]
    plain_ctx = ForwardContext(positions=positions, backend=backend)
    from model_core.rope import cos_sin

    plain_ctx.cos_sin = cos_sin(rope().inv_freq, positions)
    plain = plain_attention(q, k, v, plain_ctx, 0, rope())
    dca = one_shot(q, k, v, opts, backend)
    assert torch.equal(dca, plain), f"max difference {(dca - plain).abs().max().item():.2e}"


@pytest.mark.parametrize("backend", ["eager", "sdpa", "cpu_flash"])
@pytest.mark.parametrize("piece", [1, 5, 11])
def test_chunked_prefill_then_decode_equals_one_shot(backend, piece):
    opts = DcaOptions(chunk_size=9, local_size=3, original_max_position_embeddings=12)
    length, prompt = 40, 29
    q, k, v = random_qkv(length, seed=piece)
    cache = tiny_cache(1, length)
    outs = []  # each query's temperature comes from its own position, so every split agrees
    for start in list(range(0, prompt, piece)) + list(range(prompt, length)):
        stop = min(start + piece, prompt) if start < prompt else start + 1
        ctx = dca_context(opts, torch.arange(start, stop)[None], backend, cache=cache)
        outs.append(
            dca_attention(
                q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop], ctx, 0, rope()
            )
        )
    stepwise = torch.cat(outs, dim=2)
    err = (stepwise - dense_oracle(q, k, v, opts, rope().inv_freq)).abs().max().item()
    assert err < 1e-10, f"prefill in pieces of {piece} then decode is off one-shot by {err:.2e}"


def test_batched_decode_rows_at_different_positions_equal_each_row_alone():
    opts = DcaOptions(chunk_size=8, local_size=2, original_max_position_embeddings=10)
    lengths = [5, 14, 27, 15]  # chunks 0, 2, 4 and 2: two rows share a chunk, one needs no LSE
    cache = tiny_cache(len(lengths), max(lengths))
    rows = [random_qkv(n, seed=n) for n in lengths]
    for r, ((q, k, v), n) in enumerate(zip(rows, lengths, strict=True)):
        ctx = dca_context(
            opts, torch.arange(n - 1)[None], "sdpa", cache=cache, rows=slice(r, r + 1)
        )
        dca_attention(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1], ctx, 0, rope())
    last = [
        torch.cat([t[:, :, -1:] for t in parts]) for parts in zip(*rows, strict=True)
    ]  # (B, H, 1, D)
    positions = torch.tensor(lengths)[:, None] - 1
    ctx = dca_context(opts, positions, "sdpa", cache=cache, rows=slice(0, len(lengths)))
    batched = dca_attention(*last, ctx, 0, rope())
    for r, ((q, k, v), n) in enumerate(zip(rows, lengths, strict=True)):
        alone = dense_oracle(q, k, v, opts, rope().inv_freq)[:, :, -1:]
        err = (batched[r : r + 1] - alone).abs().max().item()
        assert err < 1e-10, f"row {r} (position {n - 1}) differs in the batch by {err:.2e}"


def test_temperature_is_one_within_the_trained_length_and_grows_with_log_length():
    s = temperature(torch.tensor([1, 32768, 65536, 131072]), 32768)
    assert s[:2].tolist() == [1.0, 1.0]
    assert s[2].item() == pytest.approx(0.1 * math.log(2) + 1, abs=1e-6)
    assert s[3].item() == pytest.approx(1.1386294, abs=1e-6)
    assert temperature(torch.tensor([10**6]), 0).item() == 1.0  # original 0: off, as in vLLM
