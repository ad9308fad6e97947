"""The evaluation's answer spans: a passage counts wherever its exact text occurs, in any document
(pydoc repeats an inherited docstring under each class), and the old first-place rule stays
available for comparison (bench/retrieval_eval.py, bench/qa_eval.py)."""

from __future__ import annotations

import pytest

from bench import retrieval_eval
from bench.corpora import Question, find_spans
from bench.retrieval_eval import answer_spans, first_hit, overlaps

DOC = "class A\n |  read_text(self)\n |      Open the file in text mode.\n\nclass B\n |  read_text(self)\n |      Open the file in text mode.\n"
OTHER = "Open the file\n in text mode. Elsewhere."


@pytest.fixture
def question():
    first = find_spans(DOC, "Open the file in text mode.")[0]
    return Question("t-001", "t", "tune", "doc", "How do I read a file?", "Open the file in text mode.",
                    ("read_text",), first)


def test_every_place_the_passage_occurs_counts(question, monkeypatch):
    spans = answer_spans(question, {"doc": DOC, "other": OTHER, "none": "nothing here"})
    assert len(spans["doc"]) == 2 and len(spans["other"]) == 1 and "none" not in spans
    second = spans["doc"][1]
    assert DOC[second[0]:second[1]].startswith("Open the file")
    assert overlaps("doc", second[0] + 2, second[1] + 5, spans)
    assert not overlaps("doc", 0, 5, spans) and not overlaps("none", 0, 10, spans)
    assert first_hit([("none", 0, 9), ("doc", second[0], second[1])], spans) == 2

    monkeypatch.setattr(retrieval_eval, "SPANS", "first")
    old = answer_spans(question, {"doc": DOC, "other": OTHER})
    assert old["doc"] == [question.span] and first_hit([("doc", second[0], second[1])], old) is None
