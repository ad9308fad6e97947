"""What the store keeps in SQLite, and the records it hands out.

`documents` holds each document's full extracted text (for `read` and the packer's whole-document
mode), its content hash and the chunking settings it was cut with; `chunks` holds each chunk's
span, page, text and float32 vector, so every FAISS or BM25 index can be rebuilt from here.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field

import numpy as np

from retrieval.loaders import ExtractedText

SCHEMA_VERSION = "1"
DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, collection TEXT NOT NULL, location TEXT NOT NULL, source TEXT NOT NULL,
    kind TEXT NOT NULL, title TEXT, content_hash TEXT NOT NULL, chunking TEXT NOT NULL,
    n_chars INTEGER NOT NULL, n_tokens INTEGER NOT NULL, n_chunks INTEGER NOT NULL,
    page_starts TEXT NOT NULL, metadata TEXT NOT NULL, added_at REAL NOT NULL, text TEXT NOT NULL,
    UNIQUE (collection, location));
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    collection TEXT NOT NULL, ordinal INTEGER NOT NULL, start INTEGER NOT NULL,
    "end" INTEGER NOT NULL, page INTEGER, n_tokens INTEGER NOT NULL, text TEXT NOT NULL,
    vector BLOB NOT NULL, context TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks (document_id);
CREATE INDEX IF NOT EXISTS chunks_by_collection ON chunks (collection);
"""


def connect(path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, durable commits."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
        db.execute(f"PRAGMA {pragma}")
    return db


def migrate(db: sqlite3.Connection) -> None:
    """Bring a store made by an older version up to this schema (columns added since)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(chunks)")}
    if "context" not in columns:
        db.execute("ALTER TABLE chunks ADD COLUMN context TEXT NOT NULL DEFAULT ''")


HIT_QUERY = (  # rows for hit_from_row
    'SELECT c.id, c.document_id, d.source, c.ordinal, c.text, c.start, c."end", c.page, '
    "c.collection, c.context FROM chunks c JOIN documents d ON d.id = c.document_id"
)
DOCUMENT_COLUMNS = (
    "id, collection, source, kind, title, content_hash, n_chars, n_tokens, n_chunks, "
    "page_starts, metadata, added_at"
)


@dataclass
class DocumentInfo:
    id: str
    collection: str
    source: str  # the file as given at ingest, or the source named in add_text
    kind: str  # text | markdown | html | pdf
    title: str | None
    content_hash: str
    n_chars: int
    n_tokens: int  # in the embedder's tokenizer
    n_chunks: int
    n_pages: int | None
    metadata: dict = field(default_factory=dict)
    added_at: float = 0.0
    status: str = "stored"  # from add_*: "added" | "replaced" | "unchanged"


@dataclass
class Hit:
    document: str  # document id
    source: str
    chunk: int  # the chunk's ordinal within its document
    text: str
    score: float  # hybrid: RRF score; dense: cosine similarity; lexical: BM25 score
    start: int  # character span in the document's extracted text
    end: int
    page: int | None
    collection: str = "default"
    chunk_id: int = -1  # the chunk's id in the indexes
    context: str = ""  # the section path the chunk sits under ("tar > OPTIONS > -k, ..."), or ""


@dataclass
class PreparedDocument:
    """A document extracted, chunked and embedded, waiting to be committed."""

    id: str
    collection: str
    location: str
    source: str
    extracted: ExtractedText
    content_hash: str
    metadata: dict
    chunks: list
    vectors: np.ndarray
    replaces: bool
    contexts: list[str] | None = None  # each chunk's section path (headings.py), or None


def document_id(collection: str, location: str) -> str:
    return hashlib.sha256(f"{collection}\0{location}".encode()).hexdigest()[:16]


def hit_from_row(row: tuple, score: float) -> Hit:
    chunk_id, doc, source, ordinal, text, start, end, page, collection, context = row
    return Hit(doc, source, ordinal, text, float(score), start, end, page, collection, chunk_id,
               context)  # fmt: skip


def document_info(row: tuple) -> DocumentInfo:
    (doc_id, collection, source, kind, title, content_hash, n_chars, n_tokens, n_chunks,
     page_starts, metadata, added_at) = row  # fmt: skip
    pages = json.loads(page_starts)
    return DocumentInfo(doc_id, collection, source, kind, title, content_hash, n_chars, n_tokens,
                        n_chunks, len(pages) or None, json.loads(metadata), added_at)  # fmt: skip
