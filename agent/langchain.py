"""langchain-core adapters: our model as a LangChain chat model, LangChain tools as our tools.

- :class:`ChatLongctx` is a ``BaseChatModel`` over any :class:`agent.backend.ChatBackend`
  (``ChatLongctx.from_engine(engine)`` for model_core's engine). ``bind_tools`` takes what
  LangChain accepts (dicts, pydantic classes, functions, ``BaseTool``); replies are parsed with
  the backend's tool format, so readable calls land in ``AIMessage.tool_calls`` and unreadable
  ones in ``invalid_tool_calls`` with the parser's reason. ``stream`` yields text as it is
  generated and each call as one ``tool_call_chunk`` once it is complete.
- :func:`tool_from_langchain` wraps a LangChain tool (``@tool`` or ``BaseTool``) as a
  :class:`agent.tools.Tool`, so ``run_agent`` accepts LangChain tools directly.

``tool_choice``: ``"none"`` drops the tools; a tool's name (what ``with_structured_output``
sends) or ``"any"``/``"required"`` keep only the named tools and tell the model in the system
prompt that it must call one. Nothing forces the decoder: a small model may still answer in
text (then ``tool_calls`` is empty).
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from agent.backend import EngineChat
from agent.parser import StreamParser, TextDelta, ToolCall, parse
from agent.tools import Tool

_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool", "chat": "user"}


class ChatLongctx(BaseChatModel):
    """A LangChain chat model over a ChatBackend (model_core's engine through EngineChat)."""

    backend: Any
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0

    @classmethod
    def from_engine(cls, engine: Any, tool_format: str | None = None, **kwargs: Any) -> ChatLongctx:
        return cls(backend=EngineChat(engine, tool_format), **kwargs)

    @property
    def _llm_type(self) -> str:
        return "longctx"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable:
        formatted = [convert_to_openai_tool(t) for t in tools]
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        ours, tools = self._prepare(messages, kwargs)
        generation = self.backend.complete(ours, tools, self._params(stop))
        parsed = parse(generation.text, self.backend.tool_format.parser)
        message = AIMessage(
            content=parsed.content if tools else generation.text,
            tool_calls=[
                tool_call(name=c.name, args=c.arguments, id=_new_id()) for c in parsed.valid_calls
            ]
            if tools
            else [],
            invalid_tool_calls=[
                invalid_tool_call(name=c.name, args=c.raw, id=_new_id(), error=c.error)
                for c in parsed.invalid_calls
            ]
            if tools
            else [],
            usage_metadata=_usage(generation),
            response_metadata={
                "finish_reason": generation.finish_reason,
                "model_provider": "longctx",
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        ours, tools = self._prepare(messages, kwargs)
        pieces: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def produce() -> None:
            try:
                outcome["generation"] = self.backend.complete(
                    ours, tools, self._params(stop), on_text=pieces.put
                )
            except BaseException as exc:  # re-raised in the consumer's thread
                outcome["error"] = exc
            finally:
                pieces.put(None)

        threading.Thread(target=produce, daemon=True).start()
        parser = StreamParser(self.backend.tool_format.parser)
        index = 0
        while (piece := pieces.get()) is not None:
            for event in parser.feed(piece) if tools else [TextDelta(piece)]:
                chunk, index = _chunk(event, index)
                if run_manager is not None and isinstance(event, TextDelta):
                    run_manager.on_llm_new_token(event.text, chunk=chunk)
                yield chunk
        if "error" in outcome:
            raise outcome["error"]
        for event in parser.finish() if tools else []:
            chunk, index = _chunk(event, index)
            yield chunk
        generation = outcome["generation"]
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=_usage(generation),
                response_metadata={
                    "finish_reason": generation.finish_reason,
                    "model_provider": "longctx",
                },
                chunk_position="last",
            )
        )

    def _prepare(
        self, messages: list[BaseMessage], kwargs: dict[str, Any]
    ) -> tuple[list[dict], list[dict]]:
        ours = [_to_dict(m) for m in messages]
        tools = list(kwargs.get("tools") or [])
        choice = kwargs.get("tool_choice")
        if isinstance(choice, dict):
            choice = choice.get("function", {}).get("name")
        if choice == "none":
            return ours, []
        if choice and choice != "auto":
            if choice not in ("any", "required"):
                tools = [t for t in tools if t["function"]["name"] == choice] or tools
            names = ", ".join(t["function"]["name"] for t in tools)
            ours = _with_system_note(
                ours, f"You must answer by calling one of these tools: {names}."
            )
        return ours, tools

    def _params(self, stop: list[str] | None) -> Any:
        if not isinstance(self.backend, EngineChat):
            return None
        from model_core import SamplingParams

        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=list(stop or []),
        )


def tool_from_langchain(lc_tool: Any, timeout_s: float = 30.0) -> Tool:
    """Our Tool around a LangChain tool; the call goes through ``lc_tool.invoke``."""
    function = convert_to_openai_tool(lc_tool)["function"]

    def call(**arguments: Any) -> Any:
        result = lc_tool.invoke(arguments)
        return result.content if isinstance(result, ToolMessage) else result

    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return Tool(function["name"], function.get("description", ""), parameters, call, timeout_s)


def _to_dict(message: BaseMessage) -> dict[str, Any]:
    role = _ROLES.get(message.type, "user")
    out: dict[str, Any] = {"role": role, "content": message.content}
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.get("id") or "",
                "type": "function",
                "function": {"name": c["name"], "arguments": c["args"]},
            }
            for c in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
        out["name"] = message.name or ""
        if not isinstance(message.content, str):
            out["content"] = json.dumps(message.content, ensure_ascii=False, default=str)
    return out


def _with_system_note(messages: list[dict], note: str) -> list[dict]:
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{note}"}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def _chunk(event: TextDelta | ToolCall, index: int) -> tuple[ChatGenerationChunk, int]:
    if isinstance(event, TextDelta):
        return ChatGenerationChunk(
            message=AIMessageChunk(content=event.text), text=event.text
        ), index
    args = json.dumps(event.arguments, ensure_ascii=False) if event.valid else event.raw
    piece = tool_call_chunk(name=event.name, args=args, id=_new_id(), index=index)
    return ChatGenerationChunk(
        message=AIMessageChunk(content="", tool_call_chunks=[piece])
    ), index + 1


def _usage(generation: Any) -> dict[str, int]:
    prompt, completion = int(generation.prompt_tokens), len(generation.token_ids)
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:16]}"
