"""The domain functions the tasks call, on a scripted engine (no model, no Redis): citations,
map-reduce splitting, resumable summary batches, OpenAI tool calls from the model's text."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from agent.backend import ScriptedGeneration
from agent.qa import Source, cite
from agent.summarize import split_to_fit, summarize_documents, summarize_text
from workers.chat import complete_chat
from workers.contracts import ChatRequest


class WordTokenizer:
    chat_template = None  # no tools section: the ✿FUNCTION✿ format, like SmolLM2 and Qwen2
    eos_token_ids = [0]

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=True):
        return "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in messages)

    def encode(self, text, add_special_tokens=False):
        return list(range(len(text.split())))


class ScriptedEngine:
    """Replies in order, streamed in small pieces; one token per word."""

    def __init__(self, replies, window=4096):
        self.replies, self.window, self.calls = list(replies), window, []
        self.tokenizer = WordTokenizer()

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, prompts, params=None, *, on_text=None, should_stop=None):
        text = self.replies.pop(0) if self.replies else "ok"
        for i in range(0, len(text), 4):
            if on_text:
                on_text(0, text[i : i + 4])
        return [
            ScriptedGeneration(
                text, token_ids=[1] * len(text.split()), prompt_tokens=len(prompts[0])
            )
        ]

    def chat(self, messages, tools=None, params=None, *, on_text=None, should_stop=None):
        self.calls.append(messages)
        prompt = self.tokenizer.encode(self.tokenizer.apply_chat_template(messages))
        return self.generate([prompt], params, on_text=on_text, should_stop=should_stop)[0]


@dataclass
class Doc:
    id: str
    source: str
    text: str


class DictStore:
    def __init__(self, *docs: Doc):
        self.docs = {d.id: d for d in docs}

    def get(self, document_id):
        return self.docs[document_id]

    def read(self, document_id, start=None, end=None):
        return self.docs[document_id].text[start:end]


@dataclass
class RecordingContext:
    events: list = field(default_factory=list)

    class job:  # noqa: N801 - the attribute the chat code reads
        id = "job_test"

    def should_stop(self):
        return False

    def on_text(self, piece):
        self.events.append(("token", piece))

    def emit(self, kind, data):
        self.events.append((kind, data))


EIFFEL = Doc(
    "d1",
    "eiffel.txt",
    "The tower stands in Paris. It was completed in 1889. It is 330 metres tall.",
)
MOON = Doc("d2", "moon.txt", "The Moon orbits the Earth. Armstrong walked on it in 1969.")
SOURCES = [
    Source(1, "d1", "eiffel.txt", 0, len(EIFFEL.text), None, None),
    Source(2, "d2", "moon.txt", 0, len(MOON.text), None, None),
]


def test_a_cited_number_is_narrowed_to_the_sentence_that_holds_the_answer():
    store = DictStore(EIFFEL, MOON)
    [citation] = cite(
        "It was finished in 1889 [1].", "When was the tower completed?", SOURCES, store
    )
    assert (citation.number, citation.document, citation.attributed) == (1, "d1", "model")
    assert citation.quote == "It was completed in 1889."
    assert EIFFEL.text[citation.start : citation.end] == citation.quote


def test_an_answer_without_markers_is_attributed_by_overlap():
    store = DictStore(EIFFEL, MOON)
    [citation] = cite("Armstrong, in 1969.", "Who walked on the Moon?", SOURCES, store)
    assert (citation.number, citation.attributed) == (2, "overlap")
    assert (
        MOON.text[citation.start : citation.end]
        == citation.quote
        == "Armstrong walked on it in 1969."
    )


def test_numbers_that_name_no_source_are_ignored():
    store = DictStore(EIFFEL, MOON)
    [citation] = cite("See [7]. Paris [1].", "Where is the tower?", SOURCES, store)
    assert citation.number == 1


def test_split_to_fit_keeps_every_word_and_the_budget():
    text = "\n\n".join(
        " ".join(f"w{p}_{i}" for i in range(p * 7 % 23 + 1)) + "." for p in range(40)
    )
    text += "\n\n" + " ".join(f"long{i}" for i in range(100))  # one paragraph over the budget
    pieces = split_to_fit(text, 30, lambda t: len(t.split()))
    assert all(len(p.split()) <= 30 for p in pieces)
    assert " ".join(pieces).split() == text.split()


def test_a_text_over_the_window_is_summarized_by_map_reduce():
    engine = ScriptedEngine(
        ["part one", "part two", "part three", "part four", "final"], window=120
    )
    text = "\n\n".join(f"Paragraph {i} " + "word " * 40 for i in range(4))
    summary = summarize_text(engine, text, title="doc", max_new_tokens=16)
    assert summary["mode"] == "map_reduce" and summary["pieces"] >= 2
    assert len(engine.calls) == summary["pieces"] + 1  # one call per piece, one to reduce


def test_a_batch_resumes_without_redoing_finished_documents():
    engine = ScriptedEngine(["Moon summary."])
    done = {"d1": {"document": "d1", "source": "eiffel.txt", "summary": "old", "mode": "whole"}}
    reported = []
    out = summarize_documents(engine, DictStore(EIFFEL, MOON), ["d1", "d2"], finished=done,
                              on_document=lambda d, s: reported.append(d))  # fmt: skip
    assert [s["document"] for s in out] == ["d1", "d2"]
    assert out[0]["summary"] == "old" and out[1]["summary"] == "Moon summary."
    assert reported == ["d2"] and len(engine.calls) == 1


def test_a_cancelled_batch_stops_between_documents():
    engine = ScriptedEngine(["first"])
    stops = iter([False, True])
    out = summarize_documents(
        engine, DictStore(EIFFEL, MOON), ["d1", "d2"], should_stop=lambda: next(stops)
    )
    assert [s["document"] for s in out] == ["d1"]


def test_chat_turns_a_function_call_into_openai_tool_calls_and_streams_no_markup():
    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    engine = ScriptedEngine(['Let me check.\n✿FUNCTION✿: get_weather\n✿ARGS✿: {"city": "Paris"}'])
    request = ChatRequest(
        model="m", messages=[{"role": "user", "content": "Weather?"}], tools=[weather]
    )
    ctx = RecordingContext()
    reply = complete_chat(engine, request, ctx, model_name="m")
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    streamed = "".join(data for kind, data in ctx.events if kind == "token")
    assert "✿" not in streamed and streamed.strip() == "Let me check."
    assert [data["function"]["name"] for kind, data in ctx.events if kind == "tool_call"] == [
        "get_weather"
    ]


def test_chat_requests_the_worker_could_not_render_are_refused_up_front():
    with pytest.raises(ValueError, match="role must be one of"):
        ChatRequest(model="m", messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(ValueError, match="list of text parts"):
        ChatRequest(model="m", messages=[{"role": "user", "content": [{"type": "image_url"}]}])


def test_a_chat_prompt_over_the_server_limit_is_refused_before_any_work():
    from model_core.errors import PromptTooLongError

    engine = ScriptedEngine(["never said"])
    request = ChatRequest(
        model="m", messages=[{"role": "user", "content": "one two three four five six"}]
    )
    with pytest.raises(PromptTooLongError, match="over this server's limit of 5"):
        complete_chat(engine, request, RecordingContext(), model_name="m", max_prompt_tokens=5)
    assert engine.replies == ["never said"]
