"""The official `openai` client against /v1/chat/completions and /v1/models: streaming and not,
with and without tools, and a prompt over the model's window."""

from __future__ import annotations

import json

import openai
import pytest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city"}},
            "required": ["city"],
        },
    },
}
MARKUP = ("<tool_call>", "</tool_call>", "✿FUNCTION✿", "✿ARGS✿")


@pytest.fixture(scope="module")
def oai(stack):
    return openai.OpenAI(
        base_url=stack["url"] + "/v1", api_key="unused", max_retries=0, timeout=200
    )


def test_models(oai, stack):
    assert [m.id for m in oai.models.list().data] == [stack["settings"].model_name]


def test_chat_completion(oai, stack):
    reply = oai.chat.completions.create(
        model=stack["settings"].model_name,
        messages=[
            {"role": "system", "content": "You are brief."},
            {"role": "user", "content": "Name a colour."},
        ],
        max_tokens=8,
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 5


def test_streamed_chat_completion_matches_the_whole_one(oai, stack):
    kwargs = dict(
        model=stack["settings"].model_name,
        messages=[{"role": "user", "content": "Count: one, two,"}],
        max_tokens=8,
    )
    whole = oai.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(
        oai.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage.completion_tokens > 0


def test_tools_give_openai_tool_calls_or_plain_text(oai, stack):
    messages = [
        {"role": "user", "content": "What is the weather in Paris? Call the get_weather tool."}
    ]
    reply = oai.chat.completions.create(
        model=stack["settings"].model_name, messages=messages, tools=[WEATHER], max_tokens=48
    )
    message = reply.choices[0].message
    if message.tool_calls:
        assert reply.choices[0].finish_reason == "tool_calls"
        for call in message.tool_calls:
            assert call.type == "function" and call.function.name == "get_weather", call
            assert "paris" in json.loads(call.function.arguments)["city"].lower(), call
    else:  # plain text: an answer in words, ended as any text is
        assert message.content.strip() and reply.choices[0].finish_reason in ("stop", "length")
    assert not any(mark in (message.content or "") for mark in MARKUP)

    streamed = list(oai.chat.completions.create(model=stack["settings"].model_name, messages=messages,
                                                tools=[WEATHER], max_tokens=48, stream=True))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    calls = [t for c in streamed if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert not any(mark in text for mark in MARKUP)
    assert [t.function.name for t in calls] == [t.function.name for t in message.tool_calls or []]


def test_a_tool_result_turn_is_accepted(oai, stack):
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 21, "sky": "clear"}'},
    ]  # fmt: skip
    reply = oai.chat.completions.create(
        model=stack["settings"].model_name, messages=messages, tools=[WEATHER], max_tokens=16
    )
    assert reply.choices[0].message.content or reply.choices[0].message.tool_calls


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_over_the_window_is_a_400(oai, stack, stream):
    messages = [
        {"role": "user", "content": "word " * 40000}
    ]  # over the 32,768-token window of the offline default (Qwen2.5)
    with pytest.raises(openai.BadRequestError) as caught:
        reply = oai.chat.completions.create(
            model=stack["settings"].model_name, messages=messages, max_tokens=4, stream=stream
        )
        list(reply) if stream else None
    assert caught.value.code == "context_length_exceeded"
    assert "window" in caught.value.message


def test_unknown_model_is_404(oai):
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
