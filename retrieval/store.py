"""The document store: documents, chunks and vectors in SQLite; a FAISS index and BM25 beside it.

Layout of a data folder:
    store.sqlite3          documents (full extracted text, hash, metadata), chunks (span, page,
                           text, float32 vector), meta (embedder, dimension, index kind,
                           generation). WAL mode, so readers never block the writer.
    vectors-<gen>.faiss    the FAISS index for generation <gen> (vector_index.py).
    bm25-<gen>/            the BM25 index for generation <gen>, saved by the first search that
                           needed it (lexical.py); a cache like the FAISS file.
    write.lock             held by the one process writing (filelock).

Atomicity: SQLite is the source of truth and its commit is the single point where a write
happens. A writer, holding the lock, changes the rows inside one transaction, writes the new
index to `vectors-<gen+1>.faiss` (temporary file + fsync + os.replace), and then commits the rows
together with `generation = gen+1`. A crash before the commit leaves the old rows pointing at the
old, untouched index file (the orphan new file is removed by the next writer); after the commit
both are new. Readers compare the generation in SQLite with the one they hold before each search
and reload when it changed; an index file that is missing or disagrees with the rows is rebuilt
from the stored vectors. No pickle.

Identity: a document is (collection, location), where location is the resolved path of a file or
the `source` given to `add_text`; its id is a hash of both, so it is the same after a restart.
Re-adding unchanged bytes is a no-op (sha256 of the content, plus the chunking settings);
changed content replaces the document's chunks in one transaction. Chunk ids are never reused,
so a reader holding an older index can never map an id to the wrong text.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from retrieval import vector_index
from retrieval.chunking import chunk_text
from retrieval.embeddings import Embedder, embedder_name
from retrieval.errors import (
    InvalidQueryError,
    RetrievalError,
    StoreConfigError,
    UnknownDocumentError,
)
from retrieval.fusion import DEFAULT_WEIGHTS, FUSIONS
from retrieval.headings import outline, section_path, section_starts, with_context
from retrieval.lexical import LexicalIndex
from retrieval.loaders import DEFAULT_MAX_BYTES, load_bytes, read_file_bytes
from retrieval.records import (
    DEFAULT_EMBEDDER_NAME,
    DOCUMENT_COLUMNS,
    HIT_QUERY,
    SCHEMA,
    SCHEMA_VERSION,
    DocumentInfo,
    Hit,
    PreparedDocument,
    connect,
    document_id,
    document_info,
    hit_from_row,
    migrate,
)

MODES = ("hybrid", "dense", "lexical")
CONTEXT_TOKENS = 32  # of the embedder's window kept free for a chunk's section path


class DocumentStore:
    """Documents on disk with hybrid search over their chunks. Safe for many readers, one writer."""

    def __init__(
        self,
        data_dir: str | Path,
        embedder: str | Path | Embedder | None = None,
        *,
        index_kind: str | None = None,
        chunk_tokens: int = 200,
        overlap_tokens: int = 32,
        max_file_bytes: int = DEFAULT_MAX_BYTES,
        progress: bool | None = None,
        hybrid_fusion: str = "relative",
        hybrid_weights: tuple[float, float] | None = None,
        headings: bool = True,
        sections: bool = False,
    ):
        from filelock import FileLock

        if index_kind is not None and index_kind not in vector_index.INDEX_KINDS:
            raise StoreConfigError(
                f"unknown index kind {index_kind!r}; one of {sorted(vector_index.INDEX_KINDS)}"
            )
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.chunk_tokens, self.overlap_tokens = chunk_tokens, overlap_tokens
        self.headings = headings  # chunks embedded and indexed with their section path
        self.sections = sections  # chunks cut where the layout's sections begin
        self.max_file_bytes = max_file_bytes
        self.progress = progress
        if hybrid_fusion not in FUSIONS:
            raise StoreConfigError(f"unknown fusion {hybrid_fusion!r}; one of {sorted(FUSIONS)}")
        self.hybrid_fusion = hybrid_fusion  # how hybrid search merges dense and lexical
        self.hybrid_weights = hybrid_weights or DEFAULT_WEIGHTS[hybrid_fusion]  # (dense, lexical)
        self._lock = threading.RLock()
        self._file_lock = FileLock(str(self.data_dir / "write.lock"))
        self._local = threading.local()  # one SQLite connection per thread: own snapshots
        self._connections: list[sqlite3.Connection] = []
        self._embedder_obj = embedder if isinstance(embedder, Embedder) else None
        self._embedder_spec = None if isinstance(embedder, Embedder) else embedder
        requested = embedder_name(embedder)
        with self._file_lock:
            self._db.executescript(SCHEMA)
            migrate(self._db)
            meta = self._meta()
            if not meta:
                self._set_meta(schema=SCHEMA_VERSION, embedder=requested or DEFAULT_EMBEDDER_NAME,
                               index_kind=index_kind or "flat", generation="0")  # fmt: skip
                meta = self._meta()
        if requested is not None and requested != meta["embedder"]:
            raise StoreConfigError(
                f"{self.data_dir} was built with embedder {meta['embedder']!r}, not {requested!r}; "
                "use a new data folder for another embedder"
            )
        self.embedder_name = meta["embedder"]
        self.index_kind = index_kind or meta["index_kind"]
        self._index = None
        self._generation: int | None = None
        self._lexical: LexicalIndex | None = None
        if self.index_kind != meta["index_kind"]:
            self._rebuild_as(self.index_kind)

    # ----- settings and helpers
    @property
    def embedder(self) -> Embedder:
        if self._embedder_obj is None:
            spec = self._embedder_spec
            if spec is None and self.embedder_name != DEFAULT_EMBEDDER_NAME:
                spec = self.embedder_name
            self._embedder_obj = Embedder(spec)
        return self._embedder_obj

    def _meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def _set_meta(self, **values: str) -> None:
        self._db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(k, str(v)) for k, v in values.items()],
        )

    def _chunking_signature(self) -> str:
        headings = "|headings" if self.headings else ""
        sections = "|sections" if self.sections else ""
        return f"{self.embedder_name}|{self.chunk_tokens}|{self.overlap_tokens}{headings}{sections}|v1"

    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection (a thread never sees another's open transaction)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.data_dir / "store.sqlite3")
            with self._lock:
                self._connections.append(db)
        return db

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> DocumentStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- adding documents
    def add_file(
        self,
        path: str | Path,
        collection: str = "default",
        metadata: dict | None = None,
        content_type: str | None = None,
    ) -> DocumentInfo:
        """Add (or update) one file; unchanged content is skipped by hash."""
        result = self.add_files([path], collection, metadata, content_type, raise_errors=True)
        return result[0]

    def add_files(
        self,
        paths: Iterable[str | Path],
        collection: str = "default",
        metadata: dict | None = None,
        content_type: str | None = None,
        *,
        raise_errors: bool = False,
        commit_every: int = 2000,
    ) -> list[DocumentInfo | RetrievalError]:
        """Add many files, committing every `commit_every` chunks; user errors are returned
        in place of the file's DocumentInfo (or raised, with `raise_errors`)."""
        paths = list(paths)
        results: list[DocumentInfo | RetrievalError | None] = [None] * len(paths)
        pending: dict[
            str, tuple[list[int], PreparedDocument]
        ] = {}  # document id -> (positions, item)

        def flush() -> None:
            self._commit([item for _, item in pending.values()])
            for positions, item in pending.values():
                info = self._info_of(item)
                for i in positions:
                    results[i] = info
            pending.clear()

        for i, path in enumerate(self._file_progress(paths)):
            try:
                data = read_file_bytes(Path(path), self.max_file_bytes)
                location = str(Path(path).resolve())
                item = self._prepare(data, str(path), location, str(path), collection,
                                     metadata, content_type)  # fmt: skip
            except RetrievalError as exc:
                if raise_errors:
                    raise
                item = exc
            if not isinstance(item, PreparedDocument):
                results[i] = item
                continue
            earlier = pending.pop(item.id, ([], None))[0]  # same file twice: the last one wins
            pending[item.id] = ([*earlier, i], item)
            if sum(len(p.chunks) for _, p in pending.values()) >= commit_every:
                flush()
        if pending:
            flush()
        return results

    def _file_progress(self, paths: list) -> Iterable:
        """A tqdm bar over files for large ingests (asked for, or 20+ files on a terminal)."""
        import sys

        show = self.progress
        if show is None:
            show = len(paths) >= 20 and sys.stderr.isatty()
        if not show:
            return paths
        from tqdm import tqdm

        return tqdm(paths, desc="ingest", unit="file")

    def add_text(
        self,
        text: str,
        source: str,
        collection: str = "default",
        metadata: dict | None = None,
        kind: str = "text",
    ) -> DocumentInfo:
        """Add (or update) a text under the name `source` (its identity within the collection)."""
        data = text.encode("utf-8")
        ctype = {"text": "text/plain", "markdown": "text/markdown", "html": "text/html"}.get(kind)
        return self.add_bytes(data, source, collection, metadata, ctype)

    def add_bytes(
        self,
        data: bytes,
        source: str,
        collection: str = "default",
        metadata: dict | None = None,
        content_type: str | None = None,
    ) -> DocumentInfo:
        """Add (or update) the bytes of an uploaded file called `source`."""
        if len(data) > self.max_file_bytes:
            load_bytes(data, source, content_type, self.max_file_bytes)  # raises the size error
        item = self._prepare(data, source, source, source, collection, metadata, content_type)
        if isinstance(item, PreparedDocument):
            self._commit([item])
            return self._info_of(item)
        return item

    def _prepare(
        self,
        data: bytes,
        name: str,
        location: str,
        source: str,
        collection: str,
        metadata: dict | None,
        content_type: str | None,
    ) -> PreparedDocument | DocumentInfo:
        if not collection or not isinstance(collection, str):
            raise InvalidQueryError("collection must be a non-empty name")
        doc_id = document_id(collection, location)
        content_hash = hashlib.sha256(data).hexdigest()
        old = self._db.execute(
            "SELECT content_hash, chunking FROM documents WHERE id = ?", (doc_id,)
        ).fetchone()
        if old == (content_hash, self._chunking_signature()):
            info = self.get(doc_id)
            info.status = "unchanged"
            return info
        extracted = load_bytes(data, name, content_type, self.max_file_bytes)
        embedder = self.embedder
        reserve = CONTEXT_TOKENS if self.headings else 0  # room for the section path
        max_tokens = min(self.chunk_tokens, embedder.max_tokens - reserve)
        doc = outline(extracted.text, extracted.title or _display_name(source))
        starts = section_starts(doc) if self.sections else ()
        chunks = chunk_text(extracted.text, embedder.count_tokens, max_tokens,
                            min(self.overlap_tokens, max_tokens // 2), extracted.page_starts,
                            starts)  # fmt: skip
        contexts = [""] * len(chunks)
        if self.headings:
            contexts = [" > ".join(section_path(doc, c.start)) for c in chunks]
        texts = [with_context(x, c.text) for x, c in zip(contexts, chunks, strict=True)]
        vectors = embedder.embed(texts, progress=self.progress)
        return PreparedDocument(doc_id, collection, location, source, extracted, content_hash,
                                dict(metadata or {}), chunks, vectors, old is not None,
                                contexts)  # fmt: skip

    def _info_of(self, item: PreparedDocument) -> DocumentInfo:
        info = self.get(item.id)
        info.status = "replaced" if item.replaces else "added"
        return info

    # ----- deleting
    def delete(self, document_id: str) -> None:
        """Remove a document from SQLite, FAISS and BM25."""
        self.get(document_id)  # raises UnknownDocumentError
        self._commit([], deletions=[document_id])

    # ----- the one write path
    def _commit(self, prepared: Sequence[PreparedDocument], deletions: Sequence[str] = ()) -> None:
        with self._lock, self._file_lock:
            self._sync()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                removed = self._delete_rows([*deletions, *(p.id for p in prepared)])
                new_ids, new_vectors = self._insert_rows(prepared)
                index = self._updated_index(removed, new_ids, new_vectors)
                generation = (self._generation or 0) + 1
                vector_index.write_index(index, self._index_path(generation))
                self._set_meta(generation=str(generation), index_kind=self.index_kind)
                if new_vectors:
                    self._set_meta(dimension=str(new_vectors[0].shape[1]))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._index, self._generation, self._lexical = None, None, None
                raise
            self._index, self._generation, self._lexical = index, generation, None
            self._remove_stale_index_files(keep={generation, generation - 1})

    def _delete_rows(self, doc_ids: Sequence[str]) -> list[int]:
        removed: list[int] = []
        for doc_id in doc_ids:
            rows = self._db.execute("SELECT id FROM chunks WHERE document_id = ?", (doc_id,))
            removed += [r[0] for r in rows]
            self._db.execute("DELETE FROM chunks WHERE document_id = ?", (doc_id,))
            self._db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
        return removed

    def _insert_rows(
        self, prepared: Sequence[PreparedDocument]
    ) -> tuple[list[int], list[np.ndarray]]:
        new_ids: list[int] = []
        new_vectors: list[np.ndarray] = []
        dimension = self._meta().get("dimension")
        for p in prepared:
            if dimension is not None and p.vectors.shape[1] != int(dimension):
                raise StoreConfigError(
                    f"{self.data_dir} holds {dimension}-d vectors, the embedder gives "
                    f"{p.vectors.shape[1]}-d"
                )
            ex = p.extracted
            self._db.execute(
                f"INSERT INTO documents ({DOCUMENT_COLUMNS}, location, chunking, text) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (p.id, p.collection, p.source, ex.kind, ex.title, p.content_hash, len(ex.text),
                 sum(c.n_tokens for c in p.chunks), len(p.chunks), json.dumps(ex.page_starts),
                 json.dumps(p.metadata), time.time(), p.location, self._chunking_signature(),
                 ex.text),
            )  # fmt: skip
            contexts = p.contexts or [""] * len(p.chunks)
            for chunk, vector, context in zip(p.chunks, p.vectors, contexts, strict=True):
                cursor = self._db.execute(
                    'INSERT INTO chunks (document_id, collection, ordinal, start, "end", page, '
                    "n_tokens, text, vector, context) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (p.id, p.collection, chunk.ordinal, chunk.start, chunk.end, chunk.page,
                     chunk.n_tokens, chunk.text, vector.astype(np.float32).tobytes(), context),
                )  # fmt: skip
                new_ids.append(cursor.lastrowid)
            if len(p.chunks):
                new_vectors.append(p.vectors)
        return new_ids, new_vectors

    def _updated_index(self, removed: list[int], new_ids: list[int], new_vectors: list):
        """Apply removals and additions in place, or rebuild when the index kind needs it."""
        index = self._index
        n_after = index.ntotal - len(removed) + len(new_ids)
        built = vector_index.built_kind(index)
        must_rebuild = (
            (removed and not vector_index.can_remove(index))
            or (built != self.index_kind and not (self.index_kind == "ivf" and n_after < vector_index.IVF_MIN_VECTORS))
            or index.d != (new_vectors[0].shape[1] if new_vectors else index.d)
        )  # fmt: skip
        if must_rebuild:
            ids, vectors = self._stored_vectors()  # this transaction's rows
            return vector_index.build_index(self.index_kind, vectors.shape[1], ids, vectors)
        if removed:
            index.remove_ids(np.asarray(removed, dtype=np.int64))
        if new_ids:
            index.add_with_ids(np.concatenate(new_vectors), np.asarray(new_ids, dtype=np.int64))
        return index

    def _rebuild_as(self, kind: str) -> None:
        """Switch the index kind of an existing store (rebuild from the stored vectors)."""
        self.index_kind = kind
        self._commit([])  # _updated_index sees the other kind and rebuilds

    # ----- reading state
    def _index_path(self, generation: int) -> Path:
        return self.data_dir / f"vectors-{generation}.faiss"

    def _stored_generation(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def _dimension(self) -> int:
        """Vector size; 1 for a store that has never held a vector (an empty placeholder index
        that the first write replaces), so reading an empty store never loads the model."""
        dimension = self._meta().get("dimension")
        return int(dimension) if dimension else 1

    def _stored_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self._db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        dimension = len(rows[0][1]) // 4 if rows else self._dimension()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        return ids, vectors.reshape(len(rows), dimension)

    def _sync(self) -> None:
        """Make the in-memory index match the committed generation (reload or rebuild)."""
        with self._lock:
            generation = self._stored_generation()
            if self._index is not None and generation == self._generation:
                return
            n_chunks = self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]
            index = None
            for _ in range(3):  # a writer may have replaced that generation meanwhile
                if generation == 0:
                    break
                try:
                    index = vector_index.read_index(self._index_path(generation))
                except RuntimeError:
                    generation = self._stored_generation()
                    continue
                if index.ntotal != n_chunks:
                    index = None  # stale or damaged file: rebuild below
                break
            if index is None:
                ids, vectors = self._stored_vectors()
                kind = self.index_kind
                index = vector_index.build_index(kind, vectors.shape[1], ids, vectors)
            self._index, self._generation, self._lexical = index, generation, None

    def _remove_stale_index_files(self, keep: set[int]) -> None:
        for path in self.data_dir.glob("vectors-*.faiss"):
            try:
                generation = int(path.stem.split("-", 1)[1])
            except ValueError:
                continue
            if generation not in keep:
                path.unlink(missing_ok=True)
        for path in self.data_dir.glob("bm25-*"):
            if path.name.split("-", 1)[1] not in {str(g) for g in keep}:
                shutil.rmtree(path, ignore_errors=True)
        for path in self.data_dir.glob(".vectors-*.tmp"):
            path.unlink(missing_ok=True)
        for path in self.data_dir.glob(".bm25-*.tmp"):
            shutil.rmtree(path, ignore_errors=True)

    def _lexical_index(self) -> LexicalIndex:
        """BM25 for the committed chunks: held in memory, else loaded, else built and saved."""
        if self._lexical is not None:
            return self._lexical
        saved = self._bm25_path(self._generation)
        try:
            self._lexical = LexicalIndex.load(saved)
            return self._lexical
        except FileNotFoundError:
            pass  # not saved yet for this generation: build it
        except (OSError, ValueError, KeyError, EOFError):
            shutil.rmtree(saved, ignore_errors=True)  # damaged (renamed in whole, so not partial)
        self._db.execute("BEGIN")  # one snapshot: the rows of exactly one generation
        try:
            generation = self._stored_generation()
            rows = self._db.execute("SELECT id, context, text FROM chunks ORDER BY id").fetchall()
        finally:
            self._db.execute("COMMIT")
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        self._lexical = LexicalIndex.build(ids, [with_context(r[1], r[2]) for r in rows])
        self._lexical.save(self._bm25_path(generation))
        return self._lexical

    def _bm25_path(self, generation: int | None) -> Path:
        return self.data_dir / f"bm25-{generation}"

    # ----- documents
    def get(self, document_id: str) -> DocumentInfo:
        row = self._db.execute(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = ?", (document_id,)
        ).fetchone()
        if row is None:
            raise UnknownDocumentError(f"no document with id {document_id!r}")
        return document_info(row)

    def list(self, collection: str | None = None) -> list[DocumentInfo]:
        sql = f"SELECT {DOCUMENT_COLUMNS} FROM documents"
        args: tuple = ()
        if collection is not None:
            sql, args = sql + " WHERE collection = ?", (collection,)
        rows = self._db.execute(sql + " ORDER BY added_at, id", args).fetchall()
        return [document_info(r) for r in rows]

    def collections(self) -> dict[str, int]:
        """Collection name -> number of documents."""
        rows = self._db.execute("SELECT collection, count(*) FROM documents GROUP BY collection")
        return dict(rows.fetchall())

    def read(self, document_id: str, start: int | None = None, end: int | None = None) -> str:
        """The document's extracted text, or the `[start, end)` slice of it."""
        row = self._db.execute("SELECT text FROM documents WHERE id = ?", (document_id,))
        row = row.fetchone()
        if row is None:
            raise UnknownDocumentError(f"no document with id {document_id!r}")
        text = row[0]
        start = 0 if start is None else start
        end = len(text) if end is None else end
        if not 0 <= start <= end:
            raise InvalidQueryError(f"bad character range [{start}, {end}) for {document_id}")
        return text[start:end]

    def chunks(self, document_id: str) -> list[Hit]:
        """All chunks of a document in order (score 0)."""
        sql = f"{HIT_QUERY} WHERE c.document_id = ? ORDER BY c.ordinal"
        return [hit_from_row(r, 0.0) for r in self._db.execute(sql, (document_id,))]

    # ----- search
    def search(
        self,
        query: str,
        k: int = 5,
        mode: str = "hybrid",
        collection: str | None = None,
        document_ids: Sequence[str] | None = None,
    ) -> list[Hit]:
        """Best `k` chunks for `query`; filters apply before ranking."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidQueryError("the query is empty")
        if mode not in MODES:
            raise InvalidQueryError(f"unknown search mode {mode!r}; one of {', '.join(MODES)}")
        if not isinstance(k, int) or k < 1:
            raise InvalidQueryError(f"k must be a positive integer, got {k!r}")
        with self._lock:
            self._sync()
            allowed = self._allowed_ids(collection, document_ids)
            if self._index.ntotal == 0 or (allowed is not None and len(allowed) == 0):
                return []
            depth = k if mode != "hybrid" else max(50, 4 * k)
            rankings = []
            if mode in ("dense", "hybrid"):
                rankings.append(self._dense(query, depth, allowed))
            if mode in ("lexical", "hybrid"):
                scores, ids = self._lexical_index().search(query, depth, allowed)
                rankings.append(list(zip(ids.tolist(), scores.tolist(), strict=True)))
        if mode == "hybrid":
            ranked = FUSIONS[self.hybrid_fusion](rankings, self.hybrid_weights)
        else:
            ranked = rankings[0]
        return self._hits(ranked[: k + 8])[:k]  # a few spare in case rows vanished meanwhile

    def _dense(self, query: str, depth: int, allowed: np.ndarray | None) -> list[tuple[int, float]]:
        vector = self.embedder.embed_query(query)
        scores, ids = vector_index.search(self._index, vector, depth, allowed)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def _allowed_ids(
        self, collection: str | None, document_ids: Sequence[str] | None
    ) -> np.ndarray | None:
        if collection is None and document_ids is None:
            return None
        ids: list[int] = []
        doc_ids = list(document_ids) if document_ids is not None else [None]
        for start in range(0, len(doc_ids), 500):
            batch = doc_ids[start : start + 500]
            sql, args = "SELECT id FROM chunks WHERE 1", []
            if collection is not None:
                sql += " AND collection = ?"
                args.append(collection)
            if document_ids is not None:
                sql += f" AND document_id IN ({', '.join('?' * len(batch))})"
                args += batch
            ids += [r[0] for r in self._db.execute(sql, args)]
        return np.unique(np.asarray(ids, dtype=np.int64))

    def _hits(self, ranked: list[tuple[int, float]]) -> list[Hit]:
        if not ranked:
            return []
        ids = [i for i, _ in ranked]
        sql = f"{HIT_QUERY} WHERE c.id IN ({', '.join('?' * len(ids))})"
        by_id = {r[0]: r for r in self._db.execute(sql, ids)}
        return [hit_from_row(by_id[i], score) for i, score in ranked if i in by_id]


def _display_name(source: str) -> str:
    """A document's name for its chunks' section path: the file name without a document suffix."""
    name = Path(source).name
    suffix = Path(name).suffix.lower()
    return name[: -len(suffix)] if suffix in (".txt", ".md", ".markdown", ".html", ".htm", ".pdf") else name
