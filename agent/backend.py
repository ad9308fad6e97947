"""The model seen by the agent: a :class:`ChatBackend` turns messages + tools into a Generation.

- :class:`EngineChat` renders the conversation with the checkpoint's tool format
  (:mod:`agent.formats`), encodes it and calls ``engine.generate`` (model_core's contract in
  docs/CONTRACTS.md), with the format's stop strings added.
- :class:`ScriptedChat` replays fixed replies: the model in tests, and a way to see the loop
  work without weights.

A backend also names its ``tool_format`` so the loop parses replies the way they were asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agent.formats import HERMES_BY_HAND, ToolFormat, pick_format


@runtime_checkable
class ChatBackend(Protocol):
    tool_format: ToolFormat

    def complete(
        self,
        messages: list[dict],
        tools: list[dict],
        params: Any = None,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Any:
        """A model_core ``Generation`` (text, token_ids, finish_reason, prompt_tokens)."""
        ...


class EngineChat:
    """A ChatBackend over model_core's engine."""

    def __init__(self, engine: Any, tool_format: str | None = None, params: Any = None):
        self.engine = engine
        self.tool_format = pick_format(engine.tokenizer.chat_template, tool_format)
        self.params = params

    def render(self, messages: list[dict], tools: list[dict]) -> str:
        return self.tool_format.render(self.engine.tokenizer, messages, tools)

    def complete(self, messages, tools, params=None, on_text=None, should_stop=None):
        from model_core import SamplingParams

        params = params or self.params or SamplingParams(max_new_tokens=512)
        if tools:
            extra = [s for s in self.tool_format.stop if s not in params.stop]
            params = dataclasses.replace(params, stop=[*params.stop, *extra])
        prompt = self.engine.tokenizer.encode(
            self.render(messages, tools), add_special_tokens=False
        )
        relay = None if on_text is None else (lambda _index, piece: on_text(piece))
        return self.engine.generate([prompt], params, on_text=relay, should_stop=should_stop)[0]


@dataclass
class ScriptedGeneration:
    """Same fields as model_core's Generation, for replies that no model produced."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0


class ScriptedChat:
    """Replays replies in order; each may be a string or a function of the messages so far.

    ``seen`` keeps the messages of every call; ``chunk`` sets the size of the pieces passed to
    ``on_text``, so streaming consumers see calls split across pieces.
    """

    def __init__(
        self,
        replies: Sequence[str | Callable[[list[dict]], str]],
        tool_format: ToolFormat = HERMES_BY_HAND,
        chunk: int = 7,
    ):
        self.replies = list(replies)
        self.tool_format = tool_format
        self.chunk = chunk
        self.seen: list[list[dict]] = []

    def complete(self, messages, tools, params=None, on_text=None, should_stop=None):
        if len(self.seen) >= len(self.replies):
            raise RuntimeError(f"the script has only {len(self.replies)} replies")
        reply = self.replies[len(self.seen)]
        self.seen.append([dict(m) for m in messages])
        text = reply(messages) if callable(reply) else reply
        if on_text is not None:
            for at in range(0, len(text), self.chunk):
                on_text(text[at : at + self.chunk])
        prompt_words = sum(len(str(m.get("content") or "").split()) for m in messages)
        return ScriptedGeneration(text, list(range(len(text.split()))), "stop", prompt_words)
