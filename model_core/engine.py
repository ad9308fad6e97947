"""The generation engine: prefill + decode over a preallocated KV cache, batched, streamed.

The serving loop is small free functions, gpt-fast style: `prefill` fills one cache row from a
prompt in chunks (memory grows with the cache, not with the square of the prompt) and returns
the last position's logits; `decode_step` advances every row by one token. `Engine.generate`
schedules them: prefill each prompt into its own row, then decode all rows together, each at its
own position, until every row has stopped (stop token, stop string, length, or cancel).

Streaming: the text of each row is re-decoded from its tokens after each step and emitted up to
the point that cannot change any more (an incomplete UTF-8 character or a possible beginning of a
stop string is held back), so a stop string never leaks into the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from model_core.config import ModelConfig
from model_core.errors import ModelError, PromptTooLongError
from model_core.model import ForwardContext, KVCache, Qwen2ForCausalLM
from model_core.sampling import SamplingParams, sample

DEFAULT_PREFILL_CHUNK = 2048


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int


@dataclass
class RuntimeOptions:
    """How the model runs: attention backend and mode (plain or a long-context mode), chunking."""

    backend: str = "sdpa"
    mode: str = "plain"
    mode_options: dict[str, Any] = field(default_factory=dict)
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK


@torch.inference_mode()
def prefill(model: Qwen2ForCausalLM, cache: KVCache, row: int, prompt: torch.Tensor,
            runtime: RuntimeOptions) -> torch.Tensor:
    """Write prompt (T,) into cache row `row` chunk by chunk; logits (V,) of its last token."""
    logits = None
    prompt_len = torch.tensor([prompt.shape[0]], device=prompt.device)
    for start in range(0, prompt.shape[0], runtime.prefill_chunk):
        piece = prompt[start : start + runtime.prefill_chunk][None]  # (1, t)
        positions = torch.arange(start, start + piece.shape[1], device=prompt.device)[None]
        ctx = ForwardContext(positions=positions, cache=cache, rows=slice(row, row + 1),
                             backend=runtime.backend, mode=runtime.mode,
                             mode_options=runtime.mode_options, seq_lens=prompt_len)
        logits = model(piece, ctx)  # (1, V)
    return logits[0]


@torch.inference_mode()
def decode_step(model: Qwen2ForCausalLM, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor,
                runtime: RuntimeOptions) -> torch.Tensor:
    """tokens (B,) at positions (B,) of rows 0..B-1 -> next-token logits (B, V)."""
    ctx = ForwardContext(positions=positions[:, None], cache=cache, rows=slice(0, tokens.shape[0]),
                         backend=runtime.backend, mode=runtime.mode, mode_options=runtime.mode_options)
    return model(tokens[:, None], ctx)


class _RowText:
    """Incremental text of one row: what has been emitted, and stop-string detection."""

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
    """A loaded model with its tokenizer, ready to generate."""

    def __init__(self, model: Qwen2ForCausalLM, config: ModelConfig, tokenizer, device: str = "cpu",
                 runtime: RuntimeOptions | None = None, window: int | None = None):
        self.model, self.config, self.tokenizer = model, config, tokenizer
        self.device = torch.device(device)
        self.runtime = runtime or RuntimeOptions()
        self.window = window or config.max_position_embeddings
        self.dtype = model.lm_head.weight.dtype

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

    def check_prompt(self, prompt: list[int]) -> None:
        if not prompt:
            raise ModelError("the prompt is empty: give at least one token")
        if len(prompt) >= self.window:
            raise PromptTooLongError(
                f"prompt has {len(prompt)} tokens; the model's window is {self.window} "
                "(including at least one new token)")
        bad = [t for t in prompt if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ModelError(f"token id {bad[0]} is outside the vocabulary (0..{self.config.vocab_size - 1})")

    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None, *,
                 on_text: Callable[[int, str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list[Generation]:
        params = (params or SamplingParams()).validate()
        for prompt in prompts:
            self.check_prompt(prompt)
        batch = len(prompts)
        longest = max(len(p) for p in prompts)
        max_new = min(params.max_new_tokens, self.window - longest)
        cache = KVCache(self.config, batch, longest + max_new, self.dtype, self.device)
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(batch, self.config.vocab_size, dtype=torch.bool, device=self.device)
            for row, prompt in enumerate(prompts):
                seen[row, torch.tensor(prompt, device=self.device)] = True

        logits = torch.stack([
            prefill(self.model, cache, row, torch.tensor(p, device=self.device), self.runtime)
            for row, p in enumerate(prompts)
        ])  # (B, V)
        positions = torch.tensor([len(p) for p in prompts], device=self.device)
        stops = self.stop_token_ids(params)
        streams = [_RowText(self.tokenizer.decode, params.stop) if self.tokenizer else None for _ in prompts]
        outputs: list[list[int]] = [[] for _ in prompts]
        reasons: list[str | None] = [None] * batch
        watch_text = bool(on_text or params.stop) and self.tokenizer is not None

        for step in range(max_new):
            if should_stop is not None and should_stop():
                reasons = [r or "cancelled" for r in reasons]
                break
            tokens = sample(logits, params, seen, generator)  # (B,)
            for row, token in enumerate(tokens.tolist()):
                if reasons[row] is not None:
                    continue
                if token in stops:
                    reasons[row] = "stop"
                    continue
                outputs[row].append(token)
                if seen is not None:
                    seen[row, token] = True
                if watch_text:
                    piece = streams[row].update(outputs[row], final=False)
                    if streams[row].stopped_at is not None:
                        reasons[row] = "stop"
                    if piece and on_text:
                        on_text(row, piece)
            if all(r is not None for r in reasons) or step == max_new - 1:
                break
            logits = decode_step(self.model, cache, tokens, positions, self.runtime)
            positions = positions + 1

        results = []
        for row, prompt in enumerate(prompts):
            reason = reasons[row] or "length"
            text = ""
            if self.tokenizer is not None:
                if watch_text and reasons[row] != "cancelled" and streams[row].stopped_at is None:
                    tail = streams[row].update(outputs[row], final=True)
                    if tail and on_text:
                        on_text(row, tail)
                text = streams[row].final_text(outputs[row])
            results.append(Generation(outputs[row], text, reason, len(prompt)))
        return results

    def chat(self, messages: list[dict], tools: list[dict] | None = None,
             params: SamplingParams | None = None, *, on_text: Callable[[int, str], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> Generation:
        prompt = self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, tools=tools))
        return self.generate([prompt], params, on_text=on_text, should_stop=should_stop)[0]
