"""The context packer: whole documents when they fit, cited chunks in reading order otherwise."""

from __future__ import annotations

import re

import pytest

from retrieval import pack_context
from tests.retrieval.corpus import BREAD, TRAINS, VOLCANO


def count_words(text: str) -> int:
    return len(text.split())


@pytest.fixture
def store(make_store):
    store = make_store()
    store.add_text(VOLCANO, "volcano.txt")
    store.add_text(BREAD, "bread.txt")
    store.add_text(TRAINS, "trains.txt")
    return store


def test_everything_fits_so_whole_documents_go_in(store):
    packed = pack_context(store, "when does the night train leave", 10_000, count_words)
    assert packed.mode == "full"
    assert [c.source for c in packed.citations] == ["volcano.txt", "bread.txt", "trains.txt"]
    for citation in packed.citations:
        assert f"[{citation.number}] {citation.source}\n" in packed.text
        assert citation.chunk is None and citation.start == 0
        assert store.read(citation.document) in packed.text
    assert packed.tokens == count_words(packed.text) <= 10_000


def test_over_budget_the_best_chunks_go_in_with_citations(make_store):
    store = make_store(chunk_tokens=24, overlap_tokens=6)
    for name, text in [("volcano.txt", VOLCANO), ("bread.txt", BREAD), ("trains.txt", TRAINS)]:
        store.add_text(text, name)
    packed = pack_context(store, "What temperature for baking the sourdough loaf?", 60, count_words)
    assert packed.mode == "retrieved"
    assert packed.tokens <= 60
    assert packed.citations[0].source == "bread.txt"
    assert "250 degrees" in packed.text
    numbers = [int(n) for n in re.findall(r"^\[(\d+)\]", packed.text, flags=re.M)]
    assert numbers == list(range(1, len(packed.citations) + 1))
    for citation in packed.citations:
        passage = store.read(citation.document, citation.start, citation.end)
        assert passage in packed.text, f"[{citation.number}] span does not match its text"
    by_document = {}
    for citation in packed.citations:
        by_document.setdefault(citation.document, []).append(citation.start)
    assert all(starts == sorted(starts) for starts in by_document.values()), "not in reading order"


def test_overlapping_chunks_are_not_repeated(make_store):
    store = make_store(chunk_tokens=20, overlap_tokens=10)
    info = store.add_text(VOLCANO + "\n\n" + BREAD, "mixed.txt")
    packed = pack_context(store, "volcano magma lava eruptions", 60, count_words)
    assert packed.mode == "retrieved"
    spans = sorted((c.start, c.end) for c in packed.citations if c.document == info.id)
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:], strict=False)), spans


def test_filters_and_an_empty_scope(store):
    bread = next(d for d in store.list() if d.source == "bread.txt")
    packed = pack_context(store, "anything", 10_000, count_words, document_ids=[bread.id])
    assert [c.source for c in packed.citations] == ["bread.txt"]
    empty = pack_context(store, "anything", 10_000, count_words, collection="nothing-here")
    assert (empty.mode, empty.text, empty.citations) == ("empty", "", [])


def test_a_budget_too_small_for_any_chunk_gives_no_context(store):
    packed = pack_context(store, "lava", 3, count_words)
    assert packed.citations == [] and packed.tokens == 0
