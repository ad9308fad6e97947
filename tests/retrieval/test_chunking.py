"""Chunking: token budgets, sentence boundaries, overlap, exact spans and pages."""

from __future__ import annotations

import re

from retrieval.chunking import chunk_text


def words(text: str) -> int:
    return len(text.split())


STORY = "\n\n".join(
    " ".join(f"Paragraph {p} sentence {s} has exactly eight words." for s in range(6))
    for p in range(10)
)


def test_every_chunk_is_an_exact_span_of_the_text_within_budget():
    chunks = chunk_text(STORY, words, max_tokens=40, overlap_tokens=8)
    assert len(chunks) > 5
    for chunk in chunks:
        assert STORY[chunk.start : chunk.end] == chunk.text
        assert chunk.n_tokens <= 40, f"chunk {chunk.ordinal} has {chunk.n_tokens} tokens"
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_chunks_start_and_end_at_sentence_boundaries():
    for chunk in chunk_text(STORY, words, max_tokens=30, overlap_tokens=8):
        assert chunk.text.startswith("Paragraph"), chunk.text[:30]
        assert chunk.text.endswith("words."), chunk.text[-30:]


def test_consecutive_chunks_overlap_and_cover_the_whole_text():
    chunks = chunk_text(STORY, words, max_tokens=30, overlap_tokens=8)
    assert chunks[0].start == 0 and chunks[-1].end == len(STORY)
    overlapping = sum(1 for a, b in zip(chunks, chunks[1:], strict=False) if b.start < a.end)
    assert overlapping >= len(chunks) // 3, f"only {overlapping} of {len(chunks) - 1} overlap"
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert STORY[a.end : b.start].strip() == "", "text between chunks was lost"


def test_no_overlap_when_asked_for_none():
    chunks = chunk_text(STORY, words, max_tokens=30, overlap_tokens=0)
    assert all(b.start >= a.end for a, b in zip(chunks, chunks[1:], strict=False))


def test_paragraph_ends_are_preferred_cut_points():
    chunks = chunk_text(STORY, words, max_tokens=60, overlap_tokens=0)
    ending_paragraphs = sum(1 for c in chunks if STORY[c.end : c.end + 2] in ("\n\n", ""))
    assert ending_paragraphs == len(chunks), [STORY[c.end : c.end + 20] for c in chunks]


def test_a_sentence_longer_than_the_budget_is_split_at_words():
    text = "word " * 100 + "end."
    chunks = chunk_text(text, words, max_tokens=16, overlap_tokens=0)
    assert all(c.n_tokens <= 16 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == text.split()


def test_an_unbroken_run_longer_than_the_budget_is_split_by_characters():
    text = "x" * 500
    chunks = chunk_text(text, lambda t: len(t) // 10 + 1, max_tokens=10, overlap_tokens=0)
    assert "".join(c.text for c in chunks) == text


def test_pages_come_from_page_starts():
    pages = ["Alpha one. " * 30, "Beta two. " * 30]
    text = pages[0] + "\n\n" + pages[1]
    chunks = chunk_text(
        text, words, max_tokens=20, overlap_tokens=0, page_starts=[0, len(pages[0]) + 2]
    )
    assert {c.page for c in chunks if c.text.startswith("Alpha")} == {1}
    assert {c.page for c in chunks if c.text.startswith("Beta")} == {2}


def test_with_the_embedders_tokenizer_no_chunk_is_truncated(embedder):
    text = open(re.__file__, encoding="utf-8").read()[:8000]
    chunks = chunk_text(text, embedder.count_tokens, max_tokens=128, overlap_tokens=16)
    assert all(embedder.count_tokens(c.text) <= 128 + 2 for c in chunks)
    assert all(text[c.start : c.end] == c.text for c in chunks)


# An API reference laid out like pydoc: entries (a signature, then its indented description),
# separated by gutter lines that are not blank.
REFERENCE = "CLASSES\n    class Heap(object)\n" + "".join(
    f"     |  push{n}(self, item)\n"
    f"     |      Push item number {n} onto the heap. It keeps the invariant of the heap.\n"
    f"     |      The item {n} must be comparable with every other item already there.\n"
    "     |  \n"
    for n in range(12)
)


def _entry_starts(text: str) -> list[int]:
    from retrieval.headings import outline, section_starts

    return section_starts(outline(text, "heap"))


def test_chunks_are_cut_where_an_entry_begins():
    starts = _entry_starts(REFERENCE)
    chunks = chunk_text(REFERENCE, words, max_tokens=60, overlap_tokens=8, section_starts=starts)
    assert len(chunks) >= 4
    for chunk in chunks[1:]:
        assert chunk.start in starts, f"chunk {chunk.ordinal} starts mid-entry: {chunk.text[:40]!r}"
        assert chunk.text.startswith("push"), chunk.text[:40]
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start >= a.end, "a chunk cut at an entry repeats the previous entry's end"
        assert REFERENCE[a.end : b.start].strip(" \n|") == "", "text between chunks was lost"
    assert all(not c.text.endswith(("|", " ", "\n")) for c in chunks), "a chunk ends in the gutter"


def test_without_section_starts_the_same_text_is_cut_mid_entry():
    chunks = chunk_text(REFERENCE, words, max_tokens=60, overlap_tokens=8)
    mid_entry = [c for c in chunks[1:] if not c.text.startswith("push")]
    assert mid_entry, "the comparison is void: plain chunking already aligned with the entries"


def test_a_heading_line_with_no_body_yet_goes_with_the_next_chunk():
    text = "First part. " * 10 + "\n\nFUNCTIONS\n    helper(x)\n        Help with x. " + "More. " * 5
    starts = _entry_starts(text)
    chunks = chunk_text(text, words, max_tokens=24, overlap_tokens=0, section_starts=starts)
    assert len(chunks) == 2, [c.text for c in chunks]
    opening = [c for c in chunks if "helper(x)" in c.text][0]
    assert opening.text.startswith("FUNCTIONS"), opening.text[:40]
    assert all(not c.text.endswith("FUNCTIONS") for c in chunks)
