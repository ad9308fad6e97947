"""langchain-core adapters with a scripted backend (the engine-backed test is in test_engine.py)."""

from __future__ import annotations

import ast
import inspect

import pydantic
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

import agent.tools
from agent import ScriptedChat, as_tool, run_agent
from agent.formats import QWEN
from agent.langchain import ChatLongctx, tool_from_langchain


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class GetWeather(pydantic.BaseModel):
    """Current weather in a city."""

    city: str


CALLS = (
    'Let me work it out.\n<tool_call>\n{"name": "multiply", "arguments": {"a": 6, "b": 7}}\n</tool_call>\n'
    "<tool_call>\n{'name': 'GetWeather', 'arguments': {'city': 'Oslo',}}\n</tool_call>\n"
    "<tool_call>\nnot json at all\n</tool_call>"
)


def test_bind_tools_invoke_gives_tool_calls_and_invalid_calls():
    backend = ScriptedChat([CALLS])
    chat = ChatLongctx(backend=backend).bind_tools([multiply, GetWeather])
    message = chat.invoke(
        [SystemMessage("Be brief."), HumanMessage("6*7, and the weather in Oslo?")]
    )

    assert isinstance(message, AIMessage)
    assert message.content == "Let me work it out."
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [
        ("multiply", {"a": 6, "b": 7}),
        ("GetWeather", {"city": "Oslo"}),
    ]
    assert all(c["id"].startswith("call_") for c in message.tool_calls)
    (bad,) = message.invalid_tool_calls
    assert "invalid JSON" in bad["error"] and "not json at all" in bad["args"]
    assert message.usage_metadata["output_tokens"] > 0
    # the backend received both tools as JSON Schema
    assert backend.seen[0][0] == {"role": "system", "content": "Be brief."}


def test_tool_messages_go_back_to_the_backend():
    backend = ScriptedChat(["42"])
    history = [
        HumanMessage("6*7?"),
        AIMessage("", tool_calls=[{"name": "multiply", "args": {"a": 6, "b": 7}, "id": "c1"}]),
        ToolMessage("42", tool_call_id="c1", name="multiply"),
    ]
    reply = ChatLongctx(backend=backend).bind_tools([multiply]).invoke(history)
    assert reply.content == "42"
    _, assistant, result = backend.seen[0]
    assert assistant["tool_calls"][0]["function"] == {
        "name": "multiply",
        "arguments": {"a": 6, "b": 7},
    }
    assert result == {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "multiply"}


def test_streaming_yields_text_then_whole_tool_calls():
    backend = ScriptedChat([CALLS], chunk=4)
    chunks = list(ChatLongctx(backend=backend).bind_tools([multiply, GetWeather]).stream("go"))
    assert len(chunks) > 5
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content.strip() == "Let me work it out."
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [
        ("multiply", {"a": 6, "b": 7}),
        ("GetWeather", {"city": "Oslo"}),
    ]
    assert len(merged.invalid_tool_calls) == 1
    assert merged.usage_metadata["total_tokens"] > 0


def test_qwen_format_backend_and_tool_choice():
    backend = ScriptedChat(['✿FUNCTION✿: GetWeather\n✿ARGS✿: {"city": "Rome"}'], tool_format=QWEN)
    model = ChatLongctx(backend=backend).bind_tools(
        [multiply, GetWeather], tool_choice="GetWeather"
    )
    message = model.invoke("Weather in Rome?")
    assert message.tool_calls[0]["name"] == "GetWeather" and message.tool_calls[0]["args"] == {
        "city": "Rome"
    }
    assert (
        "You must answer by calling one of these tools: GetWeather."
        in backend.seen[0][0]["content"]
    )


def test_without_tools_the_reply_is_plain_text():
    backend = ScriptedChat(["<tool_call> is just text here"])
    message = ChatLongctx(backend=backend).invoke("hi")
    assert message.content == "<tool_call> is just text here" and message.tool_calls == []


def test_a_langchain_tool_runs_in_our_loop():
    wrapped = tool_from_langchain(multiply)
    assert wrapped.parameters["required"] == ["a", "b"]
    backend = ScriptedChat(
        ['<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 12}}</tool_call>', "144"]
    )
    result = run_agent(backend, "12*12?", [multiply])  # the @tool object itself
    assert result.trace[0].results[0].content == "144"
    assert result.answer == "144"


def test_with_structured_output_returns_the_model_instance():
    backend = ScriptedChat(
        ['<tool_call>{"name": "GetWeather", "arguments": {"city": "Oslo"}}</tool_call>']
    )
    parsed = (
        ChatLongctx(backend=backend).with_structured_output(GetWeather).invoke("Weather in Oslo?")
    )
    assert parsed == GetWeather(city="Oslo")


def test_our_loop_takes_a_langchain_tool_as_langchain_describes_it():
    @tool
    def convert(amount: float, currency: str = "EUR") -> str:
        """Convert an amount to a currency."""
        return f"{amount * 2} {currency}"

    ours, theirs = as_tool(convert), tool_from_langchain(convert)  # by protocol; by LangChain
    assert (ours.name, ours.description, ours.parameters) == (
        theirs.name,
        theirs.description,
        theirs.parameters,
    )
    assert ours.fn(amount=3.0) == theirs.fn(amount=3.0) == "6.0 EUR"
    imports = [
        n
        for n in ast.walk(ast.parse(inspect.getsource(agent.tools)))
        if isinstance(n, ast.ImportFrom)
    ]
    assert "agent.langchain" not in {n.module for n in imports}, (
        "agent.tools imports agent.langchain"
    )
