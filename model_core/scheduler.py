"""Requests and the scheduler of the engine loop: who runs this step, with how many tokens.

nano-vllm's scheduler.py and vLLM's V1 scheduler, small: requests wait in FIFO order; a step
admits waiting requests while the batch has room (`max_batch`) and the KV budget has blocks for
everything they have to compute (prompt, plus tokens generated before a preemption), reusing the
longest cached prefix of full blocks (`KVBlocks.match`; at least one token is always computed,
for its logits). Then every running request is scheduled: one token for those decoding, a chunk
of at most `prefill_chunk` tokens (shared by all prefills of the step) for those prefilling, all
in one packed forward (`mix=False` runs a step's prefills without its decodes, for comparison).

When a decoding request needs a new block and none is left, the newest running request is
preempted: its blocks are released (full ones stay in the prefix cache) and it goes back to the
front of the queue, to be recomputed from its prompt and its tokens so far. The oldest request
therefore always progresses; a request that could not fit the whole budget alone is refused when
it is submitted (`Engine`), so nothing is ever truncated for lack of memory.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from model_core.blocks import KVBlocks
from model_core.sampling import SamplingParams


@dataclass(eq=False)
class Request:
    """One prompt in the engine: its tokens, how to sample and stop, and where it stands."""

    prompt: list[int]
    params: SamplingParams
    max_new: int  # max_new_tokens capped by the window
    stops: set[int]  # stop token ids
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # (1, V) bool, for the repetition penalty
    on_piece: Callable[[str], None] | None = None
    should_stop: Callable[[], bool] | None = None
    stream: object | None = None  # engine._RowText when text is watched
    output: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)  # chained hashes of the full blocks
    computed: int = 0  # tokens whose KV is in the cache
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache at first admission
    admitted: bool = False
    finish_reason: str | None = None
    error: BaseException | None = None
    cancel: bool = False  # set by the caller's thread (e.g. on KeyboardInterrupt)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output


@dataclass
class Counters:
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    preemptions: int = 0
    steps: int = 0


class Scheduler:
    def __init__(self, blocks: KVBlocks, max_batch: int, prefill_chunk: int, mix: bool = True):
        self.blocks, self.max_batch, self.prefill_chunk, self.mix = blocks, max_batch, prefill_chunk, mix
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.counters = Counters()

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[tuple[Request, int]]:
        """(request, tokens to compute this step) for every request in this step's forward."""
        self._admit()
        batch, budget = [], self.prefill_chunk
        for request in list(self.running):
            if request not in self.running:  # preempted while making room for an older one
                continue
            pending = len(request.tokens) - request.computed
            if pending == 1:
                if self._room_for_next_token(request):
                    batch.append((request, 1, False))
            elif budget > 0:
                count = min(pending, budget)
                budget -= count
                batch.append((request, count, True))
        if not self.mix and any(prefill for _, _, prefill in batch):
            batch = [entry for entry in batch if entry[2]]
        return [(request, count) for request, count, _ in batch]

    def _admit(self) -> None:
        size = self.blocks.block_size
        while self.waiting and len(self.running) < self.max_batch:
            request = self.waiting[0]
            tokens = request.tokens
            matched = self.blocks.match(tokens, (len(tokens) - 1) // size)
            held_elsewhere = sum(1 for b in matched if self.blocks.refs[b] > 0)
            needed = -(-len(tokens) // size) - len(matched)
            if needed > self.blocks.available() - (len(matched) - held_elsewhere):
                return  # the queue waits for memory (FIFO: no overtaking)
            self.waiting.popleft()
            self.blocks.take(matched)
            request.block_table = list(matched)
            for _ in range(needed):
                request.block_table.append(self.blocks.allocate(request.block_table[-1] if request.block_table else None))
            request.hashes = [self.blocks.hash_of[b] for b in matched]
            request.computed = len(matched) * size
            if not request.admitted:
                request.admitted, request.cached_tokens = True, request.computed
                self.counters.prompt_tokens += len(request.prompt)
                self.counters.cached_prompt_tokens += request.computed
            self.running.append(request)

    def _room_for_next_token(self, request: Request) -> bool:
        """A slot for the token this request computes next; preempts the newest if needed."""
        if len(request.tokens) <= len(request.block_table) * self.blocks.block_size:
            return True
        while (block := self.blocks.allocate(request.block_table[-1])) is None:
            victim = self.running[-1]
            self.preempt(victim)
            if victim is request:
                return False
        request.block_table.append(block)
        return True

    def preempt(self, request: Request) -> None:
        self.running.remove(request)
        self._release(request)
        self.waiting.appendleft(request)
        self.counters.preemptions += 1

    def retire(self, request: Request, reason: str) -> None:
        """Finish a request now (finished, cancelled or failed) and free its memory."""
        request.finish_reason = request.finish_reason or reason
        if request in self.running:
            self.running.remove(request)
            self._release(request)
        elif request in self.waiting:
            self.waiting.remove(request)

    def computed(self, request: Request, count: int) -> None:
        """The forward wrote `count` more tokens' KV: hash the blocks that became full."""
        request.computed += count
        size, tokens = self.blocks.block_size, request.tokens
        for i in range(len(request.hashes), request.computed // size):
            previous = request.hashes[-1] if request.hashes else b""
            block = request.block_table[i]
            request.hashes.append(self.blocks.register(block, previous, tokens[i * size : (i + 1) * size]))

    def _release(self, request: Request) -> None:
        self.blocks.release(request.block_table)
        request.block_table, request.hashes, request.computed = [], [], 0
