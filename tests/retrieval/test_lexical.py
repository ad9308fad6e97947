"""BM25 with English stemming and stop words: a user's word form finds the document's."""

from __future__ import annotations

import numpy as np

from retrieval.lexical import LexicalIndex

TEXTS = [
    "The archive is compressed with gzip before it is written.",
    "Symbolic links are followed only when asked.",
    "Permissions of the file are changed recursively.",
]


def test_another_form_of_a_word_finds_the_chunk():
    index = LexicalIndex.build(np.arange(3), TEXTS)
    scores, ids = index.search("compressing archives", k=3)
    assert ids.tolist()[:1] == [0], f"expected chunk 0 first, got {ids.tolist()} ({scores})"
    _, ids = index.search("follow symbolic link", k=3)
    assert ids.tolist()[:1] == [1]


def test_a_query_of_only_stop_words_finds_nothing():
    index = LexicalIndex.build(np.arange(3), TEXTS)
    scores, ids = index.search("the of are it is", k=3)
    assert len(ids) == 0, f"stop words matched chunks {ids.tolist()}"
