"""The generation engine: one loop per Engine that batches every caller's requests.

    Engine.generate(prompts, params, *, on_text, should_stop) -> [Generation]   (any thread)

vLLM / nano-vllm shape: each `step()` is *schedule → execute → update*.
- schedule (`scheduler.Scheduler`): admit waiting requests that fit the KV budget, reusing cached
  prefix blocks (`blocks.KVBlocks`); pick a prefill chunk for new requests and one decode token
  for every running one.
- execute: one packed forward over all of them (`cache.packed_context`): the linear layers see
  every token of the step at once, attention runs per sequence over its paged KV
  (`cache.SequenceKV`).
- update: sample per request (its own parameters and seed), stream text, retire finished or
  cancelled requests at once (their blocks return to the pool, full ones to the prefix cache).

`generate` / `chat` are thin clients: they submit requests and wait; the loop runs in a thread the
Engine starts when work arrives and that ends when there is none (so an idle Engine holds no
thread). Callbacks (`on_text`, `should_stop`) run on that thread.

The static-cache path of the earlier engine is kept as the reference beside it, gpt-fast style:
`prefill` fills one `KVCache` row in chunks, `decode_step` advances every row by one token
(benches and tests compare against it).

Streaming: a request's text is re-decoded from its tokens after each step and emitted up to the
point that cannot change any more (an incomplete UTF-8 character or a possible beginning of a
stop string is held back), so a stop string never leaks into the stream.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from model_core.blocks import KVBlocks
from model_core.cache import ForwardContext, KVCache, KVPool, SequenceKV, packed_context
from model_core.config import ModelConfig
from model_core.errors import KVBudgetError, ModelError, PromptTooLongError
from model_core.model import Qwen2ForCausalLM
from model_core.sampling import SamplingParams, sample
from model_core.scheduler import Request, Scheduler

DEFAULT_PREFILL_CHUNK = 2048


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache


@dataclass
class RuntimeOptions:
    """How the model runs: attention backend and mode (plain or a long-context mode), chunking."""

    backend: str = "sdpa"
    mode: str = "plain"
    mode_options: dict[str, Any] = field(default_factory=dict)
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK


@dataclass
class ServingOptions:
    """The engine loop's memory and batch: KV budget, block size, prefix cache, batch size."""

    kv_budget_tokens: int | None = None  # None: the model's window (one full-window request)
    block_size: int = 32
    prefix_cache: float = 1.0  # share of the budget unreferenced cached blocks may keep; 0: off
    max_batch: int = 32
    mix_prefill_decode: bool = True  # prefill chunks and decode tokens in one forward


@dataclass
class EngineStats:
    running: int
    waiting: int
    block_size: int
    kv_blocks_total: int
    kv_blocks_used: int
    kv_blocks_cached: int  # held only by the prefix cache
    prompt_tokens: int  # cumulative; hit rate = cached_prompt_tokens / prompt_tokens
    cached_prompt_tokens: int
    generated_tokens: int
    preemptions: int
    steps: int


@torch.inference_mode()
def prefill(model: Qwen2ForCausalLM, cache: KVCache, row: int, prompt: torch.Tensor,
            runtime: RuntimeOptions) -> torch.Tensor:
    """Reference path: write prompt (T,) into static cache row `row` chunk by chunk; logits (V,)
    of its last token."""
    logits = None
    for start in range(0, prompt.shape[0], runtime.prefill_chunk):
        piece = prompt[start : start + runtime.prefill_chunk][None]  # (1, t)
        positions = torch.arange(start, start + piece.shape[1], device=prompt.device)[None]
        ctx = ForwardContext(positions=positions, cache=cache, rows=slice(row, row + 1),
                             backend=runtime.backend, mode=runtime.mode,
                             mode_options=runtime.mode_options)
        logits = model(piece, ctx)  # (1, V)
    return logits[0]


