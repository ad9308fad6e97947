"""Question answering over stored documents, with numbered citations that point to real spans.

Modes: `stuff` puts whole documents in the prompt (an error when they do not fit the window),
`rag` puts the best retrieved chunks, `auto` does `stuff` when everything fits and `rag`
otherwise (the Qwen2 report's point: with a 128K window, whole documents often fit, and then
the model sees everything). The sources are numbered `[n]` in the prompt and the model is asked
to cite them.

Citations: the numbers the model wrote are kept when they name a source. Small models often
write none; then the answer is attributed to the source whose sentences overlap most with the
answer (and the question) and the marker is appended, flagged `attributed: "overlap"`. Each
citation is narrowed from its source passage to the best-matching sentence, so `quote` is the
text at `[start, end)` of the document's extracted text and a reader can check it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.errors import AgentError

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources given. After each fact, cite its "
    "source number in brackets, like [1]. If the sources do not contain the answer, say that "
    "you do not know."
)
_WORD = re.compile(r"[A-Za-z0-9]+")
_SENTENCE = re.compile(r"[^\n]+?(?:[.!?]+(?=\s|$)|$)", re.M)  # "2.0" does not end one
_MARKER = re.compile(r"\[(\d{1,3})\]")
_STOPWORDS = frozenset(
    "a an and are as at be by did do does for from has have how in is it its of on or that the "
    "this to was were what when where which who why will with".split()
)


class QAError(AgentError):
    """A question that cannot be answered as asked (no documents, documents too long for stuff)."""

    user_error = True


@dataclass
class Source:
    number: int
    document: str
    source: str
    start: int
    end: int
    page: int | None
    chunk: int | None  # None when the whole document is the source


@dataclass
class QACitation(Source):
    """A cited span: `quote` is the document's text at [start, end)."""

    quote: str
    attributed: str  # "model": the model wrote [n]; "overlap": chosen by word overlap


@dataclass
class QAAnswer:
    answer: str
    citations: list[QACitation]
    sources: list[Source]
    mode: str  # "full" (whole documents) or "retrieved"
    context_tokens: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def answer_question(
    engine: Any,
    store: Any,
    question: str,
    *,
    collection: str | None = None,
    document_ids: list[str] | None = None,
    mode: str = "auto",
    max_new_tokens: int = 256,
    top_k: int = 6,
    on_text: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> QAAnswer:
    from model_core import SamplingParams

    overhead = engine.count_tokens(SYSTEM_PROMPT + _user_prompt("", question)) + 32
    budget = engine.window - max_new_tokens - overhead
    packed = _pack(
        store, question, budget, engine.count_tokens, collection, document_ids, mode, top_k
    )
    if not packed.citations:
        raise QAError("no documents to answer from: the collection is empty or the ids are unknown")
    sources = [
        Source(c.number, c.document, c.source, c.start, c.end, c.page, c.chunk)
        for c in packed.citations
    ]
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": _user_prompt(packed.text, question)},
    ]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    generation = engine.chat(messages, params=params, on_text=on_text, should_stop=should_stop)
    answer = generation.text.strip()
    citations = cite(answer, question, sources, store)
    if citations and citations[0].attributed == "overlap":
        answer = f"{answer} [{citations[0].number}]"
    return QAAnswer(
        answer=answer,
        citations=citations,
        sources=sources,
        mode=packed.mode,
        context_tokens=packed.tokens,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=len(generation.token_ids),
        finish_reason=generation.finish_reason,
    )


def _user_prompt(context: str, question: str) -> str:
    return f"Sources:\n\n{context}\n\nQuestion: {question}\nAnswer briefly and cite the sources like [1]."


def _pack(store, question, budget, count_tokens, collection, document_ids, mode, top_k):
    from retrieval import pack_context

    if mode not in ("auto", "stuff", "rag"):
        raise QAError(f"unknown mode {mode!r}: auto, stuff or rag")
    if mode == "rag":
        return _pack_retrieved(
            store, question, budget, count_tokens, collection, document_ids, top_k
        )
    packed = pack_context(store, question, budget, count_tokens, collection, document_ids)
    if mode == "stuff" and packed.mode != "full" and packed.citations:
        raise QAError(
            f"the documents do not fit the model's window ({budget} tokens for sources); use mode 'rag' or 'auto'"
        )
    return packed


def _pack_retrieved(store, question, budget, count_tokens, collection, document_ids, top_k):
    """The `top_k` best chunks that fit the budget, numbered in rank order."""
    from retrieval import Citation, PackedContext
    from retrieval.packing import source_header

    blocks: list[str] = []
    citations: list[Citation] = []
    used = 0
    for hit in store.search(question, top_k, "hybrid", collection, document_ids):
        number = len(citations) + 1
        block = f"{source_header(number, hit.source, hit.page)}\n{hit.text}"
        cost = count_tokens(block) + 2
        if used + cost > budget:
            continue
        blocks.append(block)
        citations.append(
            Citation(number, hit.document, hit.source, hit.chunk, hit.start, hit.end, hit.page)
        )
        used += cost
    text = "\n\n".join(blocks)
    return PackedContext(text, citations, "retrieved", count_tokens(text) if text else 0)


def cite(answer: str, question: str, sources: list[Source], store: Any) -> list[QACitation]:
    """Citations for an answer: the sources it marks, else the one it overlaps most."""
    by_number = {s.number: s for s in sources}
    marked = [int(n) for n in dict.fromkeys(_MARKER.findall(answer)) if int(n) in by_number]
    answer_words = _words(_MARKER.sub(" ", answer))
    question_words = _words(question)
    if marked:
        return [_narrow(by_number[n], answer_words, question_words, store, "model") for n in marked]
    best = None
    for source in sources:
        citation = _narrow(source, answer_words, question_words, store, "overlap")
        score = _score(citation.quote, answer_words, question_words)
        if best is None or score > best[0]:
            best = (score, citation)
    return [best[1]] if best else []


def _narrow(
    source: Source, answer_words: set[str], question_words: set[str], store: Any, how: str
) -> QACitation:
    """The sentence of the source passage that best matches the answer."""
    text = store.read(source.document, source.start, source.end)
    best = (-1.0, 0, len(text))
    for match in _SENTENCE.finditer(text):
        sentence = match.group(0)
        if not sentence.strip():
            continue
        score = _score(sentence, answer_words, question_words)
        if score > best[0]:
            lead = len(sentence) - len(sentence.lstrip())
            best = (score, match.start() + lead, match.end())
    _, begin, end = best
    quote = text[begin:end].rstrip()
    start = source.start + begin
    return QACitation(
        source.number,
        source.document,
        source.source,
        start,
        start + len(quote),
        source.page,
        source.chunk,
        quote,
        how,
    )


def _score(text: str, answer_words: set[str], question_words: set[str]) -> float:
    words = _words(text)
    return 2.0 * len(words & answer_words) + len(words & question_words)


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if w.lower() not in _STOPWORDS}
