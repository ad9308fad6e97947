"""The naive pipeline every retrieval number is compared with, measured in the same run.

1,000-character windows with 200 characters of overlap, BM25 from bm25s with its default
tokenizer (no stemming, no stop words), all-MiniLM-L6-v2 cosine similarity (exact), both top-50
lists fused by reciprocal rank fusion with k = 60 and equal weights: the pipeline a tutorial
builds in twenty lines (LangChain's RecursiveCharacterTextSplitter defaults to 1,000/200).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK_CHARS, OVERLAP_CHARS, DEPTH = 1000, 200, 50


@dataclass(frozen=True)
class Piece:
    document: str
    start: int
    end: int


def windows(texts: dict[str, str]) -> list[Piece]:
    pieces = []
    step = CHUNK_CHARS - OVERLAP_CHARS
    for name, text in texts.items():
        for start in range(0, max(1, len(text) - OVERLAP_CHARS), step):
            pieces.append(Piece(name, start, min(len(text), start + CHUNK_CHARS)))
    return pieces


class NaivePipeline:
    def __init__(self, texts: dict[str, str], embedder):
        import bm25s

        self.pieces = windows(texts)
        chunk_texts = [texts[p.document][p.start : p.end] for p in self.pieces]
        self.bm25 = bm25s.BM25()
        self.bm25.index(bm25s.tokenize(chunk_texts, show_progress=False), show_progress=False)
        self.embedder = embedder
        self.vectors = embedder.embed(chunk_texts)

    def search(self, query: str, k: int = 5) -> list[Piece]:
        import bm25s

        from retrieval.fusion import reciprocal_rank_fusion

        dense = self.vectors @ self.embedder.embed_query(query)[0]
        dense_top = np.argsort(-dense)[:DEPTH]
        tokens = bm25s.tokenize([query], show_progress=False, return_ids=False)[0]
        terms = [t for t in tokens if t in self.bm25.vocab_dict]
        lexical = np.asarray(self.bm25.get_scores(terms)) if terms else np.zeros(len(self.pieces))
        lexical_top = [i for i in np.argsort(-lexical)[:DEPTH] if lexical[i] > 0]
        fused = reciprocal_rank_fusion(
            [[(int(i), float(dense[i])) for i in dense_top], [(int(i), 0.0) for i in lexical_top]]
        )
        return [self.pieces[i] for i, _ in fused[:k]]