@torch.inference_mode()
def decode_step(model: Qwen2ForCausalLM, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor,
                runtime: RuntimeOptions) -> torch.Tensor:
    """Reference path: tokens (B,) at positions (B,) of rows 0..B-1 -> next-token logits (B, V)."""
    ctx = ForwardContext(positions=positions[:, None], cache=cache, rows=slice(0, tokens.shape[0]),
                         backend=runtime.backend, mode=runtime.mode, mode_options=runtime.mode_options)
    return model(tokens[:, None], ctx)


@functools.cache
def _libgomp() -> ctypes.CDLL | None:
    """The GNU OpenMP runtime torch's CPU build runs on (already loaded: found by its soname), or
    None (another runtime, or none)."""
    try:
        gomp = ctypes.CDLL("libgomp.so.1")
        return gomp if hasattr(gomp, "omp_pause_resource_all") else None
    except OSError:
        return None


def release_openmp_workers() -> None:
    """Give back the calling thread's OpenMP worker threads (they are made again if it needs them).

    Why: libgomp keeps one team of workers per thread that ran a parallel region, and once more
    workers exist than cores its idle workers stop spinning and sleep, so every parallel region
    pays a wake-up. A thread that loaded the model (the main thread) keeps such a team, so the
    engine loop's thread measured 25.5 ms per decode step of the 135M model against 9.6 ms with
    the loader's team given back (2 cores; 8.8 ms on the main thread alone)."""
    gomp = _libgomp()
    if gomp is not None:
        gomp.omp_pause_resource_all(1)  # omp_pause_soft: frees this thread's team


