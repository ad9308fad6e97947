"""KV blocks: allocation, reference counts and the prefix cache (vLLM's automatic prefix caching).

The KV budget is `num_blocks` blocks of `block_size` token slots (`cache.KVPool`). A block is
free, held by one or more sequences (reference count > 0), or cached: unreferenced but kept with
its content hash so a later prompt with the same prefix reuses it; cached blocks are evicted
least recently released first when memory is needed, or when they exceed the cache's share of
the budget (`cache_share`; 0 turns prefix caching off).

Hashes are chained (vLLM, nano-vllm): block i's hash covers its token ids and block i-1's hash,
so equal hashes mean equal whole prefixes. A match also compares the stored token ids, so reuse
is exact even against a hash collision. Only full blocks are hashed; a sequence's partial last
block is private. The reused keys and values are the very ones computed before; what follows
them is computed as a tail (its attention over the cached prefix and itself merged by LSE, not
one causal pass), so logits equal a cold prefill's to float rounding, not bit for bit: a greedy
near-tie can go the other way (seen once on the 0.5B: "a vast, open area" cold, "a vast,
unforgiving landscape" with 32 of 36 prompt tokens cached; the eager backend gives the second
both times).

Allocation prefers the block right after the sequence's last one, so a sequence running alone
keeps consecutive blocks and is read as a view (cache.SequenceKV), like a static cache row.
"""

from __future__ import annotations

import hashlib
import heapq
from array import array
from collections import OrderedDict


def block_hash(previous: bytes, tokens: list[int]) -> bytes:
    """Hash of a full block chained to the previous block's hash (b"" for the first)."""
    return hashlib.blake2b(previous + array("q", tokens).tobytes(), digest_size=16).digest()


class KVBlocks:
    def __init__(self, num_blocks: int, block_size: int, cache_share: float = 1.0):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.max_cached = int(cache_share * num_blocks)
        self.refs = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.tokens_of: list[tuple[int, ...] | None] = [None] * num_blocks
        self.by_hash: dict[bytes, int] = {}
        self.free = set(range(num_blocks))
        self._free_heap = list(range(num_blocks))  # lowest free id first (lazy deletion)
        self.cached: OrderedDict[int, None] = OrderedDict()  # unreferenced, hashed; oldest first

    @property
    def caching(self) -> bool:
        return self.max_cached > 0

    def available(self) -> int:
        """Blocks that can be allocated now (free, or cached and evictable)."""
        return len(self.free) + len(self.cached)

    def used(self) -> int:
        return self.num_blocks - self.available()

    def match(self, tokens: list[int], max_blocks: int) -> list[int]:
        """The cached blocks (held or not) that hold the first full blocks of `tokens`."""
        found, previous = [], b""
        for i in range(max_blocks if self.caching else 0):
            piece = tokens[i * self.block_size : (i + 1) * self.block_size]
            previous = block_hash(previous, piece)
            block = self.by_hash.get(previous)
            if block is None or self.tokens_of[block] != tuple(piece):
                break
            found.append(block)
        return found

    def take(self, blocks: list[int]) -> None:
        """A sequence starts holding these (matched) blocks."""
        for block in blocks:
            if self.refs[block] == 0:
                del self.cached[block]
            self.refs[block] += 1

    def allocate(self, prefer: int | None = None) -> int | None:
        """A fresh block for one holder (the one after `prefer` if free); None when none is left."""
        if prefer is not None and prefer + 1 in self.free:
            block = prefer + 1
        elif self.free:
            block = heapq.heappop(self._free_heap)
            while block not in self.free:
                block = heapq.heappop(self._free_heap)
        elif self.cached:
            block, _ = self.cached.popitem(last=False)
            self._forget(block)
            self.free.add(block)
        else:
            return None
        self.free.discard(block)
        self.refs[block] = 1
        return block

    def release(self, blocks: list[int]) -> None:
        """A sequence stops holding these blocks (tail first, so tails are evicted first)."""
        for block in reversed(blocks):
            self.refs[block] -= 1
            if self.refs[block] > 0:
                continue
            if self.hash_of[block] is not None and self.caching:
                self.cached[block] = None
            else:
                self._forget(block)
                self._free(block)
        while len(self.cached) > self.max_cached:
            block, _ = self.cached.popitem(last=False)
            self._forget(block)
            self._free(block)

    def register(self, block: int, previous: bytes, tokens: list[int]) -> bytes:
        """Record a full block's content; returns its chained hash (for the next block)."""
        digest = block_hash(previous, tokens)
        if self.caching and digest not in self.by_hash:
            self.by_hash[digest] = block
            self.hash_of[block], self.tokens_of[block] = digest, tuple(tokens)
        return digest

    def _forget(self, block: int) -> None:
        digest = self.hash_of[block]
        if digest is not None and self.by_hash.get(digest) == block:
            del self.by_hash[digest]
        self.hash_of[block] = self.tokens_of[block] = None

    def _free(self, block: int) -> None:
        self.free.add(block)
        heapq.heappush(self._free_heap, block)
