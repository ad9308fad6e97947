"""Retrieval quality: recall@5 and MRR@10 for lexical, dense and hybrid search on real text.

Corpus: the docstrings (module, public classes and functions) of 40 standard-library modules
of the running Python, one document per module, written to .txt files and ingested through the
DocumentStore (so chunking and embedding are the product's own). None of it was written for this
test. Questions: bench/data/retrieval_questions.json: 44 "paraphrase" questions phrased the way a
user asks (avoiding the passage's words), and, reported apart, 12 "keyword" questions where the
user pastes an identifier or exception name; each with the passage that answers it. A hit is
relevant when its character span covers at least half of an occurrence of that passage in the
module's document. A question whose passage is missing from this Python's docstrings is reported
and skipped. Hybrid is measured with the default fusion (relative score fusion at its published
default weights, 0.75 dense / 0.25 lexical) and with reciprocal rank fusion; a sweep of RRF weights is scored on the odd and even question ids
separately, so a weight picked on one half can be checked on the other.

    python bench/retrieval_eval.py [--chunk-tokens 200] [--json]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = Path(__file__).parent / "data" / "retrieval_questions.json"
MODULES = (
    "base64 calendar collections configparser contextlib copy csv dataclasses difflib enum "
    "fnmatch fractions functools glob gzip hashlib heapq ipaddress json logging pathlib pickle "
    "pprint queue random sched secrets shlex shutil sqlite3 statistics string subprocess "
    "tarfile tempfile textwrap timeit uuid weakref zipfile"
).split()


def module_text(name: str) -> str:
    """The module docstring, then each public class and function with its docstring."""
    module = importlib.import_module(name)
    parts = [inspect.getdoc(module) or ""]
    for attr, obj in vars(module).items():
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                parts.append(f"{attr}\n{doc}")
    return "\n\n".join(p for p in parts if p)


def passage_spans(text: str, passage: str) -> list[tuple[int, int]]:
    pattern = r"\s+".join(re.escape(word) for word in passage.split())
    return [m.span() for m in re.finditer(pattern, text)]


def is_relevant(hit, spans: list[tuple[int, int]]) -> bool:
    for start, end in spans:
        covered = min(hit.end, end) - max(hit.start, start)
        if covered >= (end - start) / 2:
            return True
    return False


def first_relevant_rank(hits, q, documents) -> int | None:
    for rank, hit in enumerate(hits, start=1):
        if hit.document == documents[q["module"]] and is_relevant(hit, q["spans"]):
            return rank
    return None


def fusion_sweep(store, questions, documents, lexical_weights=(0.25, 0.5, 0.75, 1.0)) -> dict:
    """Weighted RRF (dense weight 1, lexical weight w) on the same top-50 lists the store fuses,
    scored separately on odd and even question ids (pick on one half, check on the other)."""
    from retrieval.fusion import reciprocal_rank_fusion as rrf

    lists = []
    for q in questions:
        dense = store.search(q["question"], k=50, mode="dense")
        lexical = store.search(q["question"], k=50, mode="lexical")
        lists.append((q, dense, lexical))
    sweep = {}
    for w in lexical_weights:
        halves = {"odd": [0, 0.0, 0], "even": [0, 0.0, 0]}
        for q, dense, lexical in lists:
            by_id = {h.chunk_id: h for h in dense + lexical}
            fused = rrf(
                [[(h.chunk_id, h.score) for h in dense], [(h.chunk_id, h.score) for h in lexical]],
                (1.0, w),
            )
            hits = [by_id[i] for i, _ in fused[:10]]
            rank = first_relevant_rank(hits, q, documents)
            half = halves["odd" if q["id"] % 2 else "even"]
            half[0] += rank is not None and rank <= 5
            half[1] += 1.0 / rank if rank else 0.0
            half[2] += 1
        sweep[w] = {
            name: {"recall@5": h[0] / h[2], "mrr@10": h[1] / h[2]} for name, h in halves.items()
        }
    return sweep


def evaluate(runs: dict, questions, documents, k_recall=5, k_mrr=10) -> dict:
    """Per question kind ("paraphrase", "keyword", "all") and run (label -> (store, mode)):
    recall@5, MRR@10, p50 latency and the ids of the questions missed."""
    ranks: dict[str, dict[int, int | None]] = {label: {} for label in runs}
    latencies: dict[str, list[float]] = {label: [] for label in runs}
    for mode, (store, search_mode) in runs.items():
        for q in questions:
            t0 = time.perf_counter()
            hits = store.search(q["question"], k=k_mrr, mode=search_mode)
            latencies[mode].append(time.perf_counter() - t0)
            ranks[mode][q["id"]] = first_relevant_rank(hits, q, documents)
    results = {}
    for kind in ("paraphrase", "keyword", "all"):
        group = [q["id"] for q in questions if kind in ("all", q.get("kind", "paraphrase"))]
        if not group:
            continue
        results[kind] = {}
        for mode in runs:
            firsts = [ranks[mode][i] for i in group]
            results[kind][mode] = {
                "questions": len(group),
                f"recall@{k_recall}": sum(r is not None and r <= k_recall for r in firsts)
                / len(group),
                f"mrr@{k_mrr}": sum(1.0 / r for r in firsts if r) / len(group),
                "p50_ms": 1000 * sorted(latencies[mode])[len(latencies[mode]) // 2],
                "missed": [
                    i for i, r in zip(group, firsts, strict=True) if r is None or r > k_recall
                ],
            }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk-tokens", type=int, default=200)
    parser.add_argument("--overlap-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    from retrieval import DocumentStore

    spec = json.loads(QUESTIONS.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        texts = {}
        for name in MODULES:
            texts[name] = module_text(name)
            (corpus / f"{name}.txt").write_text(texts[name], encoding="utf-8")
        questions, skipped = [], []
        for q in spec["questions"]:
            spans = passage_spans(texts[q["module"]], q["passage"])
            (questions.append({**q, "spans": spans}) if spans else skipped.append(q["id"]))

        store = DocumentStore(Path(tmp) / "store", chunk_tokens=args.chunk_tokens,
                              overlap_tokens=args.overlap_tokens, progress=False)  # fmt: skip
        t0 = time.perf_counter()
        infos = store.add_files(sorted(corpus.iterdir()), raise_errors=True)
        ingest_s = time.perf_counter() - t0
        documents = {Path(i.source).stem: i.id for i in infos}
        n_chunks = sum(i.n_chunks for i in infos)
        store.search("warm up", k=1, mode="hybrid")
        rrf_store = DocumentStore(Path(tmp) / "store", hybrid_fusion="rrf")
        rrf_store._embedder_obj = store.embedder  # same model, loaded once
        runs = {
            "lexical (BM25)": (store, "lexical"),
            "dense (MiniLM)": (store, "dense"),
            "hybrid, RRF": (rrf_store, "hybrid"),
            "hybrid, relative score 0.75/0.25 (default)": (store, "hybrid"),
        }
        results = evaluate(runs, questions, documents)
        sweep = fusion_sweep(store, questions, documents)
        store.close()
        rrf_store.close()

    summary = {
        "python": sys.version.split()[0],
        "documents": len(infos),
        "characters": sum(len(t) for t in texts.values()),
        "chunks": n_chunks,
        "chunk_tokens": args.chunk_tokens,
        "ingest_s": round(ingest_s, 1),
        "ingest_chunks_per_s": round(n_chunks / ingest_s, 1),
        "questions": len(questions),
        "skipped_questions": skipped,
        "results": results,
        "weighted_rrf_sweep": sweep,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"corpus: {summary['documents']} stdlib module docstrings (Python {summary['python']}), "
          f"{summary['characters']:,} characters, {n_chunks} chunks of <= {args.chunk_tokens} tokens")  # fmt: skip
    print(
        f"ingest: {ingest_s:.1f} s, {n_chunks / ingest_s:.1f} chunks/s (extract+chunk+embed+index)"
    )
    print(f"questions: {len(questions)} (skipped, passage not in this Python: {skipped or 'none'})")
    for kind, by_mode in results.items():
        n = next(iter(by_mode.values()))["questions"]
        print(f"\n{kind} questions ({n}):")
        print("| mode | recall@5 | MRR@10 | p50 query ms | missed (question ids) |")
        print("|---|---|---|---|---|")
        for mode, r in by_mode.items():
            print(f"| {mode} | {r['recall@5']:.3f} | {r['mrr@10']:.3f} | {r['p50_ms']:.1f} | "
                  f"{' '.join(map(str, r['missed'])) or '-'} |")  # fmt: skip
    print()
    print("weighted RRF (dense 1, lexical w), all questions, by half of the set:")
    print("| w | recall@5 odd ids | MRR@10 odd ids | recall@5 even ids | MRR@10 even ids |")
    print("|---|---|---|---|---|")
    for w, halves in sweep.items():
        odd, even = halves["odd"], halves["even"]
        print(f"| {w} | {odd['recall@5']:.3f} | {odd['mrr@10']:.3f} | {even['recall@5']:.3f} | "
              f"{even['mrr@10']:.3f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
