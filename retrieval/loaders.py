"""Loaders: a file (or bytes) in, its text out, with the character offset where each page starts.

One loader per kind, a plain function `bytes -> ExtractedText`, in the `LOADERS` registry; the
kind is chosen from the content type when one is given (an upload's header), else from the file
extension, else by sniffing the bytes (`%PDF-`, `<html`). Unknown extensions that decode as text
load as plain text; binary data that is not a PDF is refused.

- Plain text: UTF-8 (with or without BOM), else the encoding charset-normalizer detects. Line
  endings are normalised to `\\n`; nothing else changes, so offsets point into the file's text.
- Markdown: kept as Markdown (headings, lists and tables carry meaning for the model); the title
  is the first heading, found with markdown-it.
- HTML: BeautifulSoup; scripts, styles and templates dropped; block elements become paragraph
  breaks, inline elements do not split sentences.
- PDF: pypdf, one page after another joined by a blank line; `page_starts[i]` is where page
  i + 1 begins. A PDF whose pages give no text is a scan: `NoTextLayerError`, never an empty
  document ingested silently (PrivateGPT issues #1960, #1610).

Every error names the file. Size is checked before parsing.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import (
    DocumentTooLargeError,
    EmptyDocumentError,
    NoTextLayerError,
    UnreadableFileError,
    UnsupportedFileError,
)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class ExtractedText:
    """A document's text as we index it; all character spans point into `text`."""

    text: str
    kind: str  # "text" | "markdown" | "html" | "pdf"
    title: str | None = None
    page_starts: list[int] = field(default_factory=list)  # empty for documents without pages

    def page_at(self, offset: int) -> int | None:
        """1-based page holding character `offset`, or None for documents without pages."""
        if not self.page_starts:
            return None
        return max(1, bisect.bisect_right(self.page_starts, offset))


EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".log": "text",
    ".rst": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
}
CONTENT_TYPES = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}


def detect_kind(name: str, data: bytes, content_type: str | None = None) -> str:
    """The loader to use: content type first, then extension, then the bytes themselves."""
    if content_type:
        kind = CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
        if kind:
            return kind
    kind = EXTENSIONS.get(Path(name).suffix.lower())
    if kind:
        return kind
    head = data[:1024].lstrip().lower()
    if head.startswith(b"%pdf-"):
        return "pdf"
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    if b"\x00" in data[:8192]:
        raise UnsupportedFileError(f"{name}: unsupported file type (binary data, not a PDF)")
    return "text"


def read_file_bytes(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The file's bytes; a missing, unreadable or oversized file raises an error naming it."""
    path = Path(path)
    try:
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise UnreadableFileError(f"{path}: {what}")
        size = path.stat().st_size
        if size > max_bytes:
            raise DocumentTooLargeError(
                f"{path}: {size:,} bytes is over the limit of {max_bytes:,} bytes"
            )
        return path.read_bytes()
    except OSError as exc:
        raise UnreadableFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def load_file(
    path: str | Path, content_type: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> ExtractedText:
    """Read and extract one file; errors name the file."""
    return load_bytes(read_file_bytes(path, max_bytes), str(path), content_type, max_bytes)


def load_bytes(
    data: bytes, name: str, content_type: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> ExtractedText:
    """Extract text from the bytes of a file called `name` (used in messages and for the type)."""
    if len(data) > max_bytes:
        raise DocumentTooLargeError(
            f"{name}: {len(data):,} bytes is over the limit of {max_bytes:,} bytes"
        )
    if not data.strip():
        raise EmptyDocumentError(f"{name}: the file is empty")
    kind = detect_kind(name, data, content_type)
    extracted = LOADERS[kind](data, name)
    if not extracted.text.strip():
        raise EmptyDocumentError(f"{name}: no text found in the {kind} file")
    return extracted


def decode_text(data: bytes, name: str) -> str:
    """Bytes to str: UTF-8 if it decodes, else the detected encoding; `\\r\\n` becomes `\\n`."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
        if best is None:
            raise UnsupportedFileError(f"{name}: not text in any encoding we recognise") from None
        text = str(best)
    if "\x00" in text:
        raise UnsupportedFileError(f"{name}: unsupported file type (binary data)")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_text(data: bytes, name: str) -> ExtractedText:
    return ExtractedText(decode_text(data, name), "text")


def load_markdown(data: bytes, name: str) -> ExtractedText:
    from markdown_it import MarkdownIt

    text = decode_text(data, name)
    tokens = MarkdownIt().parse(text)
    title = None
    for i, token in enumerate(tokens[:-1]):
        if token.type == "heading_open":
            title = tokens[i + 1].content.strip() or None
            break
    return ExtractedText(text, "markdown", title=title)


BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "dd", "details", "div", "dl", "dt",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
    "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tr", "ul",
}  # fmt: skip
DROPPED_TAGS = ["script", "style", "noscript", "template", "head", "svg"]


def load_html(data: bytes, name: str) -> ExtractedText:
    from bs4 import BeautifulSoup, NavigableString, Tag
    from bs4.element import Comment, Doctype

    soup = BeautifulSoup(data, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    for tag in soup(DROPPED_TAGS):
        tag.decompose()
    pieces: list[str] = []

    def walk(node: Tag) -> None:
        for child in node.children:
            if isinstance(child, (Comment, Doctype)):
                continue
            if isinstance(child, NavigableString):
                pieces.append(str(child) if node.name == "pre" else re.sub(r"\s+", " ", child))
            elif isinstance(child, Tag):
                if child.name == "br":
                    pieces.append("\n")
                elif child.name in ("td", "th"):
                    walk(child)
                    pieces.append(" | ")
                elif child.name in BLOCK_TAGS:
                    pieces.append("\n\n")
                    walk(child)
                    pieces.append("\n\n")
                else:
                    walk(child)

    walk(soup)
    text = "".join(pieces)
    text = re.sub(r"[ \t]*\n[ \t]*", "\n", text)  # no spaces around line breaks
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return ExtractedText(text, "html", title=title or None)


def load_pdf(data: bytes, name: str) -> ExtractedText:
    import io
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    log = logging.getLogger("pypdf")
    level = log.level
    log.setLevel(logging.ERROR)  # broken-but-readable files warn a lot; restored below
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableFileError(f"{name}: the PDF is encrypted with a password")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableFileError(f"{name}: not a readable PDF ({exc})") from exc
    finally:
        log.setLevel(level)
    if not pages:
        raise EmptyDocumentError(f"{name}: the PDF has no pages")
    if not any(page.strip() for page in pages):
        raise NoTextLayerError(
            f"{name}: the PDF has no text layer ({len(pages)} page(s), probably scanned); "
            "run OCR on it first"
        )
    page_starts: list[int] = []
    text = ""
    for page in pages:
        if text:
            text += "\n\n"
        page_starts.append(len(text))
        text += page.replace("\r\n", "\n").strip("\n")
    title = (reader.metadata or {}).get("/Title") if reader.metadata else None
    return ExtractedText(text, "pdf", title=str(title) if title else None, page_starts=page_starts)


LOADERS: dict[str, Callable[[bytes, str], ExtractedText]] = {
    "text": load_text,
    "markdown": load_markdown,
    "html": load_html,
    "pdf": load_pdf,
}
