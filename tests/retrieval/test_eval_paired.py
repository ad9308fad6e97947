"""The evaluation's per-question comparison (bench/retrieval_eval.py --against): the mean
difference of two pipelines on the same questions and how far chance alone could move it."""

from __future__ import annotations

import pytest

from bench.corpora import Question
from bench.retrieval_eval import paired, parse_settings


def questions(n: int, split: str) -> list[Question]:
    return [Question(f"{split}-{i}", "t", split, "doc", f"q{i}", "quote", ("w",), (0, 5)) for i in range(n)]


def test_a_pipeline_that_moves_every_hit_from_rank_two_to_one_gains_half_a_point_of_mrr_each():
    qs = questions(4, "tune") + questions(2, "heldout")
    diffs = paired(qs, [1, 1, 1, 1, None, 3], [2, 2, 2, 2, None, 3])
    mean, se = diffs["tune mrr@5"]
    assert mean == pytest.approx(0.5) and se == pytest.approx(0.0), diffs
    assert diffs["tune recall@5"] == (0.0, 0.0)
    assert diffs["heldout mrr@5"] == (0.0, 0.0), "the held-out half is scored apart from the tuning half"


def test_the_standard_error_shrinks_with_more_questions():
    few, many = questions(4, "tune"), questions(64, "tune")
    _, se_few = paired(few, [1, None, 1, None], [None, 1, None, 1])["tune recall@5"]
    _, se_many = paired(many, [1, None] * 32, [None, 1] * 32)["tune recall@5"]
    assert se_few == pytest.approx(2 / 3**0.5 / 2, rel=1e-6), se_few  # sd of ±1 over 4 is 2/sqrt(3)
    assert se_many < se_few / 3, (se_few, se_many)


def test_settings_are_read_as_numbers_and_booleans():
    assert parse_settings("chunk_tokens=200,overlap_tokens=32,sections=False") == {
        "chunk_tokens": 200, "overlap_tokens": 32, "sections": False}  # fmt: skip
    assert parse_settings(None) == {}
