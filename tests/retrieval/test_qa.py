"""Answers from a scripted model over a real store: the "[n] answer" format, the no-answer path,
and the repetition stop (agent/qa.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from agent.qa import NO_ANSWER, RepetitionGuard, answer_question

TAR = """OPTIONS
       -k, --keep-old-files
              Don't replace existing files when extracting, treat them as errors.

       --remove-files
              Remove files from disk after adding them to the archive.
"""


@dataclass
class Reply:
    token_ids: list
    text: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int = 0


class WordTokenizer:
    eos_token_ids = [0]

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=True):
        return "\n".join(f"<{m['role']}> {m['content']}" for m in messages) + "\n<assistant> "

    def encode(self, text, add_special_tokens=False):
        self.last_text = text
        return list(range(len(text.split())))


@dataclass
class ScriptedEngine:
    """Streams its reply word by word, checking should_stop between words like the engine does."""

    reply: str
    window: int = 8192
    tokenizer: WordTokenizer = field(default_factory=WordTokenizer)
    prompts: list = field(default_factory=list)

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, prompts, params=None, *, on_text=None, should_stop=None):
        self.prompts.append(prompts[0])
        out, reason = [], "stop"
        for word in self.reply.split(" "):
            if should_stop is not None and should_stop():
                reason = "cancelled"
                break
            out.append(word)
            if on_text:
                on_text(0, word + " ")
        return [Reply([1] * len(out), " ".join(out), reason, len(prompts[0]))]


@pytest.fixture
def tar_store(make_store):
    store = make_store(chunk_tokens=24, overlap_tokens=0)
    store.add_text(TAR, "tar.txt")
    return store


def test_the_source_the_model_cites_is_cited(tar_store):
    engine = ScriptedEngine("Use --keep-old-files. [1]")
    result = answer_question(engine, tar_store, "How do I keep files when unpacking?", mode="rag")
    assert result.answer == "Use --keep-old-files. [1]"
    assert [(c.number, c.attributed) for c in result.citations] == [(1, "model")]
    assert result.extra == {"no_answer": False}


def test_when_no_source_holds_the_answer_it_says_so_and_cites_nothing(tar_store):
    engine = ScriptedEngine("The sources do not say.")
    result = answer_question(engine, tar_store, "Which tar option uploads to a cloud bucket?", mode="rag")
    assert result.answer == NO_ANSWER
    assert result.citations == []
    assert result.extra["no_answer"] is True


@pytest.mark.parametrize("reply, reason", [
    ("The tar option uploads the archive to a cloud bucket.", "restates"),  # adds nothing
    ("Use the `--upload-bucket` option.", "no source"),  # an option no source has
    ("Run tar with --cloud to upload it.", "no source"),
    ("Tar sends it through the Amazon Glacier vault service.", "not in the sources"),  # invented words
])
def test_an_answer_the_sources_do_not_hold_becomes_no_answer_and_keeps_the_model_text(tar_store, reply, reason):
    engine = ScriptedEngine(reply)
    result = answer_question(engine, tar_store, "Which tar option uploads the archive to a cloud bucket?", mode="rag")
    assert result.answer == NO_ANSWER and result.citations == []
    assert result.extra["no_answer"] is True and result.extra["model_answer"] == reply
    assert reason in result.extra["no_answer_reason"], result.extra


@pytest.mark.parametrize("reply", [
    "Use the `--keep-old-files` option.",
    "To keep them, tar has -k, which does not replace existing files when extracting.",
    "No, it treats existing files as errors.",
])
def test_an_answer_in_the_words_of_the_sources_is_kept_and_cited(tar_store, reply):
    engine = ScriptedEngine(reply)
    result = answer_question(engine, tar_store, "How do I keep files when unpacking?", mode="rag")
    assert result.answer == reply and result.extra == {"no_answer": False}
    assert [(c.number, c.attributed) for c in result.citations] == [(1, "overlap")]
    assert "replace existing files" in result.citations[0].quote


def test_a_looping_answer_is_stopped_trimmed_and_reported(tar_store):
    loop = "the files are kept on disk and " * 12
    engine = ScriptedEngine("[1] " + loop)
    result = answer_question(engine, tar_store, "How do I keep files when unpacking?", mode="rag")
    assert result.finish_reason == "repetition"
    assert result.extra["repetition_stopped"] is True
    assert result.answer.count("the files are kept on disk") == 1, result.answer
    assert len(engine.reply.split()) > result.completion_tokens, "generation did not stop early"


def test_the_question_comes_last_after_the_fixed_system_prompt_and_sources(tar_store):
    from agent.qa import SYSTEM_PROMPT

    engine = ScriptedEngine("Use --keep-old-files. [1]")
    question = "How do I keep files when unpacking?"
    answer_question(engine, tar_store, question, mode="rag")
    prompt = engine.tokenizer.last_text
    assert prompt.startswith(f"<system> {SYSTEM_PROMPT}"), "the reusable part must come first"
    assert prompt.index(SYSTEM_PROMPT) < prompt.index("[1] tar.txt") < prompt.index(question)
    assert prompt.rstrip().endswith(f"Question: {question}\nAnswer in one sentence, using the words of the "
                                    "sources above.\n<assistant>"), prompt[-120:]


def test_the_repetition_guard_lets_ordinary_answers_through():
    assert not RepetitionGuard.loops("Use the -k option to keep old files when extracting an archive.")
    assert RepetitionGuard.loops("a b c d e f g h " * 3)
