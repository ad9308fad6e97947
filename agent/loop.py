"""The agent loop: messages → model → tool calls → results → model … → final answer.

Read it as four lines per step: ask the model (:meth:`ChatBackend.complete`), parse its reply
(:func:`agent.parser.parse`), run the calls concurrently (:func:`agent.tools.run_calls`), append
the assistant turn and one ``tool`` message per call. A reply without calls is the answer.

Every step goes into the trace (:class:`Step`: model text, calls, results, timings, tokens), which
comes back with the answer in :class:`AgentResult`. The loop ends with ``stopped_reason``:
``answer``, ``max_steps`` (the model still wanted tools after ``max_steps`` model calls; the
answer is then the last text it wrote), or ``cancelled`` (``should_stop()`` returned true; checked
before each step and passed to the model for checks between decode steps). ``on_text`` receives
the model's text as it is generated, without the tool-call markup (calls arrive in ``on_step``).

A call the parser could not read stays in the assistant turn as the model wrote it, and its
result says why it failed — the model gets to repair it on the next step (Qwen-Agent instead
feeds the exception text; vLLM's parser drops the call).

Small models loop in two ways, and both end here rather than at the token or step limit: a reply
that starts repeating itself is stopped (`agent.repetition.RepetitionGuard`) and cut after its
first occurrence (the step's ``finish_reason`` is ``repetition``); and a step that only repeats
calls whose results the model already has (same tool, same arguments), or writes call-shaped
JSON that is no call, gets one more model turn without tools (`FINAL_ANSWER` asks for it), whose
text is the answer (the last tool result if that turn, too, is only a call).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.backend import ChatBackend
from agent.parser import StreamParser, TextDelta, ToolCall, parse
from agent.repetition import RepetitionGuard
from agent.tools import Tool, ToolResult, as_tools, run_calls

DEFAULT_SYSTEM = (
    "You are a helpful assistant. Use the tools when they help; when you have the answer, "
    "reply with it directly, without a tool call."
)


FINAL_ANSWER = "Using the tool results above, answer my question in one sentence, without calling a tool."


@dataclass
class Step:
    index: int
    text: str  # the model's raw reply
    content: str  # the reply without its tool calls
    calls: list[ToolCall]
    results: list[ToolResult]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model_seconds: float
    tool_seconds: float


@dataclass
class AgentResult:
    answer: str
    trace: list[Step]
    steps: int
    stopped_reason: str  # answer | max_steps | cancelled
    messages: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "steps": self.steps,
            "stopped_reason": self.stopped_reason,
            "trace": [asdict(s) for s in self.trace],
            "prompt_tokens": sum(s.prompt_tokens for s in self.trace),
            "completion_tokens": sum(s.completion_tokens for s in self.trace),
        }


def run_agent(
    model: ChatBackend,
    task: str | list[dict],
    tools: Sequence[Any],
    *,
    max_steps: int = 8,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[Step], None] | None = None,
    on_text: Callable[[str], None] | None = None,
    params: Any = None,
    system: str | None = None,
) -> AgentResult:
    """Run the loop; ``tools`` may be Tools, typed functions or LangChain tools."""
    tool_list = as_tools(tools)
    schemas = [t.schema() for t in tool_list]
    messages = _start(task, system)
    trace: list[Step] = []
    answered: set[str] = set()  # calls whose results the model has
    for index in range(max_steps):
        if should_stop is not None and should_stop():
            return _result(trace, messages, "cancelled")
        going_round = bool(trace) and not trace[-1].calls  # set below: the last turn had no tools
        step = _one_step(model, index, messages, [] if going_round else schemas, tool_list, params,
                         on_text, should_stop)
        trace.append(step)
        if on_step is not None:
            on_step(step)
        if step.finish_reason == "cancelled":
            return _result(trace, messages, "cancelled")
        calls = {_call_key(c) for c in step.calls}
        if going_round:
            answer = step.content if step.content and not _CALL_SHAPED.match(step.content) else _last_result(trace)
            messages.append({"role": "assistant", "content": answer})
            return _result(trace, messages, "answer", answer=answer)
        if not step.calls and not (answered and _CALL_SHAPED.match(step.content)):
            messages.append({"role": "assistant", "content": step.content})
            return _result(trace, messages, "answer", answer=step.content)
        if calls <= answered:  # nothing new asked (or calls it could not write): ask for the answer
            step.calls, step.results = [], []
            messages.append({"role": "user", "content": FINAL_ANSWER})
            continue
        answered |= calls
        messages.extend(_turn_messages(step))
    return _result(trace, messages, "max_steps")


# A reply that is tool-call JSON the parser could not take as calls (several bare objects, cut
# off at the token limit): not an answer.
_CALL_SHAPED = re.compile(r'\s*(```\w*\s*)?\{\s*"name"\s*:')


def _last_result(trace: list[Step]) -> str:
    return next((r.content for s in reversed(trace) for r in reversed(s.results)), "")


def _call_key(call: ToolCall) -> str:
    return json.dumps([call.name, call.arguments], sort_keys=True, default=str)


def _one_step(model, index, messages, schemas, tools, params, on_text, should_stop) -> Step:
    started = time.perf_counter()
    relay = _TextRelay(on_text, model.tool_format.parser) if on_text and schemas else None
    send = relay.feed if relay else on_text
    guard = RepetitionGuard()

    def watch(piece: str) -> None:
        guard.feed(piece)
        if send is not None:
            send(piece)

    def stop() -> bool:
        return guard.looping or (should_stop is not None and should_stop())

    generation = model.complete(messages, schemas, params, on_text=watch, should_stop=stop)
    if relay is not None:
        relay.finish()
    model_seconds = time.perf_counter() - started
    text, finish_reason = generation.text, generation.finish_reason
    if guard.looping or RepetitionGuard.loops(text):
        text, finish_reason = RepetitionGuard.trim(text), "repetition"
    parsed = parse(text, model.tool_format.parser)
    calls = parsed.calls
    for call in calls:
        call.id = f"step{index}_{call.id}"
    started = time.perf_counter()
    results = run_calls(calls, tools) if calls else []
    return Step(
        index=index,
        text=text,
        content=parsed.content,
        calls=calls,
        results=results,
        finish_reason=finish_reason,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=len(generation.token_ids),
        model_seconds=model_seconds,
        tool_seconds=time.perf_counter() - started,
    )


class _TextRelay:
    """Passes on the text outside tool calls as it streams (calls are reported by on_step)."""

    def __init__(self, on_text: Callable[[str], None], parser: str):
        self.on_text, self.stream = on_text, StreamParser(parser)

    def feed(self, piece: str) -> None:
        self._send(self.stream.feed(piece))

    def finish(self) -> None:
        self._send(self.stream.finish())

    def _send(self, events: list) -> None:
        for event in events:
            if isinstance(event, TextDelta) and event.text:
                self.on_text(event.text)


def _start(task: str | list[dict], system: str | None) -> list[dict]:
    if isinstance(task, str):
        return [
            {"role": "system", "content": system or DEFAULT_SYSTEM},
            {"role": "user", "content": task},
        ]
    messages = [dict(m) for m in task]
    if system is not None and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _turn_messages(step: Step) -> list[dict]:
    """The assistant turn (readable calls as tool_calls, unreadable ones as written) and results."""
    broken = "\n".join(c.raw for c in step.calls if not c.valid)
    assistant = {
        "role": "assistant",
        "content": "\n".join(p for p in (step.content, broken) if p),
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in step.calls
            if c.valid
        ],
    }
    results = [
        {"role": "tool", "tool_call_id": r.call_id, "name": r.name or "", "content": r.content}
        for r in step.results
    ]
    return [assistant, *results]


def _result(
    trace: list[Step], messages: list[dict], reason: str, answer: str | None = None
) -> AgentResult:
    if answer is None:
        answer = next((s.content for s in reversed(trace) if s.content), "")
    return AgentResult(
        answer=answer, trace=trace, steps=len(trace), stopped_reason=reason, messages=messages
    )


__all__ = ["AgentResult", "Step", "Tool", "run_agent"]
