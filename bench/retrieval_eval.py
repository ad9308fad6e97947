"""Retrieval quality on questions nobody tuned for: recall@5 and MRR@5, per corpus and split.

Corpora (bench/corpora.py), built at run time from what the machine has: the pydoc rendering of
34 standard-library modules, /usr/share/common-licenses, 18 man pages. Questions:
bench/data/questions/<corpus>.tsv, paraphrased by hand, each with the exact passage that answers
it; split once (seeded hash of the question text) into `tune` and `heldout` before any tuning.
A retrieved chunk is a hit when its character span overlaps an occurrence of the answer passage
(in any document of the corpus holding that exact passage: the license texts share paragraphs).

Every run measures, on the same questions:
- the anchor (bench/anchor.py): 1,000/200-character windows, bm25s, MiniLM, RRF k=60;
- the product: `DocumentStore` (its chunker, headings, BM25 with stemming and stop words,
  embedder, fusion) with the settings given, hybrid search, k=5; plus its dense and lexical lists.
`--sweep` scores settings on the TUNING half only (chunk sizes, headings on/off, fusion and
weights) and prints no held-out number for them; a default is then set from that table and the
plain run reports it on the held-out half.

    python -m bench.retrieval_eval [--embedder all-mpnet-base-v2] [--chunk-tokens 200]
        [--overlap-tokens 64] [--no-headings] [--sections] [--fusion relative --weights 0.5 0.5]
        [--corpus pydoc ...] [--sweep] [--against chunk_tokens=320,overlap_tokens=64,sections=True] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.corpora import CORPORA, find_spans, load_questions

K = 5
SWEEP_WEIGHTS = {"rrf": [(1.0, 1.0), (1.0, 0.5), (1.0, 2.0)],
                 "relative": [(0.75, 0.25), (0.5, 0.5), (0.6, 0.4), (0.9, 0.1)]}  # fmt: skip


SPANS = "all"  # "first": only the first place a passage occurs in a document (the rule until 2026-12-03)


def answer_spans(q, texts: dict[str, str]) -> dict[str, list[tuple[int, int]]]:
    """Every document of the corpus holding the exact answer passage, with every span of it there
    (pydoc repeats inherited docstrings: the same passage under another class holds the answer too)."""
    spans = {}
    for name, text in texts.items():
        found = find_spans(text, q.quote)
        if found:
            spans[name] = found[:1] if SPANS == "first" else found
    if q.span is not None and q.document not in spans:
        spans[q.document] = [q.span]
    return spans


def overlaps(document: str, start: int, end: int, spans: dict) -> bool:
    """Does [start, end) of `document` overlap one of the answer spans in it?"""
    return any(start < stop and begin < end for begin, stop in spans.get(document, ()))


def first_hit(results, spans) -> int | None:
    """Rank (from 1) of the first result (document, start, end) overlapping an answer span."""
    for rank, (document, start, end) in enumerate(results[:K], start=1):
        if overlaps(document, start, end, spans):
            return rank
    return None


def scores(ranks: list[int | None]) -> dict:
    n = len(ranks) or 1
    return {"n": len(ranks), "recall@5": sum(r is not None for r in ranks) / n,
            "mrr@5": sum(1 / r for r in ranks if r) / n}  # fmt: skip


def by_split(questions, ranks) -> dict:
    return {s: scores([r for q, r in zip(questions, ranks, strict=True) if q.split == s])
            for s in ("tune", "heldout")}  # fmt: skip


def cached_embedder_class():
    from retrieval.embeddings import Embedder

    return type("CachedEmbedder", (CachedEmbedder, Embedder), {})


class CachedEmbedder:
    """The product's embedder with a disk cache keyed by text (a sweep embeds each chunk once);
    counts what it really embedded and how long that took, for chunks/s."""

    def __init__(self, embedder, folder: Path | None):
        self.inner, self.folder = embedder, folder
        self.fresh, self.fresh_s = 0, 0.0
        if folder:
            folder.mkdir(parents=True, exist_ok=True)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed(self, texts, progress=None):
        import hashlib

        import numpy as np

        keys = [hashlib.sha256(f"{self.inner.name}\0{t}".encode()).hexdigest() for t in texts]
        paths = [self.folder / f"{k}.npy" for k in keys] if self.folder else [None] * len(texts)
        missing = [i for i, p in enumerate(paths) if p is None or not p.exists()]
        vectors = np.zeros((len(texts), self.inner.dimension), dtype=np.float32)
        if missing:
            t0 = time.perf_counter()
            new = self.inner.embed([texts[i] for i in missing], progress=progress)
            self.fresh_s += time.perf_counter() - t0
            self.fresh += len(missing)
            for i, vector in zip(missing, new, strict=True):
                vectors[i] = vector
                if paths[i] is not None:
                    np.save(paths[i], vector, allow_pickle=False)
        for i, p in enumerate(paths):
            if i not in set(missing):
                vectors[i] = np.load(p, allow_pickle=False)
        return vectors

    def embed_query(self, query):
        return self.inner.embed_query(query)


def build_store(folder: Path, texts: dict[str, str], embedder, args) -> tuple:
    from retrieval import DocumentStore

    store = DocumentStore(folder, embedder, chunk_tokens=args.chunk_tokens,
                          overlap_tokens=args.overlap_tokens, headings=args.headings, sections=args.sections,
                          hybrid_fusion=args.fusion, hybrid_weights=tuple(args.weights) if args.weights else None,
                          progress=False)  # fmt: skip
    t0 = time.perf_counter()
    infos = [store.add_text(text, name) for name, text in texts.items()]
    ingest_s = time.perf_counter() - t0
    names = {i.id: i.source for i in infos}
    return store, names, sum(i.n_chunks for i in infos), ingest_s


def store_lists(store, names, questions) -> list[tuple[list, list]]:
    """Per question: the dense and lexical top-50 lists as the store's hybrid search makes them."""
    lists = []
    for q in questions:
        dense = store.search(q.question, k=50, mode="dense")
        lexical = store.search(q.question, k=50, mode="lexical")
        lists.append((dense, lexical))
    return lists


