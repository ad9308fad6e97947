"""Fusion functions: ranks (RRF) and normalised scores (relative), with weights."""

from __future__ import annotations

import pytest

from retrieval.fusion import FUSIONS, reciprocal_rank_fusion, relative_score_fusion

DENSE = [("a", 0.9), ("b", 0.8), ("c", 0.1)]
LEXICAL = [("c", 12.0), ("a", 3.0)]


def test_rrf_rewards_items_both_lists_rank_well():
    fused = dict(reciprocal_rank_fusion([DENSE, LEXICAL]))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert [item for item, _ in reciprocal_rank_fusion([DENSE, LEXICAL])] == ["a", "c", "b"]


def test_rrf_weights_scale_each_list():
    fused = reciprocal_rank_fusion([DENSE, LEXICAL], [1.0, 0.0])
    assert [item for item, _ in fused] == ["a", "b", "c"]


def test_relative_fusion_normalises_scores_per_list():
    fused = dict(relative_score_fusion([DENSE, LEXICAL], [0.75, 0.25]))
    assert fused["a"] == pytest.approx(0.75 * 1.0 + 0.25 * 0.0)
    assert fused["b"] == pytest.approx(0.75 * (0.7 / 0.8))
    assert fused["c"] == pytest.approx(0.75 * 0.0 + 0.25 * 1.0)


def test_every_fusion_handles_empty_lists_and_checks_weights():
    for fuse in FUSIONS.values():
        assert fuse([[], []]) == []
        assert [item for item, _ in fuse([DENSE, []])] == ["a", "b", "c"]
        with pytest.raises(ValueError, match="1 weights for 2 rankings"):
            fuse([DENSE, LEXICAL], [1.0])
