"""OpenAI chat completions on the engine: messages in, a `chat.completion` object out.

Tool calls: the agent layer's `EngineChat` renders the tools in the model's format (Hermes
`<tool_call>{json}</tool_call>` when the chat template knows tools, Qwen-Agent's ✿FUNCTION✿
markers otherwise) and the reply is parsed with the matching parser. While streaming, text is passed on as
`token` events only outside tool-call blocks, and each complete call becomes a `tool_call`
event, so a client never sees raw markup. Departure from OpenAI: the default temperature is 0
(greedy), which makes answers repeatable; `n` must be 1; penalties are accepted and ignored;
vLLM's `ignore_eos` extension is honoured (benchmarks ask for an exact number of tokens).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from workers.contracts import ChatRequest

DEFAULT_MAX_TOKENS = 256


class ChatInputError(ValueError):
    """A message the engine cannot render (wrong role, unreadable content)."""

    user_error = True


def complete_chat(
    engine: Any,
    request: ChatRequest,
    ctx: Any,
    *,
    model_name: str,
    max_prompt_tokens: int | None = None,
) -> dict[str, Any]:
    """The reply to one chat request; a prompt over `max_prompt_tokens` (a server limit below
    the model's window) or over the window raises PromptTooLongError before any work."""
    from agent import EngineChat
    from agent.parser import StreamParser, TextDelta, ToolCall, parse
    from model_core import SamplingParams

    tools = request.tools if request.tools and request.tool_choice != "none" else None
    messages = [_normalize_message(m) for m in request.messages]
    params = SamplingParams(
        max_new_tokens=request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=request.temperature or 0.0,
        top_p=request.top_p or 1.0,
        seed=request.seed,
        stop=[request.stop] if isinstance(request.stop, str) else list(request.stop or []),
        ignore_eos=bool(request.ignore_eos),
    )
    backend = EngineChat(engine)
    tool_format = backend.tool_format.parser
    if max_prompt_tokens is not None:
        _check_prompt_tokens(engine, backend.render(messages, tools or []), max_prompt_tokens)
    stream = StreamParser(tool_format) if tools else None

    def relay(events: list) -> None:
        for event in events:
            if isinstance(event, TextDelta):
                ctx.on_text(event.text)
            elif isinstance(event, ToolCall) and event.valid:
                ctx.emit("tool_call", _openai_call(event))

    def on_text(piece: str) -> None:
        if stream is None:
            ctx.on_text(piece)
        else:
            relay(stream.feed(piece))

    generation = backend.complete(
        messages, tools or [], params, on_text=on_text, should_stop=ctx.should_stop
    )
    if stream is not None:
        relay(stream.finish())  # a call still open when the model stopped, or held-back text
    content: str | None = generation.text
    calls: list[dict[str, Any]] = []
    if tools:
        parsed = parse(generation.text, tool_format)
        content = parsed.content or None
        calls = [_openai_call(call) for call in parsed.valid_calls]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    finish = (
        "tool_calls" if calls else ("length" if generation.finish_reason == "length" else "stop")
    )
    completion_tokens = len(generation.token_ids)
    return {
        "id": "chatcmpl-" + ctx.job.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": generation.prompt_tokens + completion_tokens,
        },
    }


def _check_prompt_tokens(engine: Any, prompt: str, limit: int) -> None:
    from model_core.errors import PromptTooLongError

    count = len(engine.tokenizer.encode(prompt))
    if count > limit:
        raise PromptTooLongError(
            f"the prompt has {count} tokens, over this server's limit of {limit}"
        )


def _openai_call(call: Any) -> dict[str, Any]:
    return {
        "id": call.id or "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }


def _normalize_message(message: dict[str, Any]) -> dict[str, Any]:
    """OpenAI message -> the plain dict the chat template expects."""
    role = message.get("role")
    if role == "developer":
        role = "system"
    if role not in ("system", "user", "assistant", "tool"):
        raise ChatInputError(f"unknown message role {role!r} (system, user, assistant, tool)")
    out: dict[str, Any] = {"role": role, "content": _text_of(message.get("content"))}
    if role == "assistant" and message.get("tool_calls"):
        out["tool_calls"] = [_template_call(call) for call in message["tool_calls"]]
    if role == "tool":
        out["tool_call_id"] = message.get("tool_call_id")
        if message.get("name"):
            out["name"] = message["name"]
    return out


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ChatInputError("only text content parts are supported")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise ChatInputError("message content must be a string or a list of text parts")


def _template_call(call: Any) -> dict[str, Any]:
    function = call.get("function", {}) if isinstance(call, dict) else {}
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ChatInputError(f"tool call arguments are not JSON: {exc}") from None
    return {
        "type": "function",
        "id": call.get("id"),
        "function": {"name": function.get("name"), "arguments": arguments},
    }
