"""Fusing ranked lists from several retrievers into one: a registry of plain functions.

Each takes rankings (lists of (id, score), best first) and one weight per ranking, and returns
one list of (id, fused score), best first. Ties keep the order of first appearance.

- `rrf`, reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009): Σ w / (60 + rank),
  ranks from 1; k = 60 as in the paper, LangChain's EnsembleRetriever and Qwen-Agent. Uses
  ranks only, so scores on different scales (BM25, cosine) need no calibration. Default weights 1.
- `relative`, relative score fusion (Weaviate's `relativeScoreFusion`): each list's scores
  min-max normalised to [0, 1] over the list, then Σ w · score; an id missing from a list gets 0
  there. Default weights (0.5, 0.5) for (dense, lexical), chosen on the TUNING half of
  bench/retrieval_eval.py (recall@5 / MRR@5, tune half): licenses 0.944 / 0.803, man 0.892 /
  0.687, pydoc 0.935 / 0.669, the best of the weights tried on every corpus (Weaviate's 0.75 /
  0.25: 0.889 / 0.751, 0.838 / 0.553, 0.935 / 0.629; RRF 1/1: 0.917 / 0.719, 0.865 / 0.635,
  0.935 / 0.618). With headings in the chunks BM25 is a much better half than before.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

RRF_K = 60
Ranking = Sequence[tuple[Hashable, float]]


def reciprocal_rank_fusion(
    rankings: Sequence[Ranking], weights: Sequence[float] | None = None, k: int = RRF_K
) -> list[tuple[Hashable, float]]:
    fused: dict[Hashable, float] = {}
    for ranking, weight in zip(rankings, _weights(rankings, weights), strict=True):
        for rank, (item, _) in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (k + rank)
    return sorted(fused.items(), key=lambda pair: -pair[1])


def relative_score_fusion(
    rankings: Sequence[Ranking], weights: Sequence[float] | None = None
) -> list[tuple[Hashable, float]]:
    fused: dict[Hashable, float] = {}
    for ranking, weight in zip(rankings, _weights(rankings, weights), strict=True):
        if not ranking:
            continue
        scores = [score for _, score in ranking]
        low, high = min(scores), max(scores)
        for item, score in ranking:
            normalised = (score - low) / (high - low) if high > low else 1.0
            fused[item] = fused.get(item, 0.0) + weight * normalised
    return sorted(fused.items(), key=lambda pair: -pair[1])


def _weights(rankings: Sequence[Ranking], weights: Sequence[float] | None) -> list[float]:
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    return weights


FUSIONS: dict[str, Callable[..., list[tuple[Hashable, float]]]] = {
    "rrf": reciprocal_rank_fusion,
    "relative": relative_score_fusion,
}
DEFAULT_WEIGHTS: dict[str, tuple[float, float]] = {  # (dense, lexical)
    "rrf": (1.0, 1.0),
    "relative": (0.5, 0.5),  # chosen on the tuning half of bench/retrieval_eval.py, see below
}
