"""KV memory and the forward context: what a forward pass reads and writes besides the weights.

Two caches with one interface, `write(layer, rows, positions, k, v)` / `read(layer, rows, length)`:

- `KVCache`: the static reference, gpt-fast style: (layers, batch, kv_heads, max_len, head_dim),
  allocated per call, slot s of row b holds position s of that row. `engine.prefill` /
  `engine.decode_step` use it; tests and benches compare the paged engine against it.
- `KVPool` + `SequenceKV`: the serving engine's memory, allocated once for the whole KV budget and
  cut into blocks of `block_size` token slots (vLLM's PagedAttention, nano-vllm's layout). A
  sequence owns a block table; position p lives in slot `table[p // block_size] * block_size +
  p % block_size`. Storage is (layers, kv_heads, slots, head_dim), so a sequence whose blocks are
  consecutive is read as a view exactly like a static cache row (no copy); otherwise its slots
  are gathered (one copy per layer). flash-attn's `flash_attn_with_kvcache(block_table=...)` reads
  such a block table directly on CUDA (it wants (blocks, block_size, kv_heads, head_dim) per layer;
  not wired here).

Keys are stored as the attention mode writes them (plain: rotated by RoPE at the absolute
position; DCA: rotated at the position within its chunk), so cached blocks are reused exactly.

`ForwardContext` carries everything else: positions, the cache, the backend and mode. A batch of
sequences runs packed: input (1, N) with `segments`, one per sequence; attention runs per segment
(each with its own cache view), everything else over all N tokens at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from model_core.config import ModelConfig


class KVCache:
    """Keys and values of every layer, allocated once: (layers, batch, kv_heads, max_len, head_dim).

    Slot s of row b holds the token at position s of that row, so a row's length is its next
    position.
    """

    def __init__(self, config: ModelConfig, batch: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str):
        shape = (config.num_hidden_layers, batch, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len

    def write(self, layer: int, rows: slice, positions: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> None:
        """Store k, v (B, Hkv, T, D) for tokens at `positions` (B, T) of `rows`."""
        if k.shape[2] == 1 and k.shape[0] > 1:  # batched decode: each row at its own position
            pos = positions[:, 0]
            batch_idx = torch.arange(rows.start, rows.start + k.shape[0], device=k.device)
            self.k[layer, batch_idx, :, pos] = k[:, :, 0]
            self.v[layer, batch_idx, :, pos] = v[:, :, 0]
        else:  # prefill, or one row: a contiguous span at the same position in every row
            start = int(positions[0, 0])
            self.k[layer, rows, :, start : start + k.shape[2]] = k
            self.v[layer, rows, :, start : start + k.shape[2]] = v

    def read(self, layer: int, rows: slice, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the first `length` slots: (B, Hkv, length, D)."""
        return self.k[layer, rows, :, :length], self.v[layer, rows, :, :length]


class KVPool:
    """The KV budget, allocated once: k, v (layers, kv_heads, num_blocks * block_size, head_dim).

    `torch.empty`: pages are touched (and counted in RSS) only as blocks get written.
    """

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device | str):
        shape = (config.num_hidden_layers, config.num_key_value_heads, num_blocks * block_size,
                 config.head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.num_blocks, self.block_size = num_blocks, block_size


class SequenceKV:
    """One sequence's view of a `KVPool` through its block table; the KVCache interface, one row."""

    def __init__(self, pool: KVPool, block_table: list[int]):
        self.pool, self.block_table = pool, block_table

    def _runs(self, start: int, stop: int):
        """(position, slot, count) spans of positions start..stop-1 that are contiguous in slots."""
        size, pos = self.pool.block_size, start
        while pos < stop:
            block, offset = divmod(pos, size)
            count = min(stop - pos, size - offset)
            yield pos, self.block_table[block] * size + offset, count
            pos += count

    def write(self, layer: int, rows: slice, positions: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> None:
        """k, v (1, Hkv, T, D) at consecutive positions from positions[0, 0]."""
        start = int(positions[0, 0])
        pool_k, pool_v = self.pool.k[layer], self.pool.v[layer]  # (Hkv, slots, D)
        for pos, slot, count in self._runs(start, start + k.shape[2]):
            pool_k[:, slot : slot + count] = k[0, :, pos - start : pos - start + count]
            pool_v[:, slot : slot + count] = v[0, :, pos - start : pos - start + count]

    def read(self, layer: int, rows: slice, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of positions 0..length-1: (1, Hkv, length, D); a view when contiguous."""
        size = self.pool.block_size
        blocks = self.block_table[: -(-length // size)]
        first = blocks[0]
        if blocks[-1] - first == len(blocks) - 1 and all(b == first + i for i, b in enumerate(blocks)):
            span = slice(first * size, first * size + length)
            return self.pool.k[layer, :, span][None], self.pool.v[layer, :, span][None]
        slots = torch.cat([torch.arange(b * size, (b + 1) * size) for b in blocks])[:length]
        slots = slots.to(self.pool.k.device)
        return (self.pool.k[layer].index_select(1, slots)[None],
                self.pool.v[layer].index_select(1, slots)[None])


@dataclass
class ForwardContext:
    """Everything a forward pass needs besides the token ids."""

    positions: torch.Tensor  # (B, T) absolute positions of the input tokens
    cache: Any = None  # KVCache / SequenceKV; None: attend within the input only (one-shot)
    rows: slice = field(default_factory=lambda: slice(0, 1))  # cache rows of the B inputs
    backend: str = "sdpa"  # key of attention.ATTENTION
    mode: str = "plain"  # key of modes.ATTENTION_MODES
    mode_options: dict[str, Any] = field(default_factory=dict)  # e.g. DCA chunk sizes
    last_only: bool = True  # logits of the last position only
    cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None  # filled by the model per forward
    mode_state: dict[str, Any] = field(default_factory=dict)  # per-forward scratch of the mode
    # Packed batch: input (1, N) holds several sequences; attention runs per segment, and
    # logits come back for the tokens at `logits_at` (N,) only: (len(logits_at), V).
    segments: list[Segment] | None = None
    logits_at: torch.Tensor | None = None

    @property
    def kv_lens(self) -> torch.Tensor:
        return self.positions[:, -1] + 1  # (B,) keys each row sees after this step


@dataclass
class Segment:
    """One sequence's span [start, stop) of a packed input, with its own context (and cache)."""

    start: int
    stop: int
    ctx: ForwardContext


def packed_context(parts: list[tuple[torch.Tensor, Any]], *, backend: str, mode: str,
                   mode_options: dict[str, Any]) -> ForwardContext:
    """A ForwardContext for sequences packed into one (1, N) input: parts are (positions (t,),
    cache) per sequence. Logits come back for each segment's last token: (len(parts), V)."""
    segments, start = [], 0
    for positions, cache in parts:
        ctx = ForwardContext(positions=positions[None], cache=cache, backend=backend, mode=mode,
                             mode_options=mode_options)
        segments.append(Segment(start, start + positions.shape[0], ctx))
        start += positions.shape[0]
    every = torch.cat([p for p, _ in parts])[None]  # (1, N)
    last = torch.tensor([seg.stop - 1 for seg in segments], device=every.device)
    return ForwardContext(positions=every, backend=backend, mode=mode, mode_options=mode_options,
                          last_only=False, segments=segments, logits_at=last)
