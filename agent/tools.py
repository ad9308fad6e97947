"""Tools: a name, a JSON Schema for the arguments, and a Python callable; and running them.

A :class:`Tool` is made from a typed function (:func:`tool_from_function`: the signature gives
the schema through pydantic, the docstring gives the descriptions), from a pydantic model
(:func:`tool_from_model`), or from a LangChain tool (``tool_from_invokable`` by its protocol, or
``agent.langchain.tool_from_langchain`` with LangChain's own schema converter;
:func:`as_tool` accepts all three). Arguments are checked against the schema with jsonschema
before the call, so a tool only ever sees arguments that match its declaration.

:func:`run_calls` runs one turn's calls concurrently, one daemon thread each, every call with its
own timeout. Every outcome becomes a :class:`ToolResult` for the model: invalid call, unknown
tool, arguments that fail the schema, exception, timeout. Nothing a tool does ends the loop.
Python threads cannot be killed: a call past its timeout is abandoned (its thread keeps running
until the function returns). Tools that may hang for real (the Python sandbox) enforce their own
limit on a child process.
"""

from __future__ import annotations

import inspect
import json
import re
import threading
import time
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pydantic

from agent.errors import ToolDefinitionError
from agent.parser import ToolCall

MAX_RESULT_CHARS = 8000


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any] = field(repr=False)
    timeout_s: float = 30.0

    def schema(self) -> dict[str, Any]:
        """The OpenAI/Hermes function description the chat templates take."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def check_arguments(self, arguments: dict[str, Any]) -> str | None:
        """None when the arguments match the schema, else one line saying what is wrong."""
        validator = jsonschema.Draft202012Validator(self.parameters)
        try:
            error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        except RecursionError:
            return "the arguments are nested too deeply to check"
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{where}: {error.message}" if where else error.message


@dataclass
class ToolResult:
    call_id: str
    name: str | None
    content: str
    status: str  # ok | error | timeout | invalid
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def tool_from_function(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = 30.0,
) -> Tool:
    """A tool from a typed function; Google-style ``Args:`` lines describe the parameters."""
    doc = inspect.getdoc(fn) or ""
    summary, arg_docs = _split_docstring(doc)
    tool_name = name or fn.__name__
    try:  # resolves string annotations (``from __future__ import annotations``)
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise ToolDefinitionError(f"cannot read the type hints of {tool_name}: {exc}") from exc
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, str)
        default = param.default if param.default is not param.empty else ...
        fields[param.name] = (
            annotation,
            pydantic.Field(default, description=arg_docs.get(param.name)),
        )
    tool_name = name or fn.__name__
    try:
        model = pydantic.create_model(f"{tool_name}_arguments", **fields)
        parameters = _clean_schema(model.model_json_schema())
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise ToolDefinitionError(f"cannot describe the parameters of {tool_name}: {exc}") from exc

    def call(**arguments: Any) -> Any:
        return fn(**dict(model.model_validate(arguments)))

    return Tool(tool_name, description or summary or tool_name, parameters, call, timeout_s)


def tool_from_model(
    model: type[pydantic.BaseModel],
    fn: Callable[[Any], Any],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = 30.0,
) -> Tool:
    """A tool whose arguments are a pydantic model; ``fn`` receives the validated instance."""
    tool_name = name or _snake_case(model.__name__)
    summary = (inspect.getdoc(model) or "").strip()

    def call(**arguments: Any) -> Any:
        return fn(model.model_validate(arguments))

    parameters = _clean_schema(model.model_json_schema())
    return Tool(tool_name, description or summary or tool_name, parameters, call, timeout_s)


def as_tool(obj: Any) -> Tool:
    """A Tool from a Tool, a plain function, or a LangChain tool."""
    if isinstance(obj, Tool):
        return obj
    if _looks_like_langchain_tool(obj):
        return tool_from_invokable(obj)
    if callable(obj):
        return tool_from_function(obj)
    raise ToolDefinitionError(f"cannot make a tool from {type(obj).__name__}")


def as_tools(objs: Iterable[Any]) -> list[Tool]:
    tools = [as_tool(o) for o in objs]
    names = [t.name for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ToolDefinitionError(f"two tools have the same name: {', '.join(duplicates)}")
    return tools


def run_calls(calls: Sequence[ToolCall], tools: Sequence[Tool]) -> list[ToolResult]:
    """Run one turn's calls concurrently; results come back in the order of the calls."""
    by_name = {t.name: t for t in tools}
    results: list[ToolResult | None] = [None] * len(calls)
    running: list[tuple[int, ToolCall, Tool, threading.Thread, dict[str, Any], float]] = []
    for i, call in enumerate(calls):
        refusal = _refusal(call, by_name)
        if refusal is not None:
            results[i] = ToolResult(call.id, call.name, refusal, "invalid")
            continue
        tool = by_name[call.name]  # type: ignore[index]
        outcome: dict[str, Any] = {}
        thread = threading.Thread(
            target=_call_into, args=(tool, call.arguments, outcome), daemon=True
        )
        started = time.perf_counter()
        thread.start()
        running.append((i, call, tool, thread, outcome, started))
    for i, call, tool, thread, outcome, started in running:
        thread.join(max(0.0, started + tool.timeout_s - time.perf_counter()))
        seconds = time.perf_counter() - started
        if thread.is_alive():
            message = (
                f"Error: {tool.name} did not finish within {tool.timeout_s:g} s and was abandoned."
            )
            results[i] = ToolResult(call.id, call.name, message, "timeout", seconds)
        elif "error" in outcome:
            results[i] = ToolResult(call.id, call.name, outcome["error"], "error", seconds)
        else:
            results[i] = ToolResult(
                call.id, call.name, render_result(outcome.get("value")), "ok", seconds
            )
    return [r for r in results if r is not None]


