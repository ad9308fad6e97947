"""`longctx ingest`, `search`, `documents` and `delete`: the document store from the command line.

The store lives in `<data dir>/store`, the same folder the workers use. The data dir comes from
`--data-dir`, else the environment variable LONGCTX_DATA_DIR, else the user data directory
(platformdirs, e.g. ~/.local/share/longctx).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from longctx.cli import CliError

DATA_DIR_ENV = "LONGCTX_DATA_DIR"
SKIPPED_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv"}


def default_data_dir() -> Path:
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("longctx"))


def register(subparsers) -> None:
    ingest = subparsers.add_parser("ingest", help="add files or folders to the document store")
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files, or folders to walk")
    ingest.add_argument("--collection", default="default")
    ingest.add_argument("--json", action="store_true", help="print one JSON object per file")
    add_store_options(ingest)
    ingest.set_defaults(handler=run_ingest)

    search = subparsers.add_parser("search", help="search the document store")
    search.add_argument("query")
    search.add_argument("--collection", help="only this collection")
    search.add_argument("--document", action="append", dest="documents", metavar="ID",
                        help="only this document id (repeatable)")  # fmt: skip
    search.add_argument("--k", type=int, default=5, help="number of hits (default 5)")
    search.add_argument("--mode", choices=["hybrid", "dense", "lexical"], default="hybrid")
    search.add_argument("--json", action="store_true", help="print the hits as a JSON list")
    add_store_options(search)
    search.set_defaults(handler=run_search)

    documents = subparsers.add_parser("documents", help="list the documents in the store")
    documents.add_argument("--collection", help="only this collection")
    documents.add_argument("--json", action="store_true", help="print a JSON list")
    add_store_options(documents)
    documents.set_defaults(handler=run_documents)

    delete = subparsers.add_parser("delete", help="remove documents from the store")
    delete.add_argument("ids", nargs="+", metavar="DOCUMENT_ID")
    add_store_options(delete)
    delete.set_defaults(handler=run_delete)


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path,
                        help=f"data folder (default: ${DATA_DIR_ENV} or the user data directory)")  # fmt: skip
    parser.add_argument("--embedder", help="sentence-transformers model name or path "
                        "(default: the offline all-MiniLM-L6-v2; fixed when the store is created)")  # fmt: skip
    parser.add_argument("--index", choices=["flat", "hnsw", "ivf"],
                        help="FAISS index kind (default: flat, or what the store uses)")  # fmt: skip


def open_store(args):
    from retrieval import DocumentStore

    data_dir = args.data_dir or default_data_dir()
    return DocumentStore(data_dir / "store", args.embedder, index_kind=args.index)


def expand_paths(paths: list[str]) -> list[str]:
    """Files as given; folders walked (sorted) for the file types the loaders know."""
    from retrieval.loaders import EXTENSIONS

    files: list[str] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            files.append(given)
            continue
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
            for name in sorted(names):
                if Path(name).suffix.lower() in EXTENSIONS and not name.startswith("."):
                    files.append(os.path.join(root, name))
    return files


def run_ingest(args) -> int:
    files = expand_paths(args.paths)
    if not files:
        raise CliError("no files to ingest (folders are walked for .txt, .md, .html, .pdf)")
    with open_store(args) as store:
        results = store.add_files(files, args.collection)
    failed = 0
    for path, result in zip(files, results, strict=True):
        if isinstance(result, Exception):
            failed += 1
            print(f"longctx ingest: error: {result}", file=sys.stderr)
            if args.json:
                print(json.dumps({"path": path, "status": "error", "error": str(result)}))
        elif args.json:
            print(json.dumps({"path": path, "status": result.status, "document": result.id,
                              "chunks": result.n_chunks, "collection": result.collection}))  # fmt: skip
        else:
            print(f"{result.status:9} {result.id}  {path}  ({result.n_chunks} chunks)")
    return 2 if failed else 0


def run_search(args) -> int:
    if args.k < 1:
        raise CliError(f"--k must be at least 1, got {args.k}")
    with open_store(args) as store:
        hits = store.search(args.query, args.k, args.mode, args.collection, args.documents)
    if args.json:
        print(json.dumps([hit_json(h) for h in hits], ensure_ascii=False, indent=2))
        return 0
    if not hits:
        print("no results")
    for rank, hit in enumerate(hits, start=1):
        page = f", page {hit.page}" if hit.page is not None else ""
        print(f"{rank}. {hit.source}{page}  [{hit.start}:{hit.end}]  score {hit.score:.4f}")
        snippet = " ".join(hit.text.split())
        print(f"   {snippet[:300]}{'…' if len(snippet) > 300 else ''}")
    return 0


def run_documents(args) -> int:
    with open_store(args) as store:
        documents = store.list(args.collection)
    if args.json:
        print(
            json.dumps(
                [{k: v for k, v in vars(d).items() if k != "status"} for d in documents], indent=2
            )
        )
        return 0
    for d in documents:
        pages = f", {d.n_pages} pages" if d.n_pages else ""
        print(f"{d.id}  {d.collection}  {d.source}  ({d.kind}, {d.n_chunks} chunks{pages})")
    return 0


def run_delete(args) -> int:
    with open_store(args) as store:
        for document_id in args.ids:
            source = store.get(document_id).source  # unknown id: a one-line error, exit 2
            store.delete(document_id)
            print(f"deleted {document_id}  {source}")
    return 0


def hit_json(hit) -> dict:
    return {
        "document": hit.document,
        "source": hit.source,
        "collection": hit.collection,
        "chunk": hit.chunk,
        "text": hit.text,
        "score": hit.score,
        "start": hit.start,
        "end": hit.end,
        "page": hit.page,
    }
