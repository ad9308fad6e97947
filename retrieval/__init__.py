"""Retrieval: documents in, cited context out.

Loaders (txt, Markdown, HTML, PDF) -> token-aware chunks with character spans -> embeddings
(sentence-transformers, offline MiniLM by default) -> a DocumentStore on disk (SQLite + FAISS,
BM25 beside it) -> hybrid search fused by reciprocal rank -> a context packer that gives the
model whole documents when they fit and cited chunks otherwise. See docs/CONTRACTS.md.
"""

from retrieval.errors import RetrievalError
from retrieval.packing import Citation, PackedContext, pack_context
from retrieval.store import DocumentInfo, DocumentStore, Hit

__all__ = [
    "Citation",
    "DocumentInfo",
    "DocumentStore",
    "Hit",
    "PackedContext",
    "RetrievalError",
    "pack_context",
]