def fused_ranks(lists, questions, spans, fusion: str, weights) -> list[int | None]:
    from retrieval.fusion import FUSIONS

    ranks = []
    for (dense, lexical), q in zip(lists, questions, strict=True):
        by_id = {h.chunk_id: h for h in dense + lexical}
        ranked = FUSIONS[fusion]([[(h.chunk_id, h.score) for h in dense],
                                  [(h.chunk_id, h.score) for h in lexical]], weights)  # fmt: skip
        hits = [by_id[i] for i, _ in ranked[:K]]
        ranks.append(first_hit([(h.source, h.start, h.end) for h in hits], spans[q.id]))
    return ranks


def hit_ranks(hits_per_q, questions, spans) -> list[int | None]:
    return [first_hit([(h.source, h.start, h.end) for h in hits[:K]], spans[q.id])
            for hits, q in zip(hits_per_q, questions, strict=True)]  # fmt: skip


def evaluate_corpus(corpus: str, args, embedders: dict, tmp: Path) -> dict:
    from bench.anchor import NaivePipeline

    texts = CORPORA[corpus]()
    questions = [q for q in load_questions(corpus, texts) if q.span is not None]
    skipped = len(load_questions(corpus, texts)) - len(questions)
    spans = {q.id: answer_spans(q, texts) for q in questions}
    t0 = time.perf_counter()
    anchor = NaivePipeline(texts, embedders["anchor"])
    anchor_s = time.perf_counter() - t0
    anchor_ranks = [first_hit([(p.document, p.start, p.end) for p in anchor.search(q.question)],
                              spans[q.id]) for q in questions]  # fmt: skip
    result = {"documents": len(texts), "characters": sum(map(len, texts.values())),
              "questions": len(questions), "skipped": skipped,
              "anchor": {**by_split(questions, anchor_ranks), "chunks": len(anchor.pieces),
                         "ingest_chunks_per_s": len(anchor.pieces) / anchor_s}}  # fmt: skip
    if args.sweep:
        result["sweep"] = sweep(corpus, texts, questions, spans, args, embedders, tmp)
        return result
    store, names, n_chunks, ingest_s = build_store(tmp / corpus, texts, embedders["product"], args)
    lists = store_lists(store, names, questions)
    t0 = time.perf_counter()
    hybrid = [store.search(q.question, k=K, mode="hybrid") for q in questions]
    query_ms = 1000 * (time.perf_counter() - t0) / max(1, len(questions))
    result["product"] = {
        "hybrid": by_split(questions, hit_ranks(hybrid, questions, spans)),
        "dense": by_split(questions, hit_ranks([d for d, _ in lists], questions, spans)),
        "lexical": by_split(questions, hit_ranks([lx for _, lx in lists], questions, spans)),
        "chunks": n_chunks, "ingest_chunks_per_s": n_chunks / ingest_s, "query_ms": query_ms,
        "embedded_fresh": embedders["product"].fresh,
    }  # fmt: skip
    result["tune_sweep"] = tune_sweep(store, lists, questions, spans)
    store.close()
    ours = hit_ranks(hybrid, questions, spans)
    result["paired"] = {"anchor": paired(questions, ours, anchor_ranks)}
    if args.against:
        other = argparse.Namespace(**{**vars(args), **args.against})
        store, _, _, _ = build_store(tmp / f"{corpus}-against", texts, embedders["product"], other)
        theirs = hit_ranks([store.search(q.question, k=K, mode="hybrid") for q in questions], questions, spans)
        store.close()
        result["paired"]["against"] = paired(questions, ours, theirs)
    print(f"{corpus}: done", file=sys.stderr, flush=True)
    return result


