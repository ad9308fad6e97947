"""Find tool calls in model output, whole or while it streams, in Qwen's two formats.

Formats (as Qwen-Agent's function-calling prompts and the Qwen2.5 chat template write them):
- ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, any number of blocks
  (Qwen2.5's chat template, vLLM's ``hermes`` parser).
- ``qwen``: Qwen-Agent's markers ``✿FUNCTION✿: name`` / ``✿ARGS✿: {json}``, results after
  ``✿RESULT✿:`` and the reply after ``✿RETURN✿:`` (Qwen2 checkpoints, which ship no tool template).

One code path for both modes: :class:`StreamParser` is fed text pieces and yields
:class:`TextDelta` and completed :class:`ToolCall` events; :func:`parse` feeds the whole text at
once. So a split across chunks can never change the result (a property test checks it).

Small models damage JSON (trailing commas, single quotes, unclosed braces, arguments as a JSON
string). Bodies go through ``json.loads`` first, then ``json_repair``. Anything still unusable is a
``ToolCall`` with ``error`` set, which the loop shows to the model; the parser never raises.

Departures from the references: Qwen-Agent uses json5 and a regex fallback and surfaces partial
calls while streaming; we only emit a call once it is complete (closed, or the stream ended),
and we also accept a reply that is nothing but a JSON call object (bare or in a ```json fence),
the way Qwen2.5-Coder answers when it ignores the Hermes tags.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import json_repair

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
FN_NAME = "✿FUNCTION✿"
FN_ARGS = "✿ARGS✿"
FN_RESULT = "✿RESULT✿"
FN_EXIT = "✿RETURN✿"

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_FENCE_RE = re.compile(r"^```(?:json|JSON)?\s*(.*?)\s*```$", re.S)


@dataclass
class ToolCall:
    """One call the model asked for. ``error`` is set when it could not be understood."""

    name: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    raw: str = ""
    error: str | None = None
    repaired: bool = False
    id: str = ""

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass
class TextDelta:
    text: str


@dataclass
class ParsedOutput:
    content: str
    calls: list[ToolCall]

    @property
    def valid_calls(self) -> list[ToolCall]:
        return [c for c in self.calls if c.valid]

    @property
    def invalid_calls(self) -> list[ToolCall]:
        return [c for c in self.calls if not c.valid]


def parse(text: str, format: str = "hermes") -> ParsedOutput:
    """All tool calls in a finished model output, plus the text around them."""
    stream = StreamParser(format)
    events = [*stream.feed(text), *stream.finish()]
    content = "".join(e.text for e in events if isinstance(e, TextDelta)).strip()
    calls = [e for e in events if isinstance(e, ToolCall)]
    if len(calls) == 1 and calls[0].raw == content:  # the whole reply was a bare JSON call
        content = ""
    return ParsedOutput(content=content, calls=calls)


class StreamParser:
    """Feed text pieces; get text deltas and completed calls back, in order."""

    def __init__(self, format: str = "hermes"):
        if format not in ("hermes", "qwen"):
            raise ValueError(f"unknown tool-call format {format!r} (hermes or qwen)")
        self.format = format
        markers = (TOOL_CALL_OPEN, TOOL_CALL_CLOSE) if format == "hermes" else _QWEN_MARKERS
        self._splitter = _MarkerSplitter(markers)
        self._state = "text"
        self._name = ""
        self._body = ""
        self._strip_colon = False
        self._count = 0
        self._text_seen = ""  # for the bare-JSON fallback (hermes only)
        self._any_marker = False

    def feed(self, piece: str) -> list[TextDelta | ToolCall]:
        out: list[TextDelta | ToolCall] = []
        for kind, value in self._splitter.feed(piece):
            out.extend(self._step(kind, value))
        return out

    def finish(self) -> list[TextDelta | ToolCall]:
        out: list[TextDelta | ToolCall] = []
        for kind, value in self._splitter.flush():
            out.extend(self._step(kind, value))
        out.extend(self._close_open_call(unclosed=True))
        if self.format == "hermes" and not self._any_marker:
            out.extend(self._bare_json_call())
        return out

    def _step(self, kind: str, value: str) -> Iterator[TextDelta | ToolCall]:
        if kind == "marker":
            self._any_marker = True
            yield from (
                self._hermes_marker(value) if self.format == "hermes" else self._qwen_marker(value)
            )
            return
        if self._strip_colon:
            stripped = value.lstrip(" \t:：")
            if not stripped:
                return
            self._strip_colon = False
            value = stripped
        if self._state == "text":
            self._text_seen += value
            yield TextDelta(value)
        elif self._state == "name":
            self._name += value
        elif self._state in ("body", "args"):
            self._body += value
        # state "result": the model invented a tool result; drop it

    def _hermes_marker(self, marker: str) -> Iterator[ToolCall]:
        if marker == TOOL_CALL_OPEN:
            yield from self._close_open_call(unclosed=True)
            self._state, self._body = "body", ""
        elif self._state == "body":  # the closing tag
            yield from self._close_open_call(unclosed=False)
        # a stray </tool_call> in text is dropped

    def _qwen_marker(self, marker: str) -> Iterator[ToolCall]:
        self._strip_colon = True
        if marker == FN_NAME:
            yield from self._close_open_call(unclosed=False)
            self._state, self._name, self._body = "name", "", ""
        elif marker == FN_ARGS:
            if self._state == "name":
                self._state = "args"
            elif self._state == "args":  # a second ✿ARGS✿ in one call: keep it as text of the args
                self._body += marker
        elif marker == FN_RESULT:
            yield from self._close_open_call(unclosed=False)
            self._state = "result"
        elif marker == FN_EXIT:
            yield from self._close_open_call(unclosed=False)
            self._state = "text"

    def _close_open_call(self, unclosed: bool) -> Iterator[ToolCall | TextDelta]:
        state = self._state
        if state not in ("body", "name", "args"):
            return
        self._state = "text"
        if state == "body":
            yield from self._hermes_call(self._body, unclosed)
        else:
            yield from self._qwen_call(self._name, self._body if state == "args" else None)

    def _hermes_call(self, body: str, unclosed: bool) -> Iterator[ToolCall]:
        raw = TOOL_CALL_OPEN + body + ("" if unclosed else TOOL_CALL_CLOSE)
        for call in calls_from_json_text(body, raw):
            if unclosed and call.valid:
                call.repaired = True
            yield self._numbered(call)

    def _qwen_call(self, name: str, args: str | None) -> Iterator[ToolCall | TextDelta]:
        name = name.strip()
        raw = f"{FN_NAME}: {name}\n{FN_ARGS}: {args or ''}".rstrip()
        trailing = ""
        if args is None or not args.strip():
            arguments: Any = {}
            repaired, error = False, None
        else:
            arguments, trailing, repaired, error = _decode_arguments(args)
        if error is None and not _NAME_RE.match(name):
            error = (
                f"the tool name {name[:40]!r} is not a valid name"
                if name
                else "no tool name after ✿FUNCTION✿"
            )
        call = ToolCall(name=name or None, raw=raw, repaired=repaired, error=error)
        if error is None:
            call.arguments = arguments
        yield self._numbered(call)
        if trailing.strip():
            yield TextDelta("\n" + trailing.strip())

    def _bare_json_call(self) -> Iterator[ToolCall]:
        text = self._text_seen.strip()
        fenced = _FENCE_RE.match(text)
        body = fenced.group(1) if fenced else text
        if not (body.startswith("{") and body.endswith("}")):
            return
        try:
            obj = json.loads(body)
        except ValueError:
            return
        if isinstance(obj, dict) and isinstance(obj.get("name"), str) and _has_arguments(obj):
            yield from (self._numbered(c) for c in calls_from_json_text(body, text))

    def _numbered(self, call: ToolCall) -> ToolCall:
        call.id = f"call_{self._count}"
        self._count += 1
        return call


_QWEN_MARKERS = (FN_NAME, FN_ARGS, FN_RESULT, FN_EXIT)


def calls_from_json_text(body: str, raw: str) -> list[ToolCall]:
    """The calls in one Hermes ``<tool_call>`` body: an object, or a list of them."""
    text = body.strip()
    fenced = _FENCE_RE.match(text)
    if fenced:
        text = fenced.group(1)
    if not text:
        return [ToolCall(name=None, raw=raw, error="empty <tool_call> block")]
    value, repaired, error = _load_json(text)
    if error is not None:
        return [ToolCall(name=None, raw=raw, error=error)]
    items = value if isinstance(value, list) and value else [value]
    return [_call_from_object(item, raw, repaired) for item in items]


def _call_from_object(obj: Any, raw: str, repaired: bool) -> ToolCall:
    if not isinstance(obj, dict):
        return ToolCall(
            name=None, raw=raw, error="a tool call must be a JSON object with name and arguments"
        )
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return ToolCall(name=None, raw=raw, error='the tool call has no "name"')
    name = name.strip()
    if not _NAME_RE.match(name):
        return ToolCall(
            name=name, raw=raw, error=f"the tool name {name[:40]!r} is not a valid name"
        )
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        arguments, trailing, was_repaired, error = _decode_arguments(arguments)
        repaired = repaired or was_repaired or bool(trailing.strip())
        if error is not None:
            return ToolCall(name=name, raw=raw, error=error)
    if not isinstance(arguments, dict):
        return ToolCall(name=name, raw=raw, error='"arguments" must be a JSON object')
    return ToolCall(name=name, arguments=arguments, raw=raw, repaired=repaired)


def _decode_arguments(text: str) -> tuple[Any, str, bool, str | None]:
    """(arguments, text after them, repaired?, error) for an arguments string."""
    text = text.strip()
    fenced = _FENCE_RE.match(text)
    if fenced:
        text = fenced.group(1)
    if not text:
        return {}, "", False, None
    try:  # a clean JSON value followed by prose ("{...}\nNow I wait.")
        value, end = json.JSONDecoder().raw_decode(text)
        if isinstance(value, dict):
            return value, text[end:], False, None
    except (ValueError, RecursionError):
        pass
    value, repaired, error = _load_json(text)
    if error is None and not isinstance(value, dict):
        error = "the arguments must be a JSON object"
    return value, "", repaired, error


def _load_json(text: str) -> tuple[Any, bool, str | None]:
    try:
        return json.loads(text), False, None
    except (ValueError, RecursionError) as exc:
        first_error = str(exc)
    try:
        value = json_repair.loads(text)
    except Exception:  # the repair library has its own failure modes; never let them escape
        value = None
    if value in ("", None) or (
        isinstance(value, (dict, list)) and not value and text not in ("{}", "[]")
    ):
        return None, False, f"invalid JSON that could not be repaired ({first_error})"
    return value, True, None


def _has_arguments(obj: dict) -> bool:
    return "arguments" in obj or "parameters" in obj


class _MarkerSplitter:
    """Split a stream of text into ("text", s) and ("marker", m) pieces.

    Holds back a tail that could be the start of a marker until the next piece decides it.
    """

    def __init__(self, markers: Iterable[str]):
        self.markers = tuple(markers)
        self._pending = ""

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self._pending += piece
        out: list[tuple[str, str]] = []
        while True:
            hit = self._first_marker()
            if hit is None:
                break
            at, marker = hit
            if at:
                out.append(("text", self._pending[:at]))
            out.append(("marker", marker))
            self._pending = self._pending[at + len(marker) :]
        keep = self._partial_tail()
        if len(self._pending) > keep:
            out.append(("text", self._pending[: len(self._pending) - keep]))
            self._pending = self._pending[len(self._pending) - keep :]
        return out

    def flush(self) -> list[tuple[str, str]]:
        rest, self._pending = self._pending, ""
        return [("text", rest)] if rest else []

    def _first_marker(self) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for marker in self.markers:
            at = self._pending.find(marker)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, marker)
        return best

    def _partial_tail(self) -> int:
        """Length of the longest suffix of the pending text that starts some marker."""
        longest = 0
        for marker in self.markers:
            for size in range(min(len(marker) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(marker[:size]):
                    longest = size
                    break
        return longest
