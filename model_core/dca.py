"""Dual Chunk Attention (An et al., ICML 2024, arXiv 2402.17463): the attention mode "dca".

A model trained on `original` tokens never saw a relative position above it. DCA cuts the
sequence into chunks of `chunk_len = chunk_size - local_size` tokens and remaps positions so
that every relative position stays in [0, chunk_size] (vLLM / ChunkLlama convention):

- keys are rotated at `p mod chunk_len` (that is what the KV cache stores);
- a query attends to three disjoint key sets, each with its own query position:
  intra (its own chunk, causal):        query position `p mod chunk_len`;
  successive (the previous chunk):      `min(p mod chunk_len + chunk_len, chunk_size)`, which
                                        keeps the exact distance to the `local_size` nearest keys;
  inter (all earlier chunks):           `chunk_size`;
- the three partial attentions are merged by their log-sum-exp (`attention.merge_partials`),
  which equals one softmax over the remapped position matrix (the paper's Eq. 8, the oracle in
  tests/model_core/test_dca.py).

A sequence that fits in one chunk sees exactly plain RoPE attention (one partition, no LSE).

Temperature (vLLM's DCA "YaRN"): the logits of a query at position p are multiplied by s² with
`s = max(1, 0.1·ln((p + 1) / original) + 1)`: each token's temperature depends on its own
position only (in decode, p + 1 is the row's current length, as in vLLM). As vLLM, `original = 0`
turns the temperature off. Departures from vLLM: vLLM multiplies the keys by s when it writes
them to the cache and q by the step's s, and gives every prompt token s(prompt length); we store
the keys without temperature and multiply each query by its own s². That makes a prefix's KV
(in every layer) independent of what follows it, so a prefill that starts from a cached prefix,
or runs in chunks, equals one fresh prefill of the whole prompt; within `original` tokens both
are exactly plain attention.

Prefill processes the input chunk by DCA chunk (a prefill piece may straddle a boundary). Decode
groups rows by chunk index, so rows at different positions share calls whenever they share a
chunk; the inter partition reads the cache as a view, never a copy, when all rows share a chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from model_core.attention import ATTENTION, merge_partials
from model_core.rope import apply_rope, cos_sin

if TYPE_CHECKING:
    from model_core.cache import ForwardContext


@dataclass(frozen=True)
class DcaOptions:
    chunk_size: int  # the largest relative position DCA lets RoPE see
    local_size: int  # keys of the previous chunk kept at their exact distance
    original_max_position_embeddings: int = 0  # the trained length; 0 disables the temperature

    @property
    def chunk_len(self) -> int:
        return self.chunk_size - self.local_size

    @classmethod
    def from_mode_options(cls, options: dict) -> DcaOptions:
        return cls(
            int(options["chunk_size"]),
            int(options["local_size"]),
            int(options.get("original_max_position_embeddings") or 0),
        )


def temperature(seq_lens: torch.Tensor, original: int) -> torch.Tensor:
    """s = max(1, 0.1·ln(L / original) + 1) elementwise (float64); ones when original is 0."""
    lens = seq_lens.double()
    if original <= 0:
        return torch.ones_like(lens)
    return torch.clamp(0.1 * torch.log(lens / original) + 1.0, min=1.0)


@dataclass
class _Rotary:
    """cos/sin (B, 1, T, D) of the key position and the three query positions of the input."""

    key: tuple[torch.Tensor, torch.Tensor]  # also the intra-chunk query position
    successive: tuple[torch.Tensor, torch.Tensor]
    inter: tuple[torch.Tensor, torch.Tensor]


def _rotary(
    ctx: ForwardContext, rope, opts: DcaOptions, dtype: torch.dtype
) -> _Rotary:
    """Computed once per forward (shared by all layers) and kept in ctx.mode_state."""
    if "dca_rotary" not in ctx.mode_state:
        in_chunk = ctx.positions % opts.chunk_len  # (B, T)
        successive = (in_chunk + opts.chunk_len).clamp(max=opts.chunk_size)
        inter = torch.full_like(in_chunk, opts.chunk_size)
        ctx.mode_state["dca_rotary"] = _Rotary(
            *(
                cos_sin(rope.inv_freq, pos, rope.attention_factor, dtype)
                for pos in (in_chunk, successive, inter)
            )
        )
    return ctx.mode_state["dca_rotary"]


def dca_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ctx: ForwardContext,
    layer: int,
    rope,
) -> torch.Tensor:
    """ATTENTION_MODES["dca"]: q (B, Hq, T, D), k/v (B, Hkv, T, D) un-rotated -> (B, Hq, T, D)."""
    opts = DcaOptions.from_mode_options(ctx.mode_options)
    rotary = _rotary(ctx, rope, opts, q.dtype)
    k = apply_rope(k, *rotary.key)
    kv_lens = ctx.kv_lens  # (B,)
    if ctx.cache is None:
        keys, values, key_base = (
            k,
            v,
            int(kv_lens[0]) - k.shape[2],
        )  # key index = position - key_base
    else:
        ctx.cache.write(layer, ctx.rows, ctx.positions, k, v)
        keys, values = ctx.cache.read(layer, ctx.rows, int(kv_lens.max()))
        key_base = 0
    s = temperature(ctx.positions + 1, opts.original_max_position_embeddings)  # (B, T)
    if bool((s > 1).any()):
        q = q * (s * s).to(q.dtype)[:, None, :, None]  # each query's logits x s² of its position
    queries = _Queries(q, rotary)
    if q.shape[2] == 1 and q.shape[0] > 1:
        return _decode(
            queries, keys, values, key_base, ctx.positions[:, 0], opts, ATTENTION[ctx.backend]
        )
    return _prefill(
        queries, keys, values, key_base, int(ctx.positions[0, 0]), opts, ATTENTION[ctx.backend]
    )


class _Queries:
    """q rotated at each of the three query positions, computed on first use."""

    def __init__(self, q: torch.Tensor, rotary: _Rotary):
        self.q, self.rotary, self._rotated = q, rotary, {}

    def __getitem__(self, kind: str) -> torch.Tensor:
        if kind not in self._rotated:
            table = {
                "intra": self.rotary.key,
                "successive": self.rotary.successive,
                "inter": self.rotary.inter,
            }[kind]
            self._rotated[kind] = apply_rope(self.q, *table)
        return self._rotated[kind]


def _partials(
    attend,
    q_of,
    keys,
    values,
    base: int,
    chunk: int,
    intra_end: int,
    opts: DcaOptions,
    intra_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of queries in chunk `chunk` over its intra, successive and inter key sets, merged.

    q_of(kind) gives the queries rotated for that key set; keys[:, :, i - base] is position i;
    intra keys run from the chunk's start to intra_end (or to intra_lens per row).
    """
    start = chunk * opts.chunk_len
    prev = start - opts.chunk_len

    def keys_between(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        return keys[:, :, lo - base : hi - base], values[:, :, lo - base : hi - base]

    parts = [
        attend(
            q_of("intra"),
            *keys_between(start, intra_end),
            causal=True,
            kv_lens=intra_lens,
            need_lse=chunk >= 1,
        )
    ]
    if chunk >= 1:
        parts.append(
            attend(q_of("successive"), *keys_between(prev, start), causal=False, need_lse=True)
        )
    if chunk >= 2:
        parts.append(attend(q_of("inter"), *keys_between(0, prev), causal=False, need_lse=True))
    return merge_partials(parts)[0]


def _prefill(
    queries: _Queries, keys, values, base: int, first: int, opts: DcaOptions, attend
) -> torch.Tensor:
    """Queries at positions first..first+T-1 (the same in every row), split at chunk boundaries."""
    q_len = queries.q.shape[2]
    outs, pos = [], first
    while pos < first + q_len:
        chunk = pos // opts.chunk_len
        end = min(first + q_len, (chunk + 1) * opts.chunk_len)
        span = slice(pos - first, end - first)
        outs.append(
            _partials(
                attend,
                lambda kind, span=span: queries[kind][:, :, span],
                keys,
                values,
                base,
                chunk,
                end,
                opts,
            )
        )
        pos = end
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _decode(
    queries: _Queries, keys, values, base: int, positions: torch.Tensor, opts: DcaOptions, attend
) -> torch.Tensor:
    """One query per row at its own position (B,): rows that share a chunk index share the calls.

    When every row is in the same chunk the cache is read through views; otherwise each group
    gathers its rows' keys from the first position it needs (its inter keys included).
    """
    chunks = positions // opts.chunk_len
    out = torch.empty_like(queries.q)
    for chunk in chunks.unique().tolist():
        rows = (chunks == chunk).nonzero()[:, 0]
        lens = positions[rows] + 1
        intra_end = int(lens.max())
        intra_lens = None if bool((lens == intra_end).all()) else lens - chunk * opts.chunk_len
        if rows.numel() == positions.numel():
            out = _partials(
                attend, queries.__getitem__, keys, values, base, chunk, intra_end, opts, intra_lens
            )
            break
        lo = 0 if chunk >= 2 else max(chunk - 1, 0) * opts.chunk_len
        group_keys = keys[:, :, lo - base : intra_end - base][rows]
        group_values = values[:, :, lo - base : intra_end - base][rows]
        out[rows] = _partials(
            attend,
            lambda kind, rows=rows: queries[kind][rows],
            group_keys,
            group_values,
            lo,
            chunk,
            intra_end,
            opts,
            intra_lens,
        )
    return out
