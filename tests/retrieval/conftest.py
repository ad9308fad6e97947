"""Shared fixtures: the offline MiniLM embedder is loaded once per test session (about 3 s)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def embedder():
    from retrieval.embeddings import Embedder

    return Embedder()


@pytest.fixture
def make_store(tmp_path, embedder):
    """Open a DocumentStore on a folder (a fresh one by default), sharing the loaded embedder."""
    from retrieval import DocumentStore

    opened = []

    def make(folder=None, **settings):
        store = DocumentStore(folder or tmp_path / "store", embedder, **settings)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
