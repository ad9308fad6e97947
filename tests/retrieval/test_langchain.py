"""The langchain-core retriever over the store."""

from __future__ import annotations

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from retrieval.langchain import StoreRetriever
from tests.retrieval.corpus import BREAD, VOLCANO


def test_langchain_retriever_returns_documents_with_citation_metadata(make_store):
    store = make_store()
    store.add_text(VOLCANO, "volcano.txt", collection="geo")
    store.add_text(BREAD, "bread.txt", collection="food")
    retriever = StoreRetriever(store=store, k=2, collection="food")
    assert isinstance(retriever, BaseRetriever)
    documents = retriever.invoke("how long does the loaf bake")
    assert documents and all(isinstance(d, Document) for d in documents)
    top = documents[0]
    assert top.metadata["source"] == "bread.txt" and top.metadata["collection"] == "food"
    span = store.read(top.metadata["document"], top.metadata["start"], top.metadata["end"])
    assert span == top.page_content
    assert {"chunk", "page", "score"} <= set(top.metadata)
    assert retriever.batch(["lava", "starter"])[1][0].metadata["source"] == "bread.txt"