def paired(questions, ours, theirs) -> dict:
    """Per split, the mean per-question difference ours - theirs in hit@5 and reciprocal rank,
    with its standard error (how far a difference of this many questions can move by chance)."""
    import math

    result = {}
    for split in ("tune", "heldout"):
        pairs = [(a, b) for q, a, b in zip(questions, ours, theirs, strict=True) if q.split == split]
        for name, value in (("recall@5", lambda r: float(r is not None)), ("mrr@5", lambda r: 1 / r if r else 0.0)):
            d = [value(a) - value(b) for a, b in pairs]
            mean = sum(d) / max(1, len(d))
            var = sum((x - mean) ** 2 for x in d) / max(1, len(d) - 1)
            result[f"{split} {name}"] = (mean, math.sqrt(var / max(1, len(d))))
    return result


def tune_sweep(store, lists, questions, spans) -> list[dict]:
    """On the TUNING half, from the lists the run already has: fusion and weights, and BM25 over
    the chunk texts alone (no headings) against BM25 over heading + text."""
    import numpy as np

    from retrieval.lexical import LexicalIndex

    tune = [(pair, q) for pair, q in zip(lists, questions, strict=True) if q.split == "tune"]
    tune_lists, tune_q = [p for p, _ in tune], [q for _, q in tune]
    rows = []
    for fusion, weight_list in SWEEP_WEIGHTS.items():
        for weights in weight_list:
            rows.append({"setting": f"hybrid {fusion} {weights[0]}/{weights[1]}",
                         **scores(fused_ranks(tune_lists, tune_q, spans, fusion, weights))})  # fmt: skip
    chunk_rows = store._db.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
    plain = LexicalIndex.build(np.asarray([r[0] for r in chunk_rows]), [r[1] for r in chunk_rows])
    plain_hits = []
    for q in tune_q:
        found, ids = plain.search(q.question, 50)
        plain_hits.append(store._hits(list(zip(ids.tolist(), found.tolist(), strict=True))))
    rows.append({"setting": "lexical, text only (no headings)", **scores(hit_ranks(plain_hits, tune_q, spans))})
    rows.append({"setting": "lexical, heading + text", **scores(hit_ranks([lx for _, lx in tune_lists], tune_q, spans))})
    for fusion, weights in (("rrf", (1.0, 1.0)), ("relative", (0.75, 0.25))):
        mixed = []
        for (dense, _), lexical in zip(tune_lists, plain_hits, strict=True):
            by_id = {h.chunk_id: h for h in dense + lexical}
            from retrieval.fusion import FUSIONS

            ranked = FUSIONS[fusion]([[(h.chunk_id, h.score) for h in dense],
                                      [(h.chunk_id, h.score) for h in lexical]], weights)  # fmt: skip
            mixed.append([by_id[i] for i, _ in ranked[:K]])
        rows.append({"setting": f"hybrid {fusion} {weights[0]}/{weights[1]}, lexical without headings",
                     **scores(hit_ranks(mixed, tune_q, spans))})  # fmt: skip
    return rows


