"""Question answering over stored documents, with numbered citations that point to real spans.

Modes: `stuff` puts whole documents in the prompt (an error when they do not fit the window),
`rag` puts the best retrieved chunks, `auto` does `stuff` when everything fits and `rag`
otherwise (the Qwen2 report's point: with a 128K window, whole documents often fit, and then
the model sees everything). The sources are numbered `[n]` in the prompt, each headed by its
file and the section it sits under.

Prompt layout, for prefix caching: the fixed system prompt, then the sources, then the question
last; what repeats across requests comes first. The model is asked for one sentence in the
sources' words, nothing else: rules about citing or refusing made the 0.5B default worse at both
(see SYSTEM_PROMPT). A reply that writes `[n]` or "[n] answer" is still read.

No answer: when the model says `NO_ANSWER` (or "[0]"), or when `grounded` finds that the answer
adds nothing to the question or names words and options that no source has, the answer is
`NO_ANSWER`, nothing is cited, and `extra` keeps the model's text and the reason.

Citations: the numbers the model wrote are kept when they name a source, each narrowed from its
source passage to the best-matching sentence (a sentence may wrap over lines, as in man pages
and pydoc), so `quote` is the text at `[start, end)` of the document's extracted text. When the
model wrote no usable number (the usual case with this prompt) the source whose sentences overlap
the answer most is cited, flagged `attributed: "overlap"`; no marker is added to the answer text,
so the answer shows only what the model wrote.

Repetition: small models can loop ("the file the file the file ..."). Generation stops as soon
as the answer repeats an 8-word sequence three times (`RepetitionGuard`; a repetition penalty
would also penalise the source words an answer must copy), the repeated tail is cut, and the
result says so: `finish_reason "repetition"`, `extra["repetition_stopped"] = True`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from agent.errors import AgentError
from agent.repetition import RepetitionGuard

# Qwen2.5's own default system message, and no rules in it: told to cite [n] the 0.5B model wrote
# bare numbers ("[2] [3] [1]") or echoed source headers; told it may reply "The sources do not
# say" it said so for 7 of 12 tuning questions whose passage it had. Told only to answer in one
# sentence with the sources' words, it answered 9 of 12 (docs/retrieval.md); refusing is then
# `grounded`'s job, and citing `cite`'s.
SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
ANSWER_PREFIX = ""  # an assistant prefix for the reply ("[" forced a number first: worse answers)
NO_ANSWER = "The sources do not say."
_WORD = re.compile(r"[A-Za-z0-9]+")
# A sentence ends at . ! ? before a space, or at a blank line; a single newline does not end it
# (man pages and pydoc wrap sentences across indented lines). "2.0" does not end one.
_SENTENCE = re.compile(r"(?:[^\n]|\n(?![ \t|]*\n))+?(?:[.!?]+(?=\s|\Z)|(?=\n[ \t|]*\n)|\Z)")
_MARKER = re.compile(r"\[(\d{1,3})\]")
_CODE = re.compile(r"`[^`\n]{1,120}`|(?<![\w-])--?[A-Za-z][\w-]*")  # `code` spans, -x and --options
_NAME = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*|\w+")  # an option as a whole, else a word
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
    generation, repeated = _generate(engine, messages, params, on_text, should_stop)
    reply = ANSWER_PREFIX + generation.text
    if repeated:
        reply = RepetitionGuard.trim(reply)
    answer, citations, extra = _answer_and_citations(reply, question, sources, store)
    if repeated:
        extra["repetition_stopped"] = True
    finish = "repetition" if repeated else generation.finish_reason
    return QAAnswer(
        answer=answer,
        citations=citations,
        sources=sources,
        mode=packed.mode,
        context_tokens=packed.tokens,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=len(generation.token_ids),
        finish_reason=finish,
        extra=extra,
    )


def _generate(engine, messages, params, on_text, should_stop):
    """The reply after the assistant prefix, stopped early when it starts looping."""
    guard = RepetitionGuard()

    def relay(*args: Any) -> None:
        guard.feed(args[-1])
        if on_text is not None:
            on_text(*args)

    def stop() -> bool:
        return guard.looping or (should_stop is not None and should_stop())

    prompt = engine.tokenizer.apply_chat_template(messages) + ANSWER_PREFIX
    if on_text is not None:
        on_text(0, ANSWER_PREFIX)
    generation = engine.generate([engine.tokenizer.encode(prompt)], params, on_text=relay, should_stop=stop)[0]
    number = re.fullmatch(r"\s*(\d{1,3})\s*\]\s*", generation.text)
    if number and int(number.group(1)) != 0:  # a source number and nothing else: ask for the answer
        chosen = f"{number.group(1)}] "
        if on_text is not None:
            on_text(0, " ")
        body = engine.generate([engine.tokenizer.encode(prompt + chosen)], params, on_text=relay,
                               should_stop=stop)[0]  # fmt: skip
        generation = replace(body, text=chosen + body.text, token_ids=generation.token_ids + body.token_ids,
                             prompt_tokens=generation.prompt_tokens)  # fmt: skip
    return generation, guard.looping or RepetitionGuard.loops(ANSWER_PREFIX + generation.text)


def _answer_and_citations(reply: str, question: str, sources: list[Source], store: Any):
    """(answer text, citations, extra) from the model's reply ("answer", "answer [n]" or "[n] answer").
    An answer that `grounded` rejects becomes NO_ANSWER; `extra` keeps what the model wrote and why."""
    lead = re.match(r"\s*\[\s*(\d{1,3})\s*\]\s*", reply)
    body = reply[lead.end() :].strip() if lead else reply.lstrip().removeprefix("[").strip()
    if (lead and int(lead.group(1)) == 0) or NO_ANSWER.lower().rstrip(".") in body.lower():
        return NO_ANSWER, [], {"no_answer": True, "no_answer_reason": "the model said so"}
    text = f"{body} [{lead.group(1)}]".strip() if lead else body  # "[2] x" reads as "x [2]"
    source_texts = [f"{s.source}\n{store.read(s.document, s.start, s.end)}" for s in sources]  # names too
    unsupported = grounded(_MARKER.sub(" ", text), question, source_texts)
    if unsupported:
        return NO_ANSWER, [], {"no_answer": True, "model_answer": text, "no_answer_reason": unsupported}
    return text, cite(text, question, sources, store), {"no_answer": False}


def _user_prompt(context: str, question: str) -> str:
    return f"{context}\n\nQuestion: {question}\nAnswer in one sentence, using the words of the sources above."


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
        section = " > ".join(getattr(hit, "context", "").split(" > ")[1:])  # title = source name
        header = source_header(number, hit.source, hit.page)
        block = f"{header} ({section})\n{hit.text}" if section else f"{header}\n{hit.text}"
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
            lead = len(sentence) - len(sentence.lstrip(" \t\n|"))  # pydoc's "|" gutter too
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
    """Words shared with the answer, weighted by words shared with the question, per length: an
    answer that copies a whole passage still points at the sentence the question is about."""
    words = _words(text)
    if not words:
        return 0.0
    on_question = len(words & question_words)
    return len(words & answer_words) * (1 + on_question) / len(words) ** 0.5 + 0.01 * on_question


_ANSWER_FILLER = frozenset(
    "according also any answer because but can could if into just may must only our should so "
    "source sources than then there these they this those use used using we would you your".split()
)
GROUNDED_SHARE = 0.5  # at least this share of what an answer adds must be in its sources


def grounded(answer: str, question: str, source_texts: list[str]) -> str | None:
    """Why an answer does not answer from its sources, or None when it does.

    Every name in a `code` span and every -option the answer gives must occur in the sources
    (an option as a whole); the answer must add something to the question (stemmed content
    words the question lacks); and at least GROUNDED_SHARE of what it adds must occur in the
    sources. "The ls option --battery shows the battery level" adds nothing, "use the `--mailto`
    option" names an option no source has. The 0.5B default invents such answers when the
    prompt does not let it refuse, and refuses answerable questions when it does (measured in
    docs/retrieval.md), so refusing is decided here.
    """
    joined = " ".join(source_texts)
    known = {w.lower() for w in _NAME.findall(joined)}
    for span in _CODE.findall(answer):  # the names and --options it gives must be in a source
        missing = [w for w in _NAME.findall(span) if len(w) > 1 and w.lower() not in known]
        if missing:
            return f"{missing[0]} is in no source"
    added = _stems(answer) - _stems(question) - _filler_stems()
    if not added:
        return "the answer only restates the question"
    if len(added & _stems(joined)) < GROUNDED_SHARE * len(added):
        return "the answer is not in the sources"
    return None


def _stems(text: str) -> set[str]:
    stemmer = _stemmer()
    return {stemmer.stemWord(w) for w in _words(text)}


@functools.cache
def _stemmer():
    import Stemmer  # PyStemmer, which bm25s uses for the lexical index

    return Stemmer.Stemmer("english")


@functools.cache
def _filler_stems() -> frozenset[str]:
    return frozenset(_stems(" ".join(_ANSWER_FILLER)))


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if w.lower() not in _STOPWORDS}