class _RowText:
    """Incremental text of one request: what has been emitted, and stop-string detection."""

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str]):
        self.decode, self.stop = decode, stop
        self.emitted = 0
        self.stopped_at: int | None = None  # character index of the stop string, once found

    def update(self, ids: list[int], final: bool) -> str:
        """New printable text after `ids`; sets stopped_at when a stop string appears."""
        text = self.decode(ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped_at = cut
            safe = cut
        elif final:
            safe = len(text)
        else:
            safe = len(text.rstrip("\ufffd"))
            for s in self.stop:  # hold back a tail that could grow into a stop string
                for n in range(min(len(s) - 1, safe), 0, -1):
                    if text[:safe].endswith(s[:n]):
                        safe -= n
                        break
        piece = text[self.emitted : max(safe, self.emitted)]
        self.emitted = max(safe, self.emitted)
        return piece

    def final_text(self, ids: list[int]) -> str:
        text = self.decode(ids)
        return text[: self.stopped_at] if self.stopped_at is not None else text


class Engine:
    """A loaded model with its tokenizer and its engine loop, ready to generate."""

    def __init__(self, model: Qwen2ForCausalLM, config: ModelConfig, tokenizer, device: str = "cpu",
                 runtime: RuntimeOptions | None = None, window: int | None = None,
                 serving: ServingOptions | None = None):
        self.model, self.config, self.tokenizer = model, config, tokenizer
        self.device = torch.device(device)
        self.runtime = runtime or RuntimeOptions()
        self.window = window or config.max_position_embeddings
        self.dtype = model.lm_head.weight.dtype
        self.serving = serving or ServingOptions()
        self._scheduler: Scheduler | None = None  # sized at first use (callers may widen window)
        self._pool: KVPool | None = None  # allocated once, when the first request arrives
        self._lock = threading.Condition()
        self._incoming: deque[Request] = deque()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            budget, size = self.serving.kv_budget_tokens or self.window, self.serving.block_size
            blocks = KVBlocks(-(-budget // size), size, self.serving.prefix_cache)
            self._scheduler = Scheduler(blocks, self.serving.max_batch, self.runtime.prefill_chunk,
                                        self.serving.mix_prefill_decode)
        return self._scheduler

    @property
    def blocks(self) -> KVBlocks:
        return self.scheduler.blocks

    # --- the caller's side -------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def stop_token_ids(self, params: SamplingParams) -> set[int]:
        ids = set(params.stop_token_ids)
        if params.ignore_eos:
            return ids
        ids |= set(self.config.eos_token_ids)
        if self.tokenizer is not None:
            ids |= set(self.tokenizer.eos_token_ids)
        return ids

    def check_prompt(self, prompt: list[int], max_new: int = 1) -> None:
        if not prompt:
            raise ModelError("the prompt is empty: give at least one token")
        if len(prompt) >= self.window:
            raise PromptTooLongError(
                f"prompt has {len(prompt)} tokens; the model's window is {self.window} "
                "(including at least one new token)")
        bad = [t for t in prompt if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ModelError(f"token id {bad[0]} is outside the vocabulary (0..{self.config.vocab_size - 1})")
        capacity = self.blocks.num_blocks * self.blocks.block_size
        if len(prompt) + max_new - 1 > capacity:
            raise KVBudgetError(
                f"prompt of {len(prompt)} tokens plus up to {max_new} new ones needs "
                f"{len(prompt) + max_new - 1} KV slots; the KV budget is {capacity} tokens "
                "(raise kv_budget_tokens or lower max_new_tokens)")

    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None, *,
                 on_text: Callable[[int, str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list[Generation]:
        params = (params or SamplingParams()).validate()
        for prompt in prompts:
            self.check_prompt(prompt, min(params.max_new_tokens, self.window - len(prompt)))
        if threading.current_thread() is self._thread:
            raise ModelError("generate was called from an engine callback; call it from another thread")
        requests = [self._request(p, params, row, on_text, should_stop) for row, p in enumerate(prompts)]
        self._submit(requests)
        try:
            for request in requests:
                request.done.wait()
        except BaseException:
            for request in requests:
                request.cancel = True
            raise
        failed = next((r.error for r in requests if r.error is not None), None)
        if failed is not None:
            raise failed
        return [self._result(r) for r in requests]

    def chat(self, messages: list[dict], tools: list[dict] | None = None,
             params: SamplingParams | None = None, *, on_text: Callable[[int, str], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> Generation:
        prompt = self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, tools=tools))
        return self.generate([prompt], params, on_text=on_text, should_stop=should_stop)[0]

    def stats(self) -> EngineStats:
        c = self.scheduler.counters
        return EngineStats(
            running=len(self.scheduler.running), waiting=len(self.scheduler.waiting) + len(self._incoming),
            block_size=self.blocks.block_size, kv_blocks_total=self.blocks.num_blocks,
            kv_blocks_used=self.blocks.used(), kv_blocks_cached=len(self.blocks.cached),
            prompt_tokens=c.prompt_tokens, cached_prompt_tokens=c.cached_prompt_tokens,
            generated_tokens=c.generated_tokens, preemptions=c.preemptions, steps=c.steps)

    def _request(self, prompt: list[int], params: SamplingParams, row: int,
                 on_text: Callable[[int, str], None] | None, should_stop) -> Request:
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(1, self.config.vocab_size, dtype=torch.bool, device=self.device)
            seen[0, torch.tensor(prompt, device=self.device)] = True
        watch_text = bool(on_text or params.stop) and self.tokenizer is not None
        return Request(
            prompt=list(prompt), params=params, max_new=min(params.max_new_tokens, self.window - len(prompt)),
            stops=self.stop_token_ids(params), generator=generator, seen=seen,
            on_piece=(lambda piece, row=row: on_text(row, piece)) if on_text else None,
            should_stop=should_stop,
            stream=_RowText(self.tokenizer.decode, params.stop) if watch_text else None)

    def _result(self, r: Request) -> Generation:
        if r.stream is not None:
            text = r.stream.final_text(r.output)
        else:
            text = self.tokenizer.decode(r.output) if self.tokenizer is not None else ""
        return Generation(r.output, text, r.finish_reason or "length", len(r.prompt), r.cached_tokens)

    def _submit(self, requests: list[Request]) -> None:
        if self._pid != os.getpid():  # forked: the parent's loop and memory are not ours
            self.__init__(self.model, self.config, self.tokenizer, str(self.device), self.runtime,
                          self.window, self.serving)
        with self._lock:
            self._incoming.extend(requests)
            if self._thread is None:
                release_openmp_workers()  # this caller's, so the loop's own team keeps spinning
                # Not a daemon: the interpreter waits for it at exit (it ends when idle; a caller
                # interrupted while waiting cancels its requests first).
                self._thread = threading.Thread(target=self._run, args=(torch.get_num_threads(),),
                                                name="engine-loop")
                self._thread.start()
            self._lock.notify()

    # --- the loop ----------------------------------------------------------------------------

    def _run(self, threads: int) -> None:
        torch.set_num_threads(threads)  # the caller's intra-op threads (per-thread in OpenMP)
        with torch.inference_mode():
            while True:
                with self._lock:
                    while self._incoming:
                        self.scheduler.add(self._incoming.popleft())
                    if not self.scheduler.has_work():
                        self._thread = None  # idle: the thread ends; the next submit starts one
                        return
                try:
                    self.step()
                except Exception as exc:  # a failed step fails the requests in it, not the loop
                    for request in list(self.scheduler.running):
                        request.error = exc
                        self._finish(request, "error")

    def step(self) -> None:
        """One iteration: schedule → execute → update."""
        self._retire_cancelled()
        batch = self.scheduler.schedule()
        if not batch:
            return
        logits = self._execute(batch)
        self._update(batch, logits)
        self.scheduler.counters.steps += 1

    def _retire_cancelled(self) -> None:
        asked: dict[int, bool] = {}  # one should_stop call per caller per step
        for request in list(self.scheduler.running) + list(self.scheduler.waiting):
            stop = request.should_stop
            if stop is not None and id(stop) not in asked:
                try:
                    asked[id(stop)] = bool(stop())
                except Exception as exc:
                    request.error, asked[id(stop)] = exc, True
            if request.cancel or (stop is not None and asked[id(stop)]):
                self._finish(request, "cancelled" if request.error is None else "error")

    def _execute(self, batch: list[tuple[Request, int]]) -> torch.Tensor:
        if self._pool is None:
            self._pool = KVPool(self.config, self.blocks.num_blocks, self.blocks.block_size,
                                self.dtype, self.device)
        parts, ids = [], []
        for request, count in batch:
            start = request.computed
            ids.extend(request.tokens[start : start + count])
            parts.append((torch.arange(start, start + count, device=self.device),
                          SequenceKV(self._pool, request.block_table)))
        ctx = packed_context(parts, backend=self.runtime.backend, mode=self.runtime.mode,
                             mode_options=self.runtime.mode_options)
        return self.model(torch.tensor([ids], device=self.device), ctx)  # (len(batch), V)

    def _update(self, batch: list[tuple[Request, int]], logits: torch.Tensor) -> None:
        for i, (request, count) in enumerate(batch):
            self.scheduler.computed(request, count)
            if request.computed < len(request.tokens):  # a prefill chunk short of the prompt's end
                continue
            token = int(sample(logits[i : i + 1], request.params, request.seen, request.generator)[0])
            self._accept(request, token)

    def _accept(self, r: Request, token: int) -> None:
        if token in r.stops:
            return self._finish(r, "stop")
        r.output.append(token)
        self.scheduler.counters.generated_tokens += 1
        if r.seen is not None:
            r.seen[0, token] = True
        if r.stream is not None:
            self._emit(r, r.stream.update(r.output, final=False))
            if r.error is not None:
                return self._finish(r, "error")
            if r.stream.stopped_at is not None:
                return self._finish(r, "stop")
        if len(r.output) >= r.max_new:
            self._finish(r, "length")

    def _emit(self, r: Request, piece: str) -> None:
        if piece and r.on_piece is not None and r.error is None:
            try:
                r.on_piece(piece)
            except Exception as exc:  # the caller's callback failed: that request ends with it
                r.error = exc

    def _finish(self, r: Request, reason: str) -> None:
        if r.stream is not None and reason in ("stop", "length") and r.stream.stopped_at is None:
            self._emit(r, r.stream.update(r.output, final=True))
        self.scheduler.retire(r, reason)
        r.done.set()