def sweep(corpus, texts, questions, spans, args, embedders, tmp) -> list[dict]:
    """Tuning half only: chunking x headings x fusion/weights."""
    tune = [q for q in questions if q.split == "tune"]
    rows = []
    for chunk_tokens, overlap in args.sweep_chunks:
        for headings in (True, False):
            settings = argparse.Namespace(**{**vars(args), "chunk_tokens": chunk_tokens,
                                             "overlap_tokens": overlap, "headings": headings})  # fmt: skip
            folder = tmp / f"{corpus}-{chunk_tokens}-{overlap}-{headings}"
            store, names, n_chunks, _ = build_store(folder, texts, embedders["product"], settings)
            lists = store_lists(store, names, tune)
            store.close()
            for fusion, weight_list in SWEEP_WEIGHTS.items():
                for weights in weight_list:
                    ranks = fused_ranks(lists, tune, spans, fusion, weights)
                    rows.append({"chunk_tokens": chunk_tokens, "overlap": overlap,
                                 "headings": headings, "fusion": fusion, "weights": weights,
                                 "chunks": n_chunks, **scores(ranks)})  # fmt: skip
            for mode, pick in (("dense", 0), ("lexical", 1)):
                ranks = hit_ranks([pair[pick] for pair in lists], tune, spans)
                rows.append({"chunk_tokens": chunk_tokens, "overlap": overlap, "headings": headings,
                             "fusion": mode, "weights": None, "chunks": n_chunks, **scores(ranks)})  # fmt: skip
    return rows


