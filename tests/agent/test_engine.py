"""The agent layer over model_core's engine and the offline default model (Qwen2.5-Coder-0.5B).

Qwen2.5's chat template carries the tools, so the model gets Hermes-style `<tool_call>` calls.
Two worked examples in the conversation (the few-shot history below) keep a 0.5B model's calls
regular enough to drive a real call through the parser, the tool and back. Greedy decoding
keeps the runs repeatable.
"""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from agent import EngineChat, builtin_tools, run_agent
from agent.langchain import ChatLongctx

pytestmark = pytest.mark.slow

EXAMPLES = [("What is 2*3?", "2*3", "6"), ("What is 15+27?", "15+27", "42")]


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    from agent.calculator import calculate

    return str(calculate(expression))


def worked_examples() -> list:
    history = []
    for i, (question, expression, answer) in enumerate(EXAMPLES):
        history += [
            HumanMessage(question),
            AIMessage(
                "",
                tool_calls=[
                    {"name": "calculator", "args": {"expression": expression}, "id": f"c{i}"}
                ],
            ),
            ToolMessage(answer, tool_call_id=f"c{i}", name="calculator"),
            AIMessage(answer),
        ]
    return history


def worked_examples_as_dicts() -> list[dict]:
    from agent.langchain import _to_dict

    return [_to_dict(m) for m in worked_examples()]


def test_the_offline_model_gets_the_hermes_format(engine):
    assert EngineChat(engine).tool_format.name == "hermes"  # Qwen2.5's template has a tools section


def test_bind_tools_invoke_over_the_engine(engine):
    chat = ChatLongctx.from_engine(engine, max_new_tokens=40).bind_tools([calculator])
    message = chat.invoke([*worked_examples(), HumanMessage("What is 37*91?")])
    assert isinstance(message, AIMessage)
    assert message.invalid_tool_calls == []
    assert [c["name"] for c in message.tool_calls] == ["calculator"], message
    assert isinstance(message.tool_calls[0]["args"]["expression"], str)
    assert (
        message.usage_metadata["input_tokens"] > 100 and message.usage_metadata["output_tokens"] > 0
    )


def test_streaming_over_the_engine(engine):
    chat = ChatLongctx.from_engine(engine, max_new_tokens=24)
    chunks = list(chat.stream("Say hello."))
    text = "".join(c.content for c in chunks)
    assert len(chunks) > 2 and text.strip()
    assert chunks[-1].usage_metadata["output_tokens"] > 0


def test_end_to_end_agent_run_on_the_offline_model(engine):
    from model_core import SamplingParams

    model = EngineChat(engine, params=SamplingParams(max_new_tokens=40))
    task = [*worked_examples_as_dicts(), {"role": "user", "content": "What is 37*91?"}]
    result = run_agent(model, task, builtin_tools(names=["calculator"]), max_steps=3)

    first = result.trace[0]
    assert [c.name for c in first.calls] == ["calculator"], first.text
    assert (first.results[0].status, first.results[0].content) == ("ok", "3367"), first.results
    assert result.stopped_reason == "answer", [s.text for s in result.trace]
    assert "3367" in result.answer.replace(",", ""), result.answer
    assert all(
        s.prompt_tokens > 0 and s.completion_tokens > 0 and s.model_seconds > 0
        for s in result.trace
    )
    json.dumps(result.to_dict(), default=str)  # the trace is serialisable for job records


def test_cli_agent_over_a_document_store(engine, tmp_path, monkeypatch, capsys):
    from longctx import cli
    from retrieval import DocumentStore

    store = DocumentStore(tmp_path / "store")
    store.add_text(
        "The Qwen2 models use RoPE with a base frequency of 1,000,000.", source="notes.md"
    )
    monkeypatch.setattr("model_core.load_engine", lambda *a, **k: engine)
    code = cli.main(
        ["agent", "What base frequency does Qwen2 use for RoPE?", "--tools", "search,read,calculator",
         "--max-steps", "2", "--max-new-tokens", "32", "--json", "--data-dir", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "hermes"
    # two steps allowed: an answer after one or two, or a stop at the limit after two
    assert (out["stopped_reason"], out["steps"]) in {("answer", 1), ("answer", 2), ("max_steps", 2)}
    assert out["trace"][0]["calls"], "the first step searched nothing"
    assert out["completion_tokens"] > 0
