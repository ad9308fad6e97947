"""BM25 over chunk texts (bm25s, Okapi BM25 with k1=1.5, b=0.75), English stemming (PyStemmer).

The index is built in memory from the chunk texts in SQLite, once per store generation (a few
seconds per 100k chunks; see bench/retrieval.py), so nothing is pickled and a reader can never
see a BM25 index that disagrees with the committed chunks. Filters are a mask over the
chunk positions applied before ranking; chunks that share no term with the query are not
returned (a lexical retriever that "finds" score-0 chunks only adds noise to the fusion).
"""

from __future__ import annotations

import numpy as np

STOPWORDS = "en"


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


class LexicalIndex:
    """BM25 over a list of texts whose ids are `chunk_ids` (sorted ascending)."""

    def __init__(self, chunk_ids: np.ndarray, texts: list[str]):
        import bm25s

        self.chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
        self._stem = _stemmer()
        self._bm25 = None
        if texts:
            tokens = bm25s.tokenize(
                texts, stopwords=STOPWORDS, stemmer=self._stem, show_progress=False
            )
            self._bm25 = bm25s.BM25()
            self._bm25.index(tokens, show_progress=False)

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
