"""`longctx ingest` and `longctx search` as separate processes, the way a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from longctx.cli import main
from retrieval import DocumentStore
from tests.retrieval.corpus import BREAD, TRAINS, VOLCANO
from tests.retrieval.pdfs import pdf_bytes


def longctx(*args, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "longctx.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip


def test_ingest_then_search_in_new_processes_gives_the_same_hits(tmp_path, embedder, capsys):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "volcano.txt").write_text(VOLCANO)
    (docs / "sub" / "bread.md").write_text(BREAD)
    (docs / "trains.pdf").write_bytes(pdf_bytes([TRAINS[:90], TRAINS[90:]]))
    (docs / "scan.pdf").write_bytes(pdf_bytes([None]))
    data = tmp_path / "data"

    ingest = longctx("ingest", str(docs), "--collection", "kb", "--data-dir", str(data))
    assert ingest.returncode == 2, ingest.stderr  # the scan is reported, the rest ingested
    assert "scan.pdf: the PDF has no text layer" in ingest.stderr
    assert ingest.stdout.count("added") == 3, ingest.stdout

    query = ("when does the sleeper leave", "--collection", "kb", "--k", "3", "--json")
    search = longctx("search", *query, env={"LONGCTX_DATA_DIR": str(data)})
    assert search.returncode == 0, search.stderr
    hits = json.loads(search.stdout)
    top = hits[0]
    assert {"document", "source", "text", "score", "start", "end", "page"} <= set(top)
    assert top["source"] == str(docs / "trains.pdf") and top["page"] in (1, 2)

    with DocumentStore(data / "store", embedder) as store:  # and once more, in this process
        again = store.search("when does the sleeper leave", k=3, collection="kb")
    assert [(h.document, h.start, h.end) for h in again] == [
        (h["document"], h["start"], h["end"]) for h in hits
    ]
    assert [h.score for h in again] == pytest.approx([h["score"] for h in hits], rel=1e-5)

    code = main(
        ["ingest", str(docs / "volcano.txt"), "--collection", "kb", "--data-dir", str(data)]
    )
    assert code == 0 and capsys.readouterr().out.startswith("unchanged")


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(["ingest", str(empty), str(tmp_path / "missing.txt"), "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        f"longctx ingest: error: {empty}: the file is empty",
        f"longctx ingest: error: {tmp_path / 'missing.txt'}: does not exist",
    ]
    assert main(["search", "x", "--k", "0", "--data-dir", str(tmp_path)]) == 2
    assert "--k must be at least 1" in capsys.readouterr().err


def test_list_and_delete_documents(make_store, tmp_path, capsys):
    store = make_store(tmp_path / "data" / "store")
    keep = store.add_text(BREAD, "bread.md", collection="food")
    gone = store.add_text(VOLCANO, "volcano.txt", collection="geo")
    store.close()
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["documents", "--json", *data]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {(d["id"], d["source"], d["collection"]) for d in listed} == {
        (keep.id, "bread.md", "food"), (gone.id, "volcano.txt", "geo")}  # fmt: skip
    assert main(["delete", gone.id, *data]) == 0
    assert capsys.readouterr().out.strip() == f"deleted {gone.id}  volcano.txt"
    assert main(["documents", *data]) == 0
    assert capsys.readouterr().out.startswith(f"{keep.id}  food  bread.md  (text, 1 chunks)")
    assert main(["delete", gone.id, *data]) == 2
    assert f"no document with id '{gone.id}'" in capsys.readouterr().err