def print_report(summary: dict) -> None:
    if summary["embed_chunks_per_s"]:
        print(f"product embedder: {summary['embed_chunks_per_s']:.1f} chunks/s embedded (fresh)")
    print(f"embedder: {summary['embedder']}; chunk_tokens {summary['chunk_tokens']}, overlap "
          f"{summary['overlap_tokens']}, headings {summary['headings']}, sections {summary['sections']}, "
          f"fusion {summary['fusion']} "
          f"{summary['weights'] or 'default weights'}; k={K}")  # fmt: skip
    for corpus, r in summary["corpora"].items():
        print(f"\n## {corpus}: {r['documents']} documents, {r['characters']:,} characters, "
              f"{r['questions']} questions ({r['skipped']} skipped: passage not in this machine's text)")  # fmt: skip
        if "sweep" in r:
            print("| chunk/overlap | headings | fusion | weights | chunks | tune recall@5 | tune MRR@5 |")
            print("|---|---|---|---|---|---|---|")
            a = r["anchor"]["tune"]
            print(f"| anchor 1000/200 chars | - | rrf | 1/1 | {r['anchor']['chunks']} | "
                  f"{a['recall@5']:.3f} | {a['mrr@5']:.3f} |")  # fmt: skip
            for row in r["sweep"]:
                print(f"| {row['chunk_tokens']}/{row['overlap']} | {row['headings']} | {row['fusion']} | "
                      f"{row['weights']} | {row['chunks']} | {row['recall@5']:.3f} | {row['mrr@5']:.3f} |")  # fmt: skip
            continue
        print("| pipeline | tune n | tune recall@5 | tune MRR@5 | held-out n | held-out recall@5 "
              "| held-out MRR@5 | chunks | ingest chunks/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        rows = [("anchor (naive)", r["anchor"], r["anchor"])]
        rows += [(f"product {m}", r["product"][m], r["product"]) for m in ("hybrid", "dense", "lexical")]
        for label, s, info in rows:
            t, h = s["tune"], s["heldout"]
            print(f"| {label} | {t['n']} | {t['recall@5']:.3f} | {t['mrr@5']:.3f} | {h['n']} | "
                  f"{h['recall@5']:.3f} | {h['mrr@5']:.3f} | {info['chunks']} | "
                  f"{info['ingest_chunks_per_s']:.1f} |")  # fmt: skip
        print("\ntuning half only (settings are chosen here):")
        print("| setting | tune n | tune recall@5 | tune MRR@5 |")
        print("|---|---|---|---|")
        a = r["anchor"]["tune"]
        print(f"| anchor | {a['n']} | {a['recall@5']:.3f} | {a['mrr@5']:.3f} |")
        for row in r["tune_sweep"]:
            print(f"| {row['setting']} | {row['n']} | {row['recall@5']:.3f} | {row['mrr@5']:.3f} |")
        for against, diffs in r["paired"].items():
            label = "anchor" if against == "anchor" else f"--against {summary['against']}"
            print(f"hybrid minus {label}, per question, mean ± standard error (points): "
                  + "; ".join(f"{k} {100 * m:+.1f} ± {100 * se:.1f}" for k, (m, se) in diffs.items()))  # fmt: skip
        h, a = r["product"]["hybrid"]["heldout"], r["anchor"]["heldout"]
        print(f"held-out hybrid minus anchor: recall@5 {100 * (h['recall@5'] - a['recall@5']):+.1f} "
              f"points, MRR@5 {100 * (h['mrr@5'] - a['mrr@5']):+.1f} points; "
              f"hybrid query {r['product']['query_ms']:.0f} ms")  # fmt: skip


def embed_speed(n: int) -> int:
    """Ingestion cost of the two shipped embedders on the same N chunks, one after the other."""
    from retrieval.chunking import chunk_text
    from retrieval.embeddings import Embedder

    texts = CORPORA["licenses"]()
    for name in (None, "all-mpnet-base-v2"):
        embedder = Embedder(name)
        chunks = [c.text for t in texts.values() for c in chunk_text(t, embedder.count_tokens, 200, 32)][:n]
        embedder.embed(chunks[:4])  # warm up
        t0 = time.perf_counter()
        embedder.embed(chunks)
        seconds = time.perf_counter() - t0
        print(f"{embedder.name}: {len(chunks)} chunks of <= 200 tokens in {seconds:.1f} s, "
              f"{len(chunks) / seconds:.2f} chunks/s (dimension {embedder.dimension})")
    return 0


def parse_settings(text: str | None) -> dict:
    """`chunk_tokens=200,sections=False` -> {"chunk_tokens": 200, "sections": False}."""
    settings = {}
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        known = {"True": True, "False": False}
        settings[key.strip()] = known[value] if value in known else int(value)
    return settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", default=None, help="default: the store's (all-MiniLM-L6-v2)")
    parser.add_argument("--chunk-tokens", type=int, default=None)
    parser.add_argument("--overlap-tokens", type=int, default=None)
    parser.add_argument("--no-headings", dest="headings", action="store_false")
    parser.add_argument("--sections", action=argparse.BooleanOptionalAction, default=False,
                        help="cut chunks first where the layout's sections begin (an option: it did "
                             "not hold on pydoc's held-out half, docs/retrieval.md)")
    parser.add_argument("--fusion", default=None, choices=["rrf", "relative"])
    parser.add_argument("--weights", type=float, nargs=2, default=None)
    parser.add_argument("--corpus", nargs="*", default=list(CORPORA))
    parser.add_argument("--sweep", action="store_true", help="tuning half only, settings grid")
    parser.add_argument("--sweep-chunks", default="128/24,200/32,256/48",
                        help="chunk/overlap token pairs for --sweep")
    parser.add_argument("--against", default=None, metavar="SETTINGS",
                        help="a second store to compare with, per question: e.g. "
                             "chunk_tokens=320,overlap_tokens=64,sections=True")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--spans", default="all", choices=["all", "first"],
                        help="where a passage counts: every place it occurs, or only the first (the old rule)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="embedding cache folder (sweeps); chunks/s then counts fresh ones")
    parser.add_argument("--embed-speed", type=int, default=0, metavar="N",
                        help="only time MiniLM and all-mpnet-base-v2 on N license chunks, same run")
    args = parser.parse_args()
    global SPANS
    SPANS = args.spans
    if args.embed_speed:
        return embed_speed(args.embed_speed)
    args.sweep_chunks = [tuple(map(int, p.split("/"))) for p in args.sweep_chunks.split(",")]
    against_text, args.against = args.against, parse_settings(args.against)

    import inspect

    from retrieval import DocumentStore
    from retrieval.embeddings import Embedder

    defaults = {n: p.default for n, p in inspect.signature(DocumentStore).parameters.items()}
    for name in ("chunk_tokens", "overlap_tokens", "hybrid_fusion"):
        key = "fusion" if name == "hybrid_fusion" else name
        if getattr(args, key) is None:
            setattr(args, key, defaults[name])
    minilm = Embedder(None)
    product = Embedder(args.embedder) if args.embedder else minilm
    embedders = {"anchor": cached_embedder_class()(minilm, args.cache),
                 "product": cached_embedder_class()(product, args.cache)}  # fmt: skip
    summary = {"embedder": embedders["product"].name, "chunk_tokens": args.chunk_tokens,
               "overlap_tokens": args.overlap_tokens, "headings": args.headings,
               "sections": args.sections, "against": against_text, "fusion": args.fusion, "weights": args.weights, "corpora": {}}  # fmt: skip
    summary["embed_chunks_per_s"] = None
    with tempfile.TemporaryDirectory() as tmp:
        for corpus in args.corpus:
            summary["corpora"][corpus] = evaluate_corpus(corpus, args, embedders, Path(tmp))
    cached = embedders["product"]
    if cached.fresh:
        summary["embed_chunks_per_s"] = cached.fresh / cached.fresh_s
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print_report(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
