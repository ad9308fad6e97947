"""Prompts for tools as the model reads them, rendered with real chat templates.

Uses model_core's Tokenizer with the Qwen2.5 tokenizer fixture (its template has the Hermes
tools section) and with the SmolLM2 template (plain ChatML, no tools).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import pick_format, tool_from_function
from agent.formats import HERMES, HERMES_BY_HAND, QWEN
from agent.parser import parse

FIXTURES = Path(__file__).parents[1] / "model_core" / "fixtures"


@pytest.fixture(scope="module")
def qwen25():
    from model_core.tokenizer import Tokenizer

    return Tokenizer.from_pretrained_dir(FIXTURES / "qwen25")


class ChatMLTokenizer:
    """Just enough of a tokenizer to render SmolLM2's ChatML template (no tools section)."""

    chat_template = (FIXTURES / "smollm2_chat_template.jinja").read_text()

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=True):
        import jinja2

        assert tools is None, "a template without a tools section never gets tools"
        env = jinja2.Environment()
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt
        )


def get_weather(city: str) -> str:
    """Current weather in a city.

    Args:
        city: the city's name
    """
    return "sunny"


TOOLS = [tool_from_function(get_weather).schema()]
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            },
            {
                "id": "b",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "a", "name": "get_weather", "content": "sunny"},
    {"role": "tool", "tool_call_id": "b", "name": "get_weather", "content": "rain"},
]


def test_format_is_picked_from_the_checkpoint(qwen25):
    assert pick_format(qwen25.chat_template) is HERMES
    assert pick_format(ChatMLTokenizer.chat_template) is QWEN
    assert pick_format(None) is QWEN
    assert pick_format(ChatMLTokenizer.chat_template, "hermes") is HERMES_BY_HAND
    assert pick_format(qwen25.chat_template, "qwen") is QWEN


def test_hermes_through_the_qwen25_template(qwen25):
    prompt = HERMES.render(qwen25, CONVERSATION, TOOLS)
    assert prompt.startswith("<|im_start|>system\nYou are terse.\n\n# Tools")
    assert '"name": "get_weather"' in prompt and "<tools>" in prompt
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        in prompt
    )
    assert (
        '{"name": "get_weather", "arguments": {"city": "Rome"}}' in prompt
    )  # string arguments decoded
    assert (
        "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>"
        in prompt
    )
    assert prompt.endswith("<|im_start|>assistant\n")


def test_hermes_by_hand_matches_the_qwen25_template(qwen25):
    """Our own rendering for templates without tools writes what Qwen2.5's template writes."""
    ours = HERMES_BY_HAND.render(qwen25, CONVERSATION, TOOLS)
    theirs = HERMES.render(qwen25, CONVERSATION, TOOLS)
    assert ours == theirs


def test_qwen_format_on_a_template_without_tools():
    prompt = QWEN.render(ChatMLTokenizer(), CONVERSATION, TOOLS)
    assert prompt.startswith("<|im_start|>system\nYou are terse.\n\n# Tools\n\n## You have access")
    assert "### get_weather\n\nget_weather: Current weather in a city. Parameters: {" in prompt
    assert "✿FUNCTION✿: The tool to use, should be one of [get_weather]" in prompt
    # the turn in progress is left open so the model continues it after ✿RETURN✿:
    assert prompt.endswith(
        "<|im_start|>assistant\nChecking.\n"
        '✿FUNCTION✿: get_weather\n✿ARGS✿: {"city": "Paris"}\n'
        '✿FUNCTION✿: get_weather\n✿ARGS✿: {"city": "Rome"}\n'
        "✿RESULT✿: sunny\n✿RESULT✿: rain\n✿RETURN✿: "
    )


def test_qwen_format_closes_finished_turns():
    finished = [*CONVERSATION, {"role": "assistant", "content": "Sunny in Paris, rain in Rome."}]
    finished.append({"role": "user", "content": "Thanks"})
    prompt = QWEN.render(ChatMLTokenizer(), finished, TOOLS)
    assert (
        "✿RETURN✿: Sunny in Paris, rain in Rome.<|im_end|>\n<|im_start|>user\nThanks<|im_end|>"
        in prompt
    )
    assert prompt.endswith("<|im_start|>assistant\n")


def test_what_a_format_writes_its_parser_reads():
    """A call rendered into the prompt's history is parsed back by the same format's parser."""
    for fmt in (HERMES_BY_HAND, QWEN):
        history = [{"role": "user", "content": "x"}, {**CONVERSATION[2], "content": ""}]
        prompt = fmt.render(ChatMLTokenizer(), [*history, CONVERSATION[3], CONVERSATION[4]], TOOLS)
        turn = prompt.split("<|im_start|>assistant\n")[-2 if fmt is HERMES_BY_HAND else -1]
        calls = parse(turn.split("<|im_end|>")[0], fmt.parser).calls
        assert [(c.name, c.arguments) for c in calls] == [
            ("get_weather", {"city": "Paris"}),
            ("get_weather", {"city": "Rome"}),
        ]


def test_without_tools_tool_turns_become_plain_text(qwen25):
    prompt = HERMES.render(qwen25, CONVERSATION, [])
    assert "# Tools" not in prompt and "<tool_response>\nsunny" in prompt


def test_engine_chat_renders_encodes_and_adds_the_format_stops():
    from agent import EngineChat
    from model_core import Generation, SamplingParams

    class FakeEngine:
        tokenizer = ChatMLTokenizer()
        tokenizer.encode = lambda text, add_special_tokens=False: list(range(len(text.split())))

        def generate(self, prompts, params, on_text=None, should_stop=None):
            self.seen = (prompts, params)
            on_text(0, "hi")
            return [Generation([1], "hi", "stop", len(prompts[0]))]

    engine = FakeEngine()
    chat = EngineChat(engine)
    pieces = []
    reply = chat.complete(CONVERSATION, TOOLS, SamplingParams(stop=["END"]), on_text=pieces.append)
    prompts, params = engine.seen
    assert chat.tool_format is QWEN and reply.text == "hi" and pieces == ["hi"]
    assert params.stop == ["END", "✿RESULT✿", "✿RETURN✿"]
    assert len(prompts[0]) == len(chat.render(CONVERSATION, TOOLS).split())