def render_result(value: Any, limit: int = MAX_RESULT_CHARS) -> str:
    """A tool's return value as the text the model reads (JSON for structures), capped."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, pydantic.BaseModel):
        text = value.model_dump_json()
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > limit:
        text = text[:limit] + f"\n[... {len(text) - limit} more characters cut]"
    return text


def _refusal(call: ToolCall, by_name: dict[str, Tool]) -> str | None:
    if not call.valid:
        return (
            f"Error: your tool call could not be read: {call.error}. Write it again as valid JSON."
        )
    if call.name not in by_name:
        known = ", ".join(sorted(by_name)) or "none"
        return f"Error: there is no tool named {call.name!r}. Tools you can call: {known}."
    problem = by_name[call.name].check_arguments(call.arguments)
    if problem is not None:
        return f"Error: invalid arguments for {call.name}: {problem}"
    return None


def _call_into(tool: Tool, arguments: dict[str, Any], outcome: dict[str, Any]) -> None:
    try:
        outcome["value"] = tool.fn(**arguments)
    except Exception as exc:  # a tool's failure is a result for the model, not a crash
        outcome["error"] = f"Error: {tool.name} failed: {type(exc).__name__}: {exc}"


def _split_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(summary, {parameter: description}) from a Google-style docstring."""
    parts = re.split(r"^\s*(?:Args|Arguments|Parameters):\s*$", doc, maxsplit=1, flags=re.M)
    summary = " ".join(parts[0].split())
    arg_docs: dict[str, str] = {}
    if len(parts) == 2:
        current = None
        for line in parts[1].splitlines():
            match = re.match(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if match:
                current = match.group(1)
                arg_docs[current] = match.group(2).strip()
            elif current and line.strip() and not re.match(r"^\s*(Returns|Raises):", line):
                arg_docs[current] += " " + line.strip()
            elif re.match(r"^\s*(Returns|Raises):", line):
                break
    return summary, arg_docs


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's generated titles (noise in the prompt); keep $defs and descriptions."""
    if isinstance(schema, dict):
        return {
            k: _clean_schema(v)
            for k, v in schema.items()
            if not (k == "title" and isinstance(v, str)) and v is not None
        }
    if isinstance(schema, list):
        return [_clean_schema(v) for v in schema]
    return schema


def tool_from_invokable(obj: Any, timeout_s: float = 30.0) -> Tool:
    """A Tool from an object with LangChain's tool protocol (`name`, `description`,
    `args_schema`, `invoke`), without importing LangChain: `agent.langchain` imports this module,
    never the other way round. The call goes through `obj.invoke(arguments)`; a returned
    message gives its `content`."""
    schema = obj.args_schema
    if schema is None:
        parameters: dict[str, Any] = {"type": "object", "properties": {}}
    else:
        raw = schema if isinstance(schema, dict) else schema.model_json_schema()
        parameters = _clean_schema(raw)
    parameters.pop("description", None)  # the tool's description says it

    def call(**arguments: Any) -> Any:
        result = obj.invoke(arguments)
        content = getattr(result, "content", None)
        return result if content is None or isinstance(result, (str, dict)) else content

    return Tool(obj.name, getattr(obj, "description", "") or obj.name, parameters, call, timeout_s)


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _looks_like_langchain_tool(obj: Any) -> bool:
    return hasattr(obj, "invoke") and hasattr(obj, "args_schema") and hasattr(obj, "name")
