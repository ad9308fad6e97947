"""The document store as a user sees it: add, search, restart, update, delete, fail safely."""

from __future__ import annotations

import pytest

from retrieval.errors import (
    EmptyDocumentError,
    InvalidQueryError,
    StoreConfigError,
    UnknownDocumentError,
)
from tests.retrieval.corpus import BREAD, TRAINS, VOLCANO


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, text in [("volcano.txt", VOLCANO), ("bread.md", BREAD), ("trains.txt", TRAINS)]:
        paths[name] = tmp_path / name
        paths[name].write_text(text)
    return paths


def sources(hits):
    return [h.source.rsplit("/", 1)[-1] for h in hits]


def test_ingest_search_restart_same_results(make_store, files, tmp_path):
    store = make_store()
    infos = [store.add_file(p) for p in files.values()]
    assert [i.status for i in infos] == ["added"] * 3
    queries = ["why do some mountains explode", "how hot should the oven be", "sleeper carriage"]
    before = {}
    for query in queries:
        for mode in ("hybrid", "dense", "lexical"):
            before[query, mode] = store.search(query, k=3, mode=mode)
    assert sources(before[queries[0], "hybrid"])[0] == "volcano.txt"
    assert sources(before[queries[1], "hybrid"])[0] == "bread.md"
    assert sources(before[queries[2], "dense"])[0] == "trains.txt"
    store.close()

    reopened = make_store(tmp_path / "store")
    for (query, mode), hits in before.items():
        again = reopened.search(query, k=3, mode=mode)
        assert [(h.chunk_id, h.start, h.end) for h in again] == [
            (h.chunk_id, h.start, h.end) for h in hits
        ]
        assert [h.score for h in again] == pytest.approx([h.score for h in hits], rel=1e-5)


def test_hits_carry_exact_spans_into_the_document_text(make_store, files):
    store = make_store()
    info = store.add_file(files["volcano.txt"])
    for hit in store.search("basalt lava", k=2):
        assert store.read(hit.document, hit.start, hit.end) == hit.text
        assert hit.document == info.id and hit.source == str(files["volcano.txt"])


def test_re_adding_an_unchanged_file_adds_nothing(make_store, files):
    store = make_store()
    first = store.add_file(files["bread.md"])
    generation = store._stored_generation()
    again = store.add_file(files["bread.md"])
    assert again.status == "unchanged" and again.id == first.id
    assert store._stored_generation() == generation, "an unchanged file must not rewrite the index"
    assert len(store.list()) == 1 and store._index.ntotal == first.n_chunks


def test_a_changed_file_replaces_its_chunks(make_store, files):
    store = make_store()
    path = files["trains.txt"]
    first = store.add_file(path)
    path.write_text("The ferry to the island departs every hour from pier four.")
    second = store.add_file(path)
    assert second.status == "replaced" and second.id == first.id
    assert len(store.list()) == 1
    assert store._index.ntotal == second.n_chunks
    old = store.search("night train sleeping cars", k=5, mode="lexical")
    assert [h.text for h in old] in ([], [store.read(second.id)]), old  # only the
    # new text can match now, through its heading: the document is still named "trains"
    assert sources(store.search("boat to the island", k=1, mode="dense")) == ["trains.txt"]


def test_delete_removes_a_document_from_both_indexes(make_store, files):
    store = make_store()
    keep = store.add_file(files["bread.md"])
    gone = store.add_file(files["volcano.txt"])
    store.delete(gone.id)
    assert [d.id for d in store.list()] == [keep.id]
    for mode in ("dense", "lexical", "hybrid"):
        hits = store.search("volcano magma eruption", k=10, mode=mode)
        assert gone.id not in {h.document for h in hits}, mode
    assert store.search("volcano magma", k=10, mode="lexical") == []
    with pytest.raises(UnknownDocumentError, match=gone.id):
        store.delete(gone.id)


