"""The tool-call parser on outputs like the ones Qwen-style models write, whole and streamed."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.parser import StreamParser, TextDelta, ToolCall, parse


def calls(text, fmt="hermes"):
    return [(c.name, c.arguments) for c in parse(text, fmt).calls]


# --- Hermes (<tool_call>) -------------------------------------------------------------------


def test_plain_answer_has_no_calls():
    out = parse("The capital of France is Paris.")
    assert out.calls == [] and out.content == "The capital of France is Paris."


def test_one_call_as_qwen25_writes_it():
    text = '<tool_call>\n{"name": "search_documents", "arguments": {"query": "refund policy"}}\n</tool_call>'
    out = parse(text)
    assert [(c.name, c.arguments, c.valid, c.repaired) for c in out.calls] == [
        ("search_documents", {"query": "refund policy"}, True, False)
    ]
    assert out.content == ""


def test_text_around_calls_is_kept_as_content():
    text = (
        "I will look this up.\n"
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>\n'
        "and then answer."
    )
    out = parse(text)
    assert calls(text) == [("calculator", {"expression": "2+2"})]
    assert out.content == "I will look this up.\n\nand then answer."


def test_several_calls_in_one_reply():
    text = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Berlin"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "3*7"}}\n</tool_call>'
    )
    assert calls(text) == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Berlin"}),
        ("calculator", {"expression": "3*7"}),
    ]
    assert [c.id for c in parse(text).calls] == ["call_0", "call_1", "call_2"]


@pytest.mark.parametrize(
    "body, arguments",
    [
        ('{"name": "f", "arguments": {"a": 1,},}', {"a": 1}),  # trailing commas
        ("{'name': 'f', 'arguments': {'a': 'x'}}", {"a": "x"}),  # single quotes
        ('{"name": "f", "arguments": {"a": [1, 2', {"a": [1, 2]}),  # unclosed
        ('{"name": "f", "arguments": "{\\"a\\": 1}"}', {"a": 1}),  # arguments as a JSON string
        ('{"name": "f", "parameters": {"a": 1}}', {"a": 1}),  # "parameters" instead
        ('```json\n{"name": "f", "arguments": {"a": 1}}\n```', {"a": 1}),  # fenced inside the tag
        ('{"name": "f"}', {}),  # no arguments at all
    ],
)
def test_small_model_damage_is_repaired(body, arguments):
    out = parse(f"<tool_call>\n{body}\n</tool_call>")
    assert len(out.calls) == 1
    call = out.calls[0]
    assert call.valid, call.error
    assert (call.name, call.arguments) == ("f", arguments)


def test_unclosed_tag_at_end_of_output_still_counts():
    out = parse('Sure.\n<tool_call>\n{"name": "f", "arguments": {"q": "x"}}')
    assert [(c.name, c.arguments, c.repaired) for c in out.calls] == [("f", {"q": "x"}, True)]
    assert out.content == "Sure."


def test_missing_close_before_the_next_call():
    text = '<tool_call>{"name": "a", "arguments": {}}\n<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    assert calls(text) == [("a", {}), ("b", {})]


def test_list_of_calls_in_one_block():
    text = '<tool_call>[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]</tool_call>'
    assert calls(text) == [("a", {"x": 1}), ("b", {})]


@pytest.mark.parametrize(
    "body, reason",
    [
        ("", "empty"),
        ("I want to call the search tool", "invalid JSON"),
        ('{"arguments": {"q": 1}}', 'no "name"'),
        ('{"name": "f", "arguments": [1, 2]}', "must be a JSON object"),
        ('{"name": "rm -rf /", "arguments": {}}', "not a valid name"),
        ('"just a string"', "JSON object"),
    ],
)
def test_unrepairable_calls_become_invalid_with_a_reason(body, reason):
    out = parse(f"Let me try.<tool_call>{body}</tool_call>")
    assert len(out.calls) == 1
    call = out.calls[0]
    assert not call.valid
    assert reason in call.error
    assert call.raw == f"<tool_call>{body}</tool_call>"
    assert out.content == "Let me try."


def test_bare_json_reply_is_a_call_like_qwen25_coder_writes():
    text = '```json\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n```'
    out = parse(text)
    assert calls(text) == [("calculator", {"expression": "1+1"})] and out.content == ""


def test_json_that_is_not_a_call_stays_text():
    out = parse('{"answer": 42}')
    assert out.calls == [] and out.content == '{"answer": 42}'


def test_stray_closing_tag_is_dropped():
    out = parse("All done.</tool_call>")
    assert out.calls == [] and out.content == "All done."


# --- Qwen-Agent (✿FUNCTION✿) ------------------------------------------------------------------


def test_qwen_format_one_call():
    text = '✿FUNCTION✿: search_documents\n✿ARGS✿: {"query": "warranty"}'
    assert calls(text, "qwen") == [("search_documents", {"query": "warranty"})]


def test_qwen_format_thought_then_call():
    text = 'I should compute this.\n✿FUNCTION✿: calculator\n✿ARGS✿: {"expression": "12*12"}\n'
    out = parse(text, "qwen")
    assert out.content == "I should compute this."
    assert calls(text, "qwen") == [("calculator", {"expression": "12*12"})]


def test_qwen_format_parallel_calls():
    text = (
        '✿FUNCTION✿: get_weather\n✿ARGS✿: {"city": "Paris"}\n'
        '✿FUNCTION✿: get_weather\n✿ARGS✿: {"city": "Rome"}\n'
    )
    assert calls(text, "qwen") == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
    ]


def test_qwen_format_invented_result_is_dropped_and_reply_kept():
    text = '✿FUNCTION✿: calculator\n✿ARGS✿: {"expression": "2*3"}\n✿RESULT✿: 6\n✿RETURN✿: The answer is 6.'
    out = parse(text, "qwen")
    assert calls(text, "qwen") == [("calculator", {"expression": "2*3"})]
    assert out.content == "The answer is 6."


def test_qwen_format_fullwidth_colon_and_repair():
    text = "✿FUNCTION✿：lookup\n✿ARGS✿：{'term': 'RoPE',}"
    out = parse(text, "qwen")
    assert [(c.name, c.arguments, c.repaired) for c in out.calls] == [
        ("lookup", {"term": "RoPE"}, True)
    ]


def test_qwen_format_prose_after_the_arguments_is_text():
    text = '✿FUNCTION✿: lookup\n✿ARGS✿: {"term": "DCA"}\nI will wait for the result.'
    out = parse(text, "qwen")
    assert calls(text, "qwen") == [("lookup", {"term": "DCA"})]
    assert out.content == "I will wait for the result."


def test_qwen_format_without_args_means_no_arguments():
    assert calls("✿FUNCTION✿: list_documents\n✿RESULT✿:", "qwen") == [("list_documents", {})]


@pytest.mark.parametrize(
    "text, reason",
    [
        ("✿FUNCTION✿: \n✿ARGS✿: {}", "no tool name"),
        ("✿FUNCTION✿: search the web\n✿ARGS✿: {}", "not a valid name"),
        ("✿FUNCTION✿: f\n✿ARGS✿: search for cats", "invalid JSON"),
        ("✿FUNCTION✿: f\n✿ARGS✿: [1, 2]", "JSON object"),
    ],
)
def test_qwen_format_invalid_calls(text, reason):
    (call,) = parse(text, "qwen").calls
    assert not call.valid and reason in call.error


def test_tags_of_the_other_format_are_plain_text():
    out = parse('<tool_call>{"name": "f", "arguments": {}}</tool_call>', "qwen")
    assert out.calls == [] and out.content.startswith("<tool_call>")


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="hermes or qwen"):
        StreamParser("xml")


# --- streaming ---------------------------------------------------------------------------------

HERMES_SAMPLE = (
    "Let me check both.\n"
    '<tool_call>\n{"name": "search_documents", "arguments": {"query": "cache size"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1.5 * 2 ** 30",}}\n</tool_call>'
)
QWEN_SAMPLE = (
    'Computing.\n✿FUNCTION✿: calculator\n✿ARGS✿: {"expression": "7*6"}\n'
    "✿FUNCTION✿: search_documents\n✿ARGS✿: {'query': 'answer'}\n✿RESULT✿: made up\n✿RETURN✿: Done."
)


def stream(text, fmt, size):
    parser = StreamParser(fmt)
    events = []
    for at in range(0, len(text), size):
        events.extend(parser.feed(text[at : at + size]))
    events.extend(parser.finish())
    return events


@pytest.mark.parametrize("fmt, text", [("hermes", HERMES_SAMPLE), ("qwen", QWEN_SAMPLE)])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 1000])
def test_calls_split_across_chunks_parse_the_same(fmt, text, size):
    events = stream(text, fmt, size)
    whole = parse(text, fmt)
    got_calls = [(e.name, e.arguments) for e in events if isinstance(e, ToolCall)]
    got_text = "".join(e.text for e in events if isinstance(e, TextDelta)).strip()
    assert got_calls == [(c.name, c.arguments) for c in whole.calls]
    assert got_text == whole.content
    assert len(got_calls) == 2


def test_stream_yields_text_before_the_call_completes():
    parser = StreamParser("hermes")
    first = parser.feed("Looking it up. <tool")
    assert [e.text for e in first if isinstance(e, TextDelta)] == ["Looking it up. "]
    middle = parser.feed('_call>{"name": "f", "argum')
    assert middle == []
    done = parser.feed('ents": {"x": 1}}</tool_call> ok')
    assert [(e.name, e.arguments) for e in done if isinstance(e, ToolCall)] == [("f", {"x": 1})]


def test_a_lone_angle_bracket_is_released_at_the_end():
    parser = StreamParser("hermes")
    assert parser.feed("a <") == [TextDelta("a ")]
    assert parser.finish() == [TextDelta("<")]


# --- properties: nothing makes it raise, chunking never changes the result ----------------------

ALPHABET = st.sampled_from(
    list("{}[]\":,' \nabcfn01")
    + [
        "<tool_call>",
        "</tool_call>",
        "✿FUNCTION✿",
        "✿ARGS✿",
        "✿RESULT✿",
        "✿RETURN✿",
        '"name"',
        '"arguments"',
        "：",
        "```",
        "<tool",
        "✿FUN",
    ]
)
texts = st.one_of(st.text(max_size=300), st.lists(ALPHABET, max_size=60).map("".join))


@settings(max_examples=300, deadline=None)
@given(text=texts, fmt=st.sampled_from(["hermes", "qwen"]))
def test_no_input_makes_the_parser_raise_and_every_call_is_usable_or_explained(text, fmt):
    out = parse(text, fmt)  # raising here fails the test
    for call in out.calls:
        assert isinstance(call.arguments, dict)
        if call.valid:
            assert call.name and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}", call.name), call
        else:
            assert isinstance(call.error, str) and call.error.strip(), f"no reason given: {call}"
    if not any(mark in text for mark in ("<", "✿", "{", "[", "`")):
        assert (out.content, out.calls) == (text.strip(), []), "plain text changed or made a call"


@pytest.mark.parametrize(
    "fmt, head", [("hermes", "<tool_call>"), ("qwen", "✿FUNCTION✿: f\n✿ARGS✿: ")]
)
@pytest.mark.parametrize(
    "body", ["[" * 50000, '{"a":' * 5000, '{"name": "f", "arguments": ' + "{" * 3000]
)
def test_deeply_nested_json_is_an_invalid_call_not_a_recursion_error(fmt, head, body):
    (call,) = parse(head + body, fmt).calls
    assert not call.valid


@settings(max_examples=200, deadline=None)
@given(
    text=texts,
    fmt=st.sampled_from(["hermes", "qwen"]),
    cuts=st.lists(st.integers(0, 300), max_size=8),
)
def test_any_chunking_gives_the_same_calls(text, fmt, cuts):
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    parser = StreamParser(fmt)
    events = []
    for a, b in zip(points, points[1:], strict=False):
        events.extend(parser.feed(text[a:b]))
    events.extend(parser.finish())
    whole = parse(text, fmt)
    streamed = [(e.name, e.arguments, e.error) for e in events if isinstance(e, ToolCall)]
    assert streamed == [(c.name, c.arguments, c.error) for c in whole.calls]
