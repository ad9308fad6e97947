"""Crashes, concurrent readers and writers, damaged files, and the other FAISS index kinds."""

from __future__ import annotations

import threading

import pytest

from retrieval import vector_index
from tests.retrieval.corpus import BREAD, TRAINS, VOLCANO


def snapshot(store):
    return [d.id for d in store.list()], [
        (h.chunk_id, round(h.score, 5)) for h in store.search("lava and bread", k=5)
    ]


@pytest.mark.parametrize("crash_point", ["writing the index", "after the index, before the commit"])
def test_a_crash_mid_write_leaves_the_previous_state(
    make_store, tmp_path, monkeypatch, crash_point
):
    store = make_store()
    store.add_text(VOLCANO, "volcano")
    before = snapshot(store)
    real_write = vector_index.write_index

    def crashing_write(index, path):
        if crash_point == "writing the index":
            path.with_name(f".{path.name}.999.tmp").write_bytes(b"half a file")
            raise OSError("disk full")
        real_write(index, path)
        raise KeyboardInterrupt  # the process dies before SQLite commits

    monkeypatch.setattr(vector_index, "write_index", crashing_write)
    with pytest.raises((OSError, KeyboardInterrupt)):
        store.add_text(BREAD, "bread")
    monkeypatch.setattr(vector_index, "write_index", real_write)

    assert snapshot(store) == before
    assert snapshot(make_store(tmp_path / "store")) == before, "a new process sees the old state"
    store.add_text(TRAINS, "trains")  # the next write works and cleans up
    assert len(store.list()) == 2
    leftovers = sorted(p.name for p in (tmp_path / "store").iterdir() if "vectors" in p.name)
    assert len(leftovers) <= 2 and not any(name.endswith(".tmp") for name in leftovers), leftovers


def test_a_reader_sees_what_another_writer_committed(make_store, tmp_path):
    writer = make_store()
    reader = make_store(tmp_path / "store")
    writer.add_text(VOLCANO, "volcano")
    assert [h.source for h in reader.search("magma", k=1)] == ["volcano"]
    info = writer.add_text(BREAD, "bread")
    assert [h.source for h in reader.search("sourdough starter", k=1, mode="lexical")] == ["bread"]
    writer.delete(info.id)
    assert reader.search("sourdough starter", k=1, mode="lexical") == []


def test_concurrent_writers_lose_nothing(make_store, tmp_path):
    stores = [make_store(), make_store(tmp_path / "store")]
    texts = [VOLCANO, BREAD, TRAINS, VOLCANO.upper(), BREAD.upper(), TRAINS.upper()]
    errors = []

    def write(i):
        try:
            stores[i % 2].add_text(texts[i], f"doc-{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    fresh = make_store(tmp_path / "store")
    assert sorted(d.source for d in fresh.list()) == [f"doc-{i}" for i in range(len(texts))]
    fresh.search("x ray", k=1)
    assert fresh._index.ntotal == sum(d.n_chunks for d in fresh.list())


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_missing_or_damaged_index_file_is_rebuilt_from_sqlite(make_store, tmp_path, damage):
    store = make_store()
    store.add_text(VOLCANO, "volcano")
    store.add_text(BREAD, "bread")
    before = snapshot(store)
    for path in (tmp_path / "store").glob("vectors-*.faiss"):
        if damage == "deleted":
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[:100])
    assert snapshot(make_store(tmp_path / "store")) == before


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_other_index_kinds_add_search_and_delete(make_store, tmp_path, kind):
    store = make_store(index_kind=kind)
    volcano = store.add_text(VOLCANO, "volcano")
    store.add_text(BREAD, "bread", collection="food")
    assert store.search("explosive eruptions", k=1, mode="dense")[0].source == "volcano"
    filtered = store.search("explosive eruptions", k=5, mode="dense", collection="food")
    assert {h.source for h in filtered} == {"bread"}
    store.delete(volcano.id)
    assert {h.source for h in store.search("explosive eruptions", k=5, mode="dense")} == {"bread"}
    reopened = make_store(tmp_path / "store")
    assert reopened.index_kind == kind
    assert {h.source for h in reopened.search("eruptions", k=5, mode="dense")} == {"bread"}


