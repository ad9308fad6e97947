"""A langchain-core `BaseRetriever` over a `DocumentStore`.

`StoreRetriever(store=store, k=5, mode="hybrid").invoke("question")` returns langchain
`Document`s whose `page_content` is the chunk text and whose metadata carries what a citation
needs: document id, source, chunk ordinal, character span, page, score, collection. The
langchain import stays in this module, so the rest of `retrieval` does not need langchain-core.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from retrieval.store import DocumentStore, Hit


class StoreRetriever(BaseRetriever):
    """Search a DocumentStore from LangChain (sync; `ainvoke` runs it in a thread)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any  # DocumentStore; Any keeps pydantic from inspecting it
    k: int = 5
    mode: str = "hybrid"
    collection: str | None = None
    document_ids: Sequence[str] | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        store: DocumentStore = self.store
        hits = store.search(query, self.k, self.mode, self.collection, self.document_ids)
        return [hit_to_document(hit) for hit in hits]


def hit_to_document(hit: Hit) -> Document:
    metadata = {
        "document": hit.document,
        "source": hit.source,
        "chunk": hit.chunk,
        "start": hit.start,
        "end": hit.end,
        "page": hit.page,
        "score": hit.score,
        "collection": hit.collection,
    }
    return Document(page_content=hit.text, metadata=metadata, id=f"{hit.document}:{hit.chunk}")