def test_filters_by_collection_and_document(make_store, files):
    store = make_store()
    volcano = store.add_file(files["volcano.txt"], collection="geo")
    store.add_file(files["bread.md"], collection="food")
    trains = store.add_file(files["trains.txt"], collection="geo")
    assert store.collections() == {"geo": 2, "food": 1}
    for mode in ("dense", "lexical", "hybrid"):
        hits = store.search("bake bread in the oven", k=5, mode=mode, collection="geo")
        assert {h.collection for h in hits} <= {"geo"}, mode
        hits = store.search("lava", k=5, mode=mode, document_ids=[trains.id])
        assert {h.document for h in hits} <= {trains.id}, mode
    assert store.search("lava", k=5, collection="nowhere") == []
    assert store.search("lava", k=1, document_ids=[volcano.id])[0].document == volcano.id


def test_same_file_name_in_two_collections_are_two_documents(make_store, files):
    store = make_store()
    a = store.add_file(files["trains.txt"], collection="a")
    b = store.add_file(files["trains.txt"], collection="b")
    assert a.id != b.id and a.status == b.status == "added"


def test_add_text_and_metadata(make_store):
    store = make_store()
    info = store.add_text(TRAINS, source="timetable", metadata={"lang": "en"})
    assert store.get(info.id).metadata == {"lang": "en"}
    assert store.read(info.id) == TRAINS
    assert store.add_text(TRAINS, source="timetable").status == "unchanged"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query": "  "}, "query is empty"),
        ({"query": "x", "mode": "fuzzy"}, "unknown search mode 'fuzzy'"),
        ({"query": "x", "k": 0}, "k must be a positive integer"),
    ],
)
def test_bad_search_requests(make_store, kwargs, message):
    with pytest.raises(InvalidQueryError, match=message):
        make_store().search(**kwargs)


def test_bad_documents_and_ids(make_store, tmp_path):
    store = make_store()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(EmptyDocumentError, match="empty.txt"):
        store.add_file(empty)
    with pytest.raises(UnknownDocumentError, match="no document with id 'nope'"):
        store.read("nope")
    results = store.add_files([empty, tmp_path / "missing.txt"])
    assert [type(r).__name__ for r in results] == ["EmptyDocumentError", "UnreadableFileError"]
    assert store.list() == []


def test_empty_store_searches_to_nothing(make_store):
    assert make_store().search("anything", k=3) == []


def test_a_store_refuses_another_embedder(make_store, tmp_path):
    make_store().add_text(TRAINS, "t")
    from retrieval import DocumentStore

    with pytest.raises(StoreConfigError, match="built with embedder 'all-MiniLM-L6-v2'"):
        DocumentStore(tmp_path / "store", "some/other-model")


def test_relative_score_fusion_is_a_setting(make_store, files):
    store = make_store(hybrid_fusion="relative")
    for path in files.values():
        store.add_file(path)
    hits = store.search("why do some mountains explode", k=3)
    assert sources(hits)[0] == "volcano.txt"
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    with pytest.raises(StoreConfigError, match="unknown fusion 'max'"):
        make_store(hybrid_fusion="max")


def test_an_unknown_index_kind_is_refused_before_anything_is_written(make_store, tmp_path):
    with pytest.raises(StoreConfigError, match="unknown index kind 'annoy'"):
        make_store(index_kind="annoy")
    assert not (tmp_path / "store").exists()


def test_add_files_commits_in_batches_and_dedupes_a_repeated_file(make_store, files):
    store = make_store()
    paths = [files["volcano.txt"], files["bread.md"], files["volcano.txt"], files["trains.txt"]]
    results = store.add_files(paths, commit_every=1)  # each file committed on its own
    assert [r.status for r in results] == ["added", "added", "unchanged", "added"]
    assert results[0].id == results[2].id
    batched = make_store(store.data_dir.parent / "batched").add_files(paths)  # one commit
    assert [r.status for r in batched] == ["added", "added", "added", "added"]
    assert batched[0].id == batched[2].id
    assert sorted(d.source.rsplit("/", 1)[-1] for d in store.list()) == [
        "bread.md", "trains.txt", "volcano.txt"]  # fmt: skip
    assert store._index.ntotal == sum(d.n_chunks for d in store.list())
