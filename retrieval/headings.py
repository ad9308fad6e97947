"""The heading a chunk sits under, so a chunk cut from the middle of a section still says where.

A chunk of a manual page that starts "Don't replace existing files when extracting" does not name
the option it describes; the line above it does (`-k, --keep-old-files`), and the one above that
(`OPTIONS`). `section_path(outline, start)` gives those lines for the chunk that starts at
character `start`: the document's title, then the chain of enclosing lines, outermost first.

Two kinds of heading are recognised in plain text, without markup:
- by indentation: the nearest earlier line indented less than the chunk's first line, then the
  nearest earlier line indented less than that one, and so on (man pages, pydoc, help texts;
  pydoc's `|` gutter counts as indentation); only a short line that opens a paragraph can
  enclose (so the last line of a paragraph never "encloses" the next, indented one);
- standalone lines: a short line with blank lines around it (`11. Patents.`, `Preamble`), for
  flat texts such as licenses; the nearest one above the chunk is added when it is closer than
  the indentation parent.
Markdown `#` headings are standalone lines too. The context is used for embedding and BM25 only;
the chunk's text and span stay the document's own characters.

Reference: the "contextual chunk headers" idea (Anthropic's contextual retrieval, LlamaIndex's
`include_metadata` for embeddings), here without a model: the headings are read off the layout.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

MAX_LEVELS = 3  # enclosing lines kept, innermost first, before the title
MAX_HEADING_CHARS = 80  # a heading line longer than this is cut (it is a sentence, not a name)
STANDALONE_MAX_WORDS = 8
PARENT_MAX_WORDS = 12
_GUTTER = " \t|"


@dataclass(frozen=True)
class Outline:
    """One pass over a document: where each line starts, its indentation and its parent line."""

    title: str
    line_starts: list[int]
    lines: list[str]
    parents: list[int]  # index of the enclosing (less indented) line, -1 for none
    standalone: list[int]  # indexes of standalone heading lines, ascending


def outline(text: str, title: str = "") -> Outline:
    lines = text.split("\n")
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1
    parents = [-1] * len(lines)
    stack: list[tuple[int, int]] = []  # (indent, line index) of open enclosing lines
    standalone = []
    for i, line in enumerate(lines):
        stripped = line.lstrip(_GUTTER)
        if not stripped.strip():
            continue
        indent = len(line) - len(stripped)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents[i] = stack[-1][1] if stack else -1
        if _opens_paragraph(lines, i, indent) and len(stripped.split()) <= PARENT_MAX_WORDS:
            stack.append((indent, i))  # only a short first line of a paragraph can enclose
        if _is_standalone(lines, i, stripped):
            standalone.append(i)
    return Outline(title, starts, lines, parents, standalone)


def _opens_paragraph(lines: list[str], i: int, indent: int) -> bool:
    """After a blank line, or the first line of a block indented deeper than the line above."""
    if i == 0 or not lines[i - 1].strip(_GUTTER + "\r"):
        return True
    above = lines[i - 1]
    return len(above) - len(above.lstrip(_GUTTER)) < indent


def _is_standalone(lines: list[str], i: int, stripped: str) -> bool:
    words = stripped.split()
    if stripped.startswith("#"):
        return True
    if not 0 < len(words) <= STANDALONE_MAX_WORDS or stripped.rstrip().endswith((",", ";", ":")):
        return False
    before = i == 0 or not lines[i - 1].strip(_GUTTER + "\r")
    after = i + 1 >= len(lines) or not lines[i + 1].strip(_GUTTER + "\r")
    return before and after


def _heading(line: str) -> str:
    text = re.sub(r"\s+", " ", line.strip(_GUTTER + "#\r")).strip()
    return text[:MAX_HEADING_CHARS]


def section_path(doc: Outline, start: int) -> list[str]:
    """Title, then the headings enclosing the line at character `start`, outermost first."""
    line = max(0, bisect.bisect_right(doc.line_starts, start) - 1)
    while line < len(doc.lines) - 1 and not doc.lines[line].strip(_GUTTER + "\r"):
        line += 1  # a chunk starts at its first non-blank line
    chain = []  # innermost first
    parent = doc.parents[line]
    while parent >= 0 and len(chain) < MAX_LEVELS:
        chain.append(_heading(doc.lines[parent]))
        parent = doc.parents[parent]
    k = bisect.bisect_left(doc.standalone, line) - 1  # nearest standalone line above
    if k >= 0 and doc.standalone[k] > doc.parents[line]:  # closer than the indentation parent
        chain.insert(0, _heading(doc.lines[doc.standalone[k]]))
    path = [doc.title] if doc.title else []
    return path + [h for h in reversed(chain) if h and h != doc.title]


def section_starts(doc: Outline) -> list[int]:
    """Where the layout's sections begin: every line that encloses another (an entry's signature,
    an option, a section name) and every standalone heading line, as character offsets. The
    chunker cuts there first, so a chunk holds whole entries and its section path is its own."""
    lines = {p for p in doc.parents if p >= 0} | set(doc.standalone)
    return sorted(doc.line_starts[i] + len(doc.lines[i]) - len(doc.lines[i].lstrip(_GUTTER)) for i in lines)


def with_context(context: str, text: str) -> str:
    """What is embedded and indexed for a chunk: its section path, a newline, its text."""
    return f"{context}\n{text}" if context else text