def test_switching_an_existing_store_to_hnsw_keeps_its_results(make_store, tmp_path):
    store = make_store()
    store.add_text(VOLCANO, "volcano")
    store.add_text(TRAINS, "trains")
    before = [h.chunk_id for h in store.search("overnight rail journey", k=3, mode="dense")]
    switched = make_store(tmp_path / "store", index_kind="hnsw")
    switched.search("x", k=1)
    assert vector_index.built_kind(switched._index) == "hnsw"
    assert [
        h.chunk_id for h in switched.search("overnight rail journey", k=3, mode="dense")
    ] == before


def test_ivf_becomes_a_trained_ivf_once_there_is_enough_data():
    import numpy as np

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((vector_index.IVF_MIN_VECTORS, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(len(vectors), dtype=np.int64) + 1000
    small = vector_index.build_index("ivf", 16, ids[:100], vectors[:100])
    assert vector_index.built_kind(small) == "flat"
    big = vector_index.build_index("ivf", 16, ids, vectors)
    assert vector_index.built_kind(big) == "ivf"
    scores, found = vector_index.search(big, vectors[:5], 1)
    assert found[:, 0].tolist() == ids[:5].tolist()
    big.remove_ids(ids[:5])
    _, found = vector_index.search(big, vectors[:5], 1)
    assert not set(found[:, 0].tolist()) & set(ids[:5].tolist())


def test_bm25_is_saved_once_and_loaded_by_other_processes(make_store, tmp_path, monkeypatch):
    from retrieval.lexical import LexicalIndex

    store = make_store()
    store.add_text(VOLCANO, "volcano")
    store.add_text(BREAD, "bread")
    expected = [(h.chunk_id, h.score) for h in store.search("sourdough", k=3, mode="lexical")]
    folder = tmp_path / "store" / f"bm25-{store._stored_generation()}"
    assert folder.is_dir()

    def no_rebuild(*args):
        raise AssertionError("BM25 was rebuilt instead of loaded")

    monkeypatch.setattr(LexicalIndex, "build", no_rebuild)
    reader = make_store(tmp_path / "store")
    assert [
        (h.chunk_id, h.score) for h in reader.search("sourdough", k=3, mode="lexical")
    ] == expected
    monkeypatch.undo()

    (folder / "vocab.index.json").write_text("{broken")
    damaged = make_store(tmp_path / "store")
    assert [
        (h.chunk_id, h.score) for h in damaged.search("sourdough", k=3, mode="lexical")
    ] == expected

    store.add_text(TRAINS, "trains")
    store.search("x", k=1, mode="lexical")
    store.add_text(TRAINS + " Extra.", "trains")
    names = sorted(p.name for p in (tmp_path / "store").iterdir() if "bm25" in p.name)
    assert folder.name not in names and len(names) <= 2, names


WRITER = """
import sys
from retrieval import DocumentStore
store = DocumentStore(sys.argv[1])
for i in range(6):
    store.add_text(f"Note {i}: the ferry to island {i} leaves at {i + 6} in the morning.", f"note-{i}")
    if i == 5:
        store.delete(store.list()[0].id)  # deletes are seen too
"""


def test_a_reader_process_stays_consistent_while_another_process_writes(make_store, tmp_path):
    import os
    import subprocess
    import sys

    store = make_store()
    store.add_text(TRAINS, "trains")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "store")], env=env,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    searches = 0
    while writer.poll() is None or searches == 0:
        for hit in store.search("when does the ferry leave", k=3):
            assert store.read(hit.document, hit.start, hit.end) == hit.text
        searches += 1
    assert writer.returncode == 0, writer.stderr.read()
    sources = {h.source for h in store.search("ferry to island", k=10)}
    assert sources == {f"note-{i}" for i in range(6)}, sources  # "trains" was deleted
    assert [d.source for d in store.list()] == [f"note-{i}" for i in range(6)]


def test_threads_sharing_one_store_search_while_it_writes(make_store):
    store = make_store()
    store.add_text(VOLCANO, "volcano")
    errors = []

    def read():
        try:
            for _ in range(20):
                for hit in store.search("lava", k=2):
                    assert store.read(hit.document, hit.start, hit.end) == hit.text
                store.list()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    store.add_text(BREAD, "bread")
    store.add_text(TRAINS, "trains")
    for thread in readers:
        thread.join()
    assert errors == []
    assert len(store.list()) == 3
