"""Token-aware chunking that keeps sentences whole and knows where every chunk came from.

The text is cut into units: sentences inside paragraphs (a paragraph ends at a blank line). Units
are packed greedily into chunks of at most `max_tokens` tokens of the given tokenizer (the
embedder's, so no chunk is truncated when embedded). When a chunk is full it is cut at its last
paragraph end if that keeps at least half the chunk, else at the last sentence end. The next
chunk starts with the previous chunk's trailing sentences worth up to `overlap_tokens`. A single
sentence longer than `max_tokens` is split at word boundaries (binary search on the token count).

Every chunk keeps its character span `[start, end)` in the document's extracted text (so
`text[start:end] == chunk.text`) and the page its first character is on. Departure from
Qwen-Agent's splitter (github.com/QwenLM/Qwen-Agent, qwen_agent/tools/simple_doc_parser.py and doc_parser.py): overlap is whole sentences counted in tokens,
not "the last ~150 characters", and page numbers are metadata, not markers inside the text.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n(?=\s*(?:[-*+•]|\d+[.)]|#)\s)")
WORD_GAP = re.compile(r"\s+")
GUTTER = " \t\r\n|"


@dataclass(frozen=True)
class Chunk:
    ordinal: int  # position of the chunk within its document, from 0
    start: int  # character span in the document's extracted text
    end: int
    text: str
    page: int | None  # 1-based page of the first character; None without pages
    n_tokens: int


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    n_tokens: int
    ends_paragraph: bool
    opens_section: bool = False  # the first unit of a section (an entry, an option, a heading)


def chunk_text(
    text: str,
    count_tokens: Callable[[str], int],
    max_tokens: int = 200,
    overlap_tokens: int = 32,
    page_starts: list[int] | None = None,
    section_starts: Sequence[int] = (),
) -> list[Chunk]:
    """Cut `text` into chunks of at most ~`max_tokens` tokens; see the module docstring.

    `section_starts`: character offsets where a section of the layout begins (headings.py's
    `section_starts`); a chunk is cut there in preference to any other place, without overlap."""
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")
    if not 0 <= overlap_tokens < max_tokens // 2 + 1:
        raise ValueError(f"overlap_tokens must be in [0, max_tokens/2], got {overlap_tokens}")
    units = _units(text, count_tokens, max_tokens, sorted(set(section_starts)))
    groups = _pack(units, max_tokens, overlap_tokens)
    chunks = []
    for ordinal, group in enumerate(groups):
        start, end = group[0].start, group[-1].end
        piece = text[start:end]
        page = max(1, bisect.bisect_right(page_starts, start)) if page_starts else None
        chunks.append(Chunk(ordinal, start, end, piece, page, count_tokens(piece)))
    return chunks


def _spans(text: str, separator: re.Pattern, start: int, end: int) -> list[tuple[int, int]]:
    """Non-blank pieces of text[start:end] between matches of `separator`, trimmed."""
    spans, pos = [], start
    for match in separator.finditer(text, start, end):
        spans.append((pos, match.start()))
        pos = match.end()
    spans.append((pos, end))
    trimmed = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            trimmed.append((a, b))
    return trimmed


def _units(
    text: str, count_tokens: Callable[[str], int], max_tokens: int, section_starts: list[int]
) -> list[_Unit]:
    units: list[_Unit] = []
    for p_start, p_end in _spans(text, PARAGRAPH_BREAK, 0, len(text)):
        for b_start, b_end, opens in _sections(text, p_start, p_end, section_starts):
            sentences = _spans(text, SENTENCE_END, b_start, b_end)
            for i, (s_start, s_end) in enumerate(sentences):
                last = i == len(sentences) - 1 and b_end == p_end
                first = opens and i == 0
                n = count_tokens(text[s_start:s_end])
                if n <= max_tokens:
                    units.append(_Unit(s_start, s_end, n, last, first))
                    continue
                pieces = _split_long(text, s_start, s_end, count_tokens, max_tokens)
                for j, (a, b, m) in enumerate(pieces):
                    units.append(_Unit(a, b, m, last and j == len(pieces) - 1, first and j == 0))
    return units


def _sections(
    text: str, start: int, end: int, section_starts: list[int]
) -> list[tuple[int, int, bool]]:
    """text[start:end] split where sections begin: (start, end, opens a section) per piece."""
    cuts = section_starts[bisect.bisect_left(section_starts, start) : bisect.bisect_left(section_starts, end)]
    bounds = [start, *(c for c in cuts if c > start), end]
    pieces = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        while b > a and text[b - 1] in GUTTER:  # pydoc's `|` gutter ends a piece too
            b -= 1
        if b > a:
            pieces.append((a, b, a in cuts))
    return pieces


def _split_long(
    text: str, start: int, end: int, count_tokens: Callable[[str], int], max_tokens: int
) -> list[tuple[int, int, int]]:
    """Split an over-long sentence at word gaps (or anywhere, for unbroken runs) into pieces."""
    gaps = [m.start() for m in WORD_GAP.finditer(text, start, end)]
    pieces = []
    while start < end:
        cuts = [g for g in gaps if g > start] + [end]
        lo, hi = 0, len(cuts) - 1  # largest cut with count <= max_tokens
        best = -1
        while lo <= hi:
            mid = (lo + hi) // 2
            if count_tokens(text[start : cuts[mid]]) <= max_tokens:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        if best >= 0:
            cut = cuts[best]
        else:  # one "word" longer than max_tokens: cut by characters
            lo_c, hi_c = start + 1, cuts[0]
            while lo_c < hi_c:
                mid_c = (lo_c + hi_c + 1) // 2
                if count_tokens(text[start:mid_c]) <= max_tokens:
                    lo_c = mid_c
                else:
                    hi_c = mid_c - 1
            cut = lo_c
        pieces.append((start, cut, count_tokens(text[start:cut])))
        start = cut
        while start < end and text[start].isspace():
            start += 1
    return pieces


def _pack(units: list[_Unit], max_tokens: int, overlap_tokens: int) -> list[list[_Unit]]:
    groups: list[list[_Unit]] = []
    current: list[_Unit] = []
    total = 0
    i = 0
    while i < len(units):
        unit = units[i]
        if total + unit.n_tokens <= max_tokens or not current:
            current.append(unit)
            total += unit.n_tokens
            i += 1
            continue
        cut = _cut_point(current, max_tokens, unit)
        emitted, carried = current[:cut], current[cut:]
        groups.append(emitted)
        at_section = (carried[0] if carried else unit).opens_section
        overlap = _overlap(emitted, overlap_tokens) if not carried and not at_section else []
        carried_tokens = sum(u.n_tokens for u in carried)
        while (
            overlap
            and sum(u.n_tokens for u in overlap) + carried_tokens + unit.n_tokens > max_tokens
        ):
            overlap.pop(0)  # the next sentence must fit: drop overlap first
        current = overlap + carried
        total = sum(u.n_tokens for u in current)
    if current:
        groups.append(current)
    return groups


def _cut_point(current: list[_Unit], max_tokens: int, following: _Unit) -> int:
    """Units to emit: all when the next unit opens a section; else up to the last section start
    that keeps half the chunk; else up to the last paragraph end that does; else all."""
    if following.opens_section:  # carry section lines that have no body yet (`FUNCTIONS`)
        cut, carried = len(current), following.n_tokens
        while cut > 1 and current[cut - 1].opens_section and carried + current[cut - 1].n_tokens <= max_tokens:
            cut -= 1
            carried += current[cut].n_tokens
        return cut
    seen = 0
    paragraph = section = None
    for k, unit in enumerate(current[:-1]):
        seen += unit.n_tokens
        if seen >= max_tokens // 2:
            section = k + 1 if current[k + 1].opens_section else section
            paragraph = k + 1 if unit.ends_paragraph else paragraph
    return section or paragraph or len(current)


def _overlap(emitted: list[_Unit], overlap_tokens: int) -> list[_Unit]:
    """Trailing units of the emitted chunk worth at most `overlap_tokens` (never all of it)."""
    tail: list[_Unit] = []
    total = 0
    for unit in reversed(emitted[1:]):
        if total + unit.n_tokens > overlap_tokens:
            break
        tail.insert(0, unit)
        total += unit.n_tokens
    return tail
