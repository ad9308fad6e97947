"""BM25 over chunk texts (bm25s, Okapi BM25 with k1=1.5, b=0.75), English stemming (PyStemmer).

The index is built from the chunk texts of one committed store generation (read in one SQLite
transaction, so it never disagrees with that generation's chunks): about 9 s per 100k chunks of
150 words on one core. It is then saved beside the FAISS index as `bm25-<generation>/` (bm25s's
npy + json files with allow_pickle=False, plus the chunk ids; written to a temporary folder and
renamed into place), so other processes and restarts load it instead of rebuilding. Filters are
a mask over the
chunk positions applied before ranking; chunks that share no term with the query are not
returned (a lexical retriever that "finds" score-0 chunks only adds noise to the fusion).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np

STOPWORDS = "en"


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


class LexicalIndex:
    """BM25 over a list of texts whose ids are `chunk_ids` (sorted ascending)."""

    def __init__(self, chunk_ids: np.ndarray, bm25=None):
        self.chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
        self._bm25 = bm25  # None when there are no chunks
        self._stem = _stemmer()

    @classmethod
    def build(cls, chunk_ids: np.ndarray, texts: list[str]) -> LexicalIndex:
        import bm25s

        if not texts:
            return cls(chunk_ids)
        tokens = bm25s.tokenize(texts, stopwords=STOPWORDS, stemmer=_stemmer(), show_progress=False)
        bm25 = bm25s.BM25()
        bm25.index(tokens, show_progress=False)
        return cls(chunk_ids, bm25)

    def save(self, folder: Path) -> None:
        """Write to `folder` atomically (temporary folder, then rename); no-op if it exists."""
        if self._bm25 is None or folder.exists():
            return
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self._bm25.save(str(tmp), allow_pickle=False, show_progress=False)
            np.save(tmp / "chunk_ids.npy", self.chunk_ids, allow_pickle=False)
            os.rename(tmp, folder)
        except OSError:
            pass  # another process saved it first, or the disk is full: it is only a cache
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        """Load a saved index; raises OSError or ValueError when it is missing or damaged."""
        import bm25s

        chunk_ids = np.load(folder / "chunk_ids.npy", allow_pickle=False)
        bm25 = bm25s.BM25.load(str(folder), allow_pickle=False, show_progress=False)
        if bm25.scores["num_docs"] != len(chunk_ids):
            raise ValueError(f"{folder}: {bm25.scores['num_docs']} documents, {len(chunk_ids)} ids")
        return cls(chunk_ids, bm25)

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def query_terms(self, query: str) -> list[str]:
        import bm25s

        if self._bm25 is None:
            return []
        terms = bm25s.tokenize(
            [query], stopwords=STOPWORDS, stemmer=self._stem, return_ids=False, show_progress=False
        )[0]
        vocab = self._bm25.vocab_dict
        return [t for t in terms if t in vocab]

    def search(
        self, query: str, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, chunk ids) with score > 0, best first."""
        terms = self.query_terms(query)
        if not terms:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores = np.asarray(self._bm25.get_scores(terms), dtype=np.float32)
        if allowed_ids is not None:
            allowed_ids = np.asarray(allowed_ids, dtype=np.int64)
            positions = np.searchsorted(self.chunk_ids, allowed_ids)
            inside = positions < len(self.chunk_ids)
            positions, allowed_ids = positions[inside], allowed_ids[inside]
            mask = np.zeros(len(scores), dtype=bool)
            mask[positions[self.chunk_ids[positions] == allowed_ids]] = True
            scores = np.where(mask, scores, 0.0)
        k = min(k, int((scores > 0).sum()))
        if k == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return scores[top], self.chunk_ids[top]
