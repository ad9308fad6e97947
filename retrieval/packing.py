"""The context packer: the documents (or the parts of them) a question needs, within a token budget.

Long context first: when every document in scope fits in `budget_tokens` (counted with the
model's `count_tokens`), all of them go in whole (`mode="full"`), so the model reads everything
and nothing depends on retrieval. Otherwise hybrid search ranks the chunks, the best ones are
taken greedily while they fit (`mode="retrieved"`), and then put back in reading order: documents
by their best chunk's rank, chunks by position, with the text two overlapping chunks share given
only once. Each passage is a numbered source, `[1] source, page 3`, so the model can cite it;
`citations[i]` says what `[i + 1]` is (document, chunk, character span, page).

Departures: Qwen-Agent also stuffs whole documents when they fit (max_ref_token, 20k tokens by
default) but truncates the last chunk mid-text and cites files only; RAGFlow fills 97% of the
budget with chunks in rank order. Here no passage is cut mid-chunk and spans are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from retrieval.store import DocumentInfo, DocumentStore, Hit

FULL_ESTIMATE_SLACK = 3  # skip the exact whole-document count when the estimate is 3x the budget


@dataclass
class Citation:
    number: int  # the passage is marked [number] in the packed text
    document: str
    source: str
    chunk: int | None  # chunk ordinal; None when the whole document is included
    start: int  # character span in the document's extracted text
    end: int
    page: int | None


@dataclass
class PackedContext:
    text: str
    citations: list[Citation]
    mode: str  # "full" | "retrieved" | "empty"
    tokens: int


def pack_context(
    store: DocumentStore,
    question: str,
    budget_tokens: int,
    count_tokens: Callable[[str], int],
    collection: str | None = None,
    document_ids: Sequence[str] | None = None,
    *,
    search_mode: str = "hybrid",
    max_chunks: int = 64,
) -> PackedContext:
    """Whole documents when they all fit, else the best chunks; see the module docstring."""
    documents = _documents_in_scope(store, collection, document_ids)
    if not documents or budget_tokens <= 0:
        return PackedContext("", [], "empty", 0)
    full = _pack_full(store, documents, budget_tokens, count_tokens)
    if full is not None:
        return full
    hits = store.search(question, max_chunks, search_mode, collection, document_ids)
    return _pack_retrieved(store, hits, budget_tokens, count_tokens)


def source_header(number: int, source: str, page: int | None) -> str:
    return f"[{number}] {source}" + (f", page {page}" if page is not None else "")


def _documents_in_scope(
    store: DocumentStore, collection: str | None, document_ids: Sequence[str] | None
) -> list[DocumentInfo]:
    if document_ids is not None:
        wanted = [store.get(doc_id) for doc_id in dict.fromkeys(document_ids)]
        return [d for d in wanted if collection is None or d.collection == collection]
    return store.list(collection)


def _pack_full(
    store: DocumentStore,
    documents: list[DocumentInfo],
    budget: int,
    count_tokens: Callable[[str], int],
) -> PackedContext | None:
    if sum(d.n_tokens for d in documents) > FULL_ESTIMATE_SLACK * budget:
        return None
    blocks, citations, used = [], [], 0
    for number, doc in enumerate(documents, start=1):
        text = store.read(doc.id)
        block = f"{source_header(number, doc.source, None)}\n{text}"
        used += count_tokens(block)
        if used > budget:
            return None
        blocks.append(block)
        citations.append(Citation(number, doc.id, doc.source, None, 0, len(text), None))
    packed = "\n\n".join(blocks)
    tokens = count_tokens(packed)
    return PackedContext(packed, citations, "full", tokens) if tokens <= budget else None


def _pack_retrieved(
    store: DocumentStore, hits: list[Hit], budget: int, count_tokens: Callable[[str], int]
) -> PackedContext:
    chosen: list[Hit] = []
    used = 0
    for hit in hits:  # best first: take what fits
        cost = count_tokens(f"{source_header(99, hit.source, hit.page)}\n{hit.text}") + 1
        if used + cost <= budget:
            chosen.append(hit)
            used += cost
    while True:
        packed = _render(store, chosen, count_tokens)
        if packed.tokens <= budget or not chosen:
            return packed
        chosen.pop()  # separators made it a little over: drop the lowest-ranked passage


def _render(
    store: DocumentStore, chosen: list[Hit], count_tokens: Callable[[str], int]
) -> PackedContext:
    doc_rank = {}
    for hit in chosen:
        doc_rank.setdefault(hit.document, len(doc_rank))
    ordered = sorted(chosen, key=lambda h: (doc_rank[h.document], h.start))
    blocks, citations = [], []
    covered_until: dict[str, int] = {}
    for hit in ordered:
        start = max(hit.start, covered_until.get(hit.document, 0))
        if start >= hit.end:
            continue  # wholly inside the previous passage
        text = hit.text
        if start > hit.start:  # overlaps the previous passage: keep only the new text
            text = store.read(hit.document, start, hit.end)
            start += len(text) - len(text.lstrip())
            text = text.lstrip()
        covered_until[hit.document] = hit.end
        number = len(citations) + 1
        blocks.append(f"{source_header(number, hit.source, hit.page)}\n{text}")
        citations.append(
            Citation(number, hit.document, hit.source, hit.chunk, start, hit.end, hit.page)
        )
    text = "\n\n".join(blocks)
    return PackedContext(text, citations, "retrieved", count_tokens(text) if text else 0)
