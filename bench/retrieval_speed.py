"""Retrieval speed: ingest throughput, and query latency on 100,000 vectors per FAISS index kind.

1. Ingest: real text (docstrings of standard-library modules) through `DocumentStore.add_files`
   (extract, chunk, embed with the offline MiniLM, write SQLite + FAISS) -> chunks/s, with the
   embedding step alone timed on the same chunks for comparison; then the latency of one
   `store.search` per mode on that store, and how much of it is embedding the query.
2. Index: N unit vectors (default 100,000 x 384, MiniLM's size) from 1,000 Gaussian clusters,
   and Q queries from the same clusters. Synthetic: no machine here can embed 100k real chunks
   in minutes. Tight clusters flatter IVF and HNSW (as ANN-Benchmarks' clustered sets show): at spread 1.0
   every index had recall 1.000; the default spread 2.0 (a query's 10th neighbour at cosine
   ~0.26) is harder; at 3.0 the data is near uniform and IVF recall falls to ~0.3. Read the
   ratios, not the absolutes. Each query is searched alone (k=10) for p50/p95 latency:
   - numpy brute force (`X @ q`, argpartition): the anchor;
   - exact: our `flat` index (IndexIDMap2 over IndexFlatIP);
   - HNSW32 (efSearch 64) and IVF (nlist ~4*sqrt(N), nprobe 16) as the store builds them,
     with build time and recall@10 against exact.

    python bench/retrieval_speed.py [--vectors 100000] [--queries 200] [--skip-ingest]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent

INGEST_MODULES = (
    "json csv textwrap shutil heapq tempfile zipfile statistics collections contextlib "
    "base64 difflib copy timeit"
).split()


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def bench_ingest() -> None:
    from bench.corpora import module_text
    from retrieval import DocumentStore

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for name in INGEST_MODULES:
            (corpus / f"{name}.txt").write_text(module_text(name), encoding="utf-8")
        store = DocumentStore(Path(tmp) / "store", progress=False)
        store.embedder.embed(["warm up"])  # load the model outside the timing
        t0 = time.perf_counter()
        infos = store.add_files(sorted(corpus.iterdir()), raise_errors=True)
        total = time.perf_counter() - t0
        chunks = [h.text for i in infos for h in store.chunks(i.id)]
        t0 = time.perf_counter()
        store.embedder.embed(chunks, progress=False)
        embed = time.perf_counter() - t0
        n_chars = sum(i.n_chars for i in infos)
        print(f"ingest: {len(infos)} files, {n_chars:,} chars, {len(chunks)} chunks in {total:.1f} s "
              f"= {len(chunks) / total:.1f} chunks/s end to end; embedding alone "
              f"{len(chunks) / embed:.1f} chunks/s ({embed / total:.0%} of the time)")  # fmt: skip
        queries = ["how do I copy a file with its metadata", "median of grouped data",
                   "pretty print json", "compare two lists of lines"]  # fmt: skip
        t_embed = []
        for q in queries * 5:
            t0 = time.perf_counter()
            store.embedder.embed_query(q)
            t_embed.append(time.perf_counter() - t0)
        print(f"query embedding: p50 {percentiles(t_embed)[0]:.1f} ms")
        for mode in ("lexical", "dense", "hybrid"):
            times = []
            for q in queries * 5:
                t0 = time.perf_counter()
                store.search(q, k=5, mode=mode)
                times.append(time.perf_counter() - t0)
            p50, p95 = percentiles(times)
            print(
                f"store.search {mode:8} on {len(chunks)} chunks: p50 {p50:.1f} ms, p95 {p95:.1f} ms"
            )
        store.close()


def clustered(
    n: int, dim: int, n_clusters: int, spread: float, rng: np.random.Generator
) -> np.ndarray:
    centers = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    labels = rng.integers(0, n_clusters, n)
    x = centers[labels] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_search(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = x @ q
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def timed_queries(search, queries: np.ndarray) -> tuple[list[float], list[np.ndarray]]:
    times, results = [], []
    for q in queries:
        t0 = time.perf_counter()
        results.append(search(q))
        times.append(time.perf_counter() - t0)
    return times, results


def recall(results: list[np.ndarray], truth: list[np.ndarray], k: int) -> float:
    return float(
        np.mean([len(set(r[:k]) & set(t[:k])) / k for r, t in zip(results, truth, strict=True)])
    )


def bench_indexes(n: int, dim: int, n_queries: int, spread: float, k: int = 10) -> None:
    from retrieval import vector_index

    rng = np.random.default_rng(0)
    x = clustered(n + n_queries, dim, 1000, spread, rng)
    x, queries = x[:n], x[n:]
    ids = np.arange(n, dtype=np.int64)
    print(f"\nindex: {n:,} x {dim} float32 unit vectors (synthetic, 1,000 clusters, spread "
          f"{spread}), {n_queries} single queries, k={k}")  # fmt: skip
    rows = []
    t_np, truth = timed_queries(lambda q: numpy_search(x, q, k), queries)
    rows.append(("numpy brute force", 0.0, t_np, 1.0))
    for kind in ("flat", "hnsw", "ivf"):
        t0 = time.perf_counter()
        index = vector_index.build_index(kind, dim, ids, x)
        build = time.perf_counter() - t0

        def search(q, index=index):
            return vector_index.search(index, q[None, :], k)[1][0]

        search(queries[0])
        times, found = timed_queries(search, queries)
        label = {"flat": "exact (IDMap2,Flat)", "hnsw": "HNSW32 efSearch=64",
                 "ivf": f"IVF{vector_index.ivf_nlist(n)} nprobe={vector_index.IVF_NPROBE}"}[kind]  # fmt: skip
        rows.append((label, build, times, recall(found, truth, k)))
    anchor = percentiles(t_np)[0]
    print("| search | build s | p50 ms | p95 ms | p50 vs numpy | recall@10 vs exact |")
    print("|---|---|---|---|---|---|")
    for label, build, times, rec in rows:
        p50, p95 = percentiles(times)
        print(f"| {label} | {build:.1f} | {p50:.3f} | {p95:.3f} | {anchor / p50:.1f}x faster "
              f"| {rec:.3f} |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--spread", type=float, default=2.0,
                        help="noise around the cluster centres (larger: less clustered, harder)")  # fmt: skip
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    import faiss

    print(
        f"faiss {faiss.__version__}, numpy {np.__version__}, {faiss.omp_get_max_threads()} threads"
    )
    if not args.skip_ingest:
        bench_ingest()
    bench_indexes(args.vectors, args.dim, args.queries, args.spread)
    return 0


if __name__ == "__main__":
    sys.exit(main())
