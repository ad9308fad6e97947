"""FAISS indexes behind one small interface, built by kind from a registry.

Kinds (see FAISS's wiki, "Guidelines to choose an index"): `flat` is exact inner-product search in `IndexIDMap2` (the
default: exact, deletes are cheap, no training); `hnsw` is `IDMap2,HNSW32,Flat` (fast, but FAISS
cannot remove from HNSW, so a delete rebuilds it from the stored vectors); `ivf` is
`IVF{nlist},Flat` trained on the vectors present when it is built (ids stored natively, deletes
supported). An `ivf` index over fewer than `IVF_MIN_VECTORS` vectors is built flat instead, since
k-means needs data; the store rebuilds it as IVF once the collection has grown.

The vectors' source of truth is SQLite (store.py), so every index here is a cache that can be
rebuilt; files are written to a temporary name, fsynced, then `os.replace`d into place.
Vectors are unit-length, so inner product is cosine similarity.

Threads: a single query is searched on one OpenMP thread. FAISS's fork/join costs more than it
saves for one query, and on a shared, busy machine much more: a flat search over 30k x 384 took
61 ms with 2 threads and 3 ms with 1 (bench/retrieval_speed.py has the 100k numbers). The thread count
is process-wide in FAISS, so it is set for the call and restored after it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

IVF_MIN_VECTORS = 4096
HNSW_M = 32
HNSW_EF_SEARCH = 64
IVF_NPROBE = 16


def _flat(dimension: int, vectors: np.ndarray) -> faiss.Index:
    return faiss.index_factory(dimension, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)


def _hnsw(dimension: int, vectors: np.ndarray) -> faiss.Index:
    index = faiss.index_factory(dimension, f"IDMap2,HNSW{HNSW_M},Flat", faiss.METRIC_INNER_PRODUCT)
    faiss.downcast_index(index.index).hnsw.efConstruction = 80
    return index


def ivf_nlist(n_vectors: int) -> int:
    """Coarse cells: ~4·sqrt(n), at least 39 training points per cell (FAISS's own warning)."""
    return max(1, min(int(4 * math.sqrt(n_vectors)), n_vectors // 39))


def _ivf(dimension: int, vectors: np.ndarray) -> faiss.Index:
    if len(vectors) < IVF_MIN_VECTORS:
        return _flat(dimension, vectors)
    nlist = ivf_nlist(len(vectors))
    index = faiss.index_factory(dimension, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    return index


INDEX_KINDS: dict[str, Callable[[int, np.ndarray], faiss.Index]] = {
    "flat": _flat,
    "hnsw": _hnsw,
    "ivf": _ivf,
}


def build_index(kind: str, dimension: int, ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    """A new index of `kind` holding `vectors` under `ids` (int64)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {sorted(INDEX_KINDS)}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dimension)
    index = INDEX_KINDS[kind](dimension, vectors)
    if len(ids):
        index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
    return index


def built_kind(index: faiss.Index) -> str:
    """What an index is, read from the object (an `ivf` setting may hold a flat index)."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIDMap2):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    return "flat"


def can_remove(index: faiss.Index) -> bool:
    return built_kind(index) != "hnsw"


def search(
    index: faiss.Index, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) per query; ids -1 pad missing results. Filters apply before scoring."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(k, index.ntotal))
    kind = built_kind(index)
    selector = None
    if allowed_ids is not None:
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
    if kind == "hnsw":
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(HNSW_EF_SEARCH, 2 * k))
    elif kind == "ivf":
        params = faiss.SearchParametersIVF(sel=selector, nprobe=IVF_NPROBE)
    else:
        params = faiss.SearchParameters(sel=selector)
    if index.ntotal == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    with omp_threads(1 if len(queries) == 1 else None):
        scores, ids = index.search(queries, k, params=params)
    return scores, ids


@contextmanager
def omp_threads(n: int | None) -> Iterator[None]:
    """Run the block with FAISS using `n` OpenMP threads (None: leave it as it is)."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def write_index(index: faiss.Index, path: Path) -> None:
    """Write atomically: temporary file in the same folder, fsync, rename over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def read_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
