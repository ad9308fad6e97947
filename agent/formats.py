"""Prompt formats for tool calling: how tools, calls and results are written into the prompt.

Messages are OpenAI-style dicts: ``system`` / ``user`` / ``assistant`` (optional ``tool_calls``:
``[{"id", "type": "function", "function": {"name", "arguments": dict}}]``) / ``tool``
(``tool_call_id``, ``name``, ``content``).

- ``hermes`` (Qwen2.5): when the checkpoint's chat template has a tools section, the template
  renders everything (``tokenizer.apply_chat_template(messages, tools=...)``). When it has none
  (a plain ChatML template), we write the same text ourselves: the Qwen2.5 "# Tools" system
  block, calls as ``<tool_call>`` blocks in the assistant turn, results as a user turn of
  ``<tool_response>`` blocks — then render with the template, without tools.
- ``qwen`` (Qwen-Agent's ✿ markers, for Qwen2): the system prompt lists the tools (jinja2,
  after ``qwen_agent/llm/fncall_prompts/qwen_fncall_prompt.py``); calls, ``✿RESULT✿`` lines and
  the reply after ``✿RETURN✿:`` are folded into one assistant turn. A turn still waiting for the
  model is left open (no end-of-turn token) so the model continues it, as Qwen-Agent does.
  ``✿RESULT✿`` and ``✿RETURN✿`` are stop strings, so the model cannot invent a tool result.

:func:`pick_format` reads the checkpoint's chat template: if it mentions tools, Hermes through
the template; otherwise the ✿ format. Either can be forced by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import jinja2

from agent.parser import FN_ARGS, FN_EXIT, FN_NAME, FN_RESULT

_JINJA = jinja2.Environment(keep_trailing_newline=False)
_JINJA.filters["tojson"] = lambda value: json.dumps(
    value, ensure_ascii=False
)  # as Qwen's templates

HERMES_SYSTEM = _JINJA.from_string(
    """{{ system }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>"""
)

QWEN_SYSTEM = _JINJA.from_string(
    """{{ system }}

# Tools

## You have access to the following tools:
{% for tool in tools %}
### {{ tool.name }}

{{ tool.name }}: {{ tool.description }} Parameters: {{ tool.parameters | tojson }} \
Format the arguments as a JSON object.
{% endfor %}
## When you need to call a tool, please insert the following command in your reply, which can \
be called zero or multiple times according to your needs:

✿FUNCTION✿: The tool to use, should be one of [{{ tools | map(attribute="name") | join(",") }}]
✿ARGS✿: The input of the tool
✿RESULT✿: Tool results
✿RETURN✿: Reply based on tool results. Images need to be rendered as ![](url)"""
)

DEFAULT_SYSTEM = "You are a helpful assistant."


class ChatTemplater(Protocol):
    chat_template: str | None

    def apply_chat_template(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
    ) -> str: ...


@dataclass(frozen=True)
class ToolFormat:
    """A way of writing tools into a prompt; ``parser`` names the parser for the model's reply."""

    name: str
    parser: str
    stop: tuple[str, ...]
    use_template_tools: bool = False

    def render(self, tokenizer: ChatTemplater, messages: list[dict], tools: list[dict]) -> str:
        if not tools:
            return tokenizer.apply_chat_template(_plain(messages), add_generation_prompt=True)
        if self.name == "hermes" and self.use_template_tools:
            return tokenizer.apply_chat_template(
                _for_template(messages), tools=tools, add_generation_prompt=True
            )
        if self.name == "hermes":
            return tokenizer.apply_chat_template(
                _hermes_by_hand(messages, tools), add_generation_prompt=True
            )
        closed, open_turn = _qwen_fold(messages, tools)
        return tokenizer.apply_chat_template(closed, add_generation_prompt=True) + open_turn


HERMES = ToolFormat("hermes", parser="hermes", stop=("<tool_response>",), use_template_tools=True)
HERMES_BY_HAND = ToolFormat("hermes", parser="hermes", stop=("<tool_response>",))
QWEN = ToolFormat("qwen", parser="qwen", stop=(FN_RESULT, FN_EXIT))
FORMATS = {"hermes": HERMES, "qwen": QWEN}


def template_has_tools(chat_template: str | None) -> bool:
    return bool(chat_template) and "tools" in chat_template  # type: ignore[operator]


def pick_format(chat_template: str | None, forced: str | None = None) -> ToolFormat:
    """The format for a checkpoint: forced by name, else Hermes if its template knows tools."""
    if forced is not None and forced not in FORMATS:
        from agent.errors import ToolDefinitionError

        raise ToolDefinitionError(f"unknown tool format {forced!r}; choose hermes or qwen")
    has_tools = template_has_tools(chat_template)
    if forced == "qwen" or (forced is None and not has_tools):
        return QWEN
    return HERMES if has_tools else HERMES_BY_HAND


def arguments_of(tool_call: dict) -> dict:
    """The arguments of an OpenAI-style tool call as a dict (they may arrive as a JSON string)."""
    arguments = tool_call.get("function", tool_call).get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return {"_raw": arguments}
    return arguments if isinstance(arguments, dict) else {"_value": arguments}


def _text(content: Any) -> str:
    """Message content as text (LangChain / OpenAI content may be a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _plain(messages: list[dict]) -> list[dict]:
    """Tool turns written as plain text, for a prompt without tools."""
    return _hermes_by_hand(messages, tools=[])


def _for_template(messages: list[dict]) -> list[dict]:
    """Copies whose tool-call arguments are dicts, as Qwen2.5's template expects (it uses tojson)."""
    out = []
    for message in messages:
        message = {**message, "content": _text(message.get("content"))}
        if message.get("tool_calls"):
            message["tool_calls"] = [
                {
                    "type": "function",
                    "id": c.get("id", ""),
                    "function": {
                        "name": c.get("function", c).get("name"),
                        "arguments": arguments_of(c),
                    },
                }
                for c in message["tool_calls"]
            ]
        out.append(message)
    return out


def _hermes_by_hand(messages: list[dict], tools: list[dict]) -> list[dict]:
    out: list[dict] = []
    system = DEFAULT_SYSTEM
    rest = messages
    if messages and messages[0].get("role") == "system":
        system, rest = _text(messages[0].get("content")), messages[1:]
    if tools:
        out.append({"role": "system", "content": HERMES_SYSTEM.render(system=system, tools=tools)})
    elif rest is not messages:  # keep the caller's own system message
        out.append({"role": "system", "content": system})
    for message in rest:
        role = message.get("role")
        if role == "assistant":
            text = _text(message.get("content"))
            for call in message.get("tool_calls") or []:
                body = {
                    "name": call.get("function", call).get("name"),
                    "arguments": arguments_of(call),
                }
                text += f"\n<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"
            out.append({"role": "assistant", "content": text.strip()})
        elif role == "tool":
            response = f"<tool_response>\n{_text(message.get('content'))}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("_tool_responses"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "_tool_responses": True})
        else:
            out.append({"role": role, "content": _text(message.get("content"))})
    return [{k: v for k, v in m.items() if not k.startswith("_")} for m in out]


def _qwen_fold(messages: list[dict], tools: list[dict]) -> tuple[list[dict], str]:
    """(closed messages, text of the open assistant turn) in the ✿ format."""
    system = DEFAULT_SYSTEM
    rest = messages
    if messages and messages[0].get("role") == "system":
        system, rest = _text(messages[0].get("content")), messages[1:]
    functions = [t.get("function", t) for t in tools]
    closed: list[dict] = [
        {"role": "system", "content": QWEN_SYSTEM.render(system=system, tools=functions)}
    ]
    turn: str | None = None  # the assistant turn being folded
    results: list[str] = []
    for message in rest:
        role = message.get("role")
        if role == "assistant":
            if results:
                turn = (turn or "") + _qwen_results(results)
                results = []
            text = _text(message.get("content"))
            for call in message.get("tool_calls") or []:
                name = call.get("function", call).get("name")
                text += f"\n{FN_NAME}: {name}\n{FN_ARGS}: {json.dumps(arguments_of(call), ensure_ascii=False)}"
            turn = text.lstrip("\n") if turn is None else turn + text
        elif role == "tool":
            results.append(_text(message.get("content")))
        else:
            if turn is not None:
                closed.append(
                    {"role": "assistant", "content": (turn + _qwen_results(results)).strip()}
                )
                turn, results = None, []
            closed.append({"role": role, "content": _text(message.get("content"))})
    if turn is None:
        return closed, ""
    if results:
        return closed, turn + _qwen_results(results)
    closed.append({"role": "assistant", "content": turn.strip()})
    return closed, ""


def _qwen_results(results: list[str]) -> str:
    if not results:
        return ""
    return "".join(f"\n{FN_RESULT}: {r}" for r in results) + f"\n{FN_EXIT}: "
