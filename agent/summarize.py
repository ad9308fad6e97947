"""Summaries of stored documents: the whole document in one call when it fits the window,
map-reduce otherwise (summarize pieces that fit, then summarize the summaries, again if needed).

A batch is resumable: `summarize_documents` takes the summaries already `finished` (the worker
keeps them in Redis as each document completes) and calls `on_document` after each new one, so
a batch redelivered after a worker died does not redo finished documents. `should_stop` is
checked between documents and between pieces (and by the engine between decode steps).

`max_input_tokens` caps the tokens of one call below the model's window (cost control; tests
use it to exercise map-reduce on short texts).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from agent.errors import AgentError

SYSTEM_PROMPT = "You write short, faithful summaries. Use only facts from the text."
_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCES = re.compile(r"(?<=[.!?])\s+")
MAX_REDUCE_ROUNDS = 4


class SummaryError(AgentError):
    user_error = True


def summarize_documents(
    engine: Any,
    store: Any,
    document_ids: list[str],
    *,
    finished: dict[str, dict[str, Any]] | None = None,
    on_document: Callable[[str, dict[str, Any]], None] | None = None,
    max_new_tokens: int = 200,
    instructions: str | None = None,
    max_input_tokens: int | None = None,
    on_text: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:
    """One summary per document, in the order asked; documents already `finished` are reused."""
    finished = dict(finished or {})
    for document_id in document_ids:
        if document_id in finished:
            continue
        if should_stop and should_stop():
            break
        info = store.get(document_id)
        summary = summarize_text(
            engine,
            store.read(document_id),
            title=info.source,
            max_new_tokens=max_new_tokens,
            instructions=instructions,
            max_input_tokens=max_input_tokens,
            on_text=on_text,
            should_stop=should_stop,
        )
        if summary["finish_reason"] == "cancelled":
            break
        summary = {"document": document_id, "source": info.source, **summary}
        finished[document_id] = summary
        if on_document:
            on_document(document_id, summary)
    return [finished[d] for d in document_ids if d in finished]


def summarize_text(
    engine: Any,
    text: str,
    *,
    title: str = "the document",
    max_new_tokens: int = 200,
    instructions: str | None = None,
    max_input_tokens: int | None = None,
    on_text: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """{"summary", "mode": "whole" | "map_reduce", "pieces", "rounds", "finish_reason", tokens}."""
    window = min(engine.window, max_input_tokens or engine.window)
    budget = (
        window
        - max_new_tokens
        - engine.count_tokens(SYSTEM_PROMPT + _prompt("", title, instructions, False))
        - 16
    )
    if budget < 32:
        raise SummaryError(
            f"max_new_tokens {max_new_tokens} leaves no room for text in a window of {window} tokens"
        )
    tally = {"prompt_tokens": 0, "completion_tokens": 0}

    def call(body: str, partial: bool, stream: bool) -> tuple[str, str]:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": _prompt(body, title, instructions, partial)},
        ]
        from model_core import SamplingParams

        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.1
        )
        generation = engine.chat(
            messages, params=params, on_text=on_text if stream else None, should_stop=should_stop
        )
        tally["prompt_tokens"] += generation.prompt_tokens
        tally["completion_tokens"] += len(generation.token_ids)
        return generation.text.strip(), generation.finish_reason

    if engine.count_tokens(text) <= budget:
        summary, reason = call(text, partial=False, stream=True)
        return {
            "summary": summary,
            "mode": "whole",
            "pieces": 1,
            "rounds": 1,
            "finish_reason": reason,
            **tally,
        }
    pieces = split_to_fit(text, budget, engine.count_tokens)
    count, rounds = len(pieces), 0
    while True:
        rounds += 1
        partials = []
        for piece in pieces:
            if should_stop and should_stop():
                return {
                    "summary": "",
                    "mode": "map_reduce",
                    "pieces": count,
                    "rounds": rounds,
                    "finish_reason": "cancelled",
                    **tally,
                }
            partials.append(call(piece, partial=True, stream=False)[0])
        joined = "\n\n".join(partials)
        if engine.count_tokens(joined) <= budget or rounds >= MAX_REDUCE_ROUNDS:
            summary, reason = call(joined, partial=False, stream=True)
            return {
                "summary": summary,
                "mode": "map_reduce",
                "pieces": count,
                "rounds": rounds + 1,
                "finish_reason": reason,
                **tally,
            }
        pieces = split_to_fit(joined, budget, engine.count_tokens)


def _prompt(body: str, title: str, instructions: str | None, partial: bool) -> str:
    """What repeats comes first (the prefix cache reuses it): the fixed instruction, then the
    caller's instructions (the same for a whole batch), then the title, then the text."""
    extra = f"\n{instructions}" if instructions and not partial else ""
    what = "Part of" if partial else "Title"
    return f"Summarize the text below in a few sentences.{extra}\n\n{what}: {title}\nText:\n{body}"


def split_to_fit(text: str, budget: int, count_tokens: Callable[[str], int]) -> list[str]:
    """Pieces of at most `budget` tokens, cut at paragraphs, then sentences, then words."""
    pieces: list[str] = []
    current = ""
    for unit in _units(text, budget, count_tokens):
        candidate = f"{current}\n\n{unit}" if current else unit
        if current and count_tokens(candidate) > budget:
            pieces.append(current)
            current = unit
        else:
            current = candidate
    if current:
        pieces.append(current)
    return pieces


def _units(text: str, budget: int, count_tokens: Callable[[str], int]) -> list[str]:
    units = []
    for paragraph in (p.strip() for p in _PARAGRAPHS.split(text)):
        if not paragraph:
            continue
        if count_tokens(paragraph) <= budget:
            units.append(paragraph)
            continue
        for sentence in _SENTENCES.split(paragraph):
            if count_tokens(sentence) <= budget:
                units.append(sentence)
            else:
                units.extend(_word_slices(sentence, budget, count_tokens))
    return units


def _word_slices(sentence: str, budget: int, count_tokens: Callable[[str], int]) -> list[str]:
    words, slices, current = sentence.split(), [], []
    for word in words:
        if current and count_tokens(" ".join([*current, word])) > budget:
            slices.append(" ".join(current))
            current = []
        current.append(word)
    if current:
        slices.append(" ".join(current))
    return slices
