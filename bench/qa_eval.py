"""Answers and citations through the service: `POST /v1/qa` on the held-out questions.

Starts its own stack (`longctx up`: API + one worker holding the offline default model) on its
own Redis DB and port, unless `--url` names a running one. The corpora (bench/corpora.py) are put
into the stack's store once, one collection per corpus, with the store's default settings (the
bench's embedding cache is used when given, so a sweep's vectors are not computed twice). Then
each question is asked in its corpus's collection (`mode rag`, top_k 4) and scored:
- answer accuracy: every expected answer word is in the answer (case-insensitive);
- citation accuracy: a cited span (the quote's `[start, end)`) overlaps the answer passage;
  "source" accuracy: the cited source chunk overlaps it (before narrowing to a sentence);
- no-answer questions (nothing in the corpus answers them): the answer says so
  (`extra.no_answer`); bench/data/questions/unanswerable.tsv for the tuning half (the set the
  no-answer rule was chosen on), unanswerable_heldout.tsv (written before any run) for held-out;
- seconds per question (wall clock of the job, one at a time, on whatever the cores carry).

    python -m bench.qa_eval [--split heldout] [--limit N] [--url http://127.0.0.1:8110]
        [--db 10] [--port 8110] [--cache /tmp/rbench/cache-minilm] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.corpora import CORPORA, DATA, load_questions
from bench.retrieval_eval import answer_spans, cached_embedder_class, overlaps

TOP_K = 4  # sources per question (the API's default is 6; fewer keeps prefill short on CPU)


def start_stack(port: int, db: int, data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "LONGCTX_REDIS_URL": f"redis://127.0.0.1:6379/{db}",
           "LONGCTX_DATA_DIR": str(data_dir), "LONGCTX_KEY_PREFIX": f"qa-eval-{db}"}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "longctx.cli", "up", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, start_new_session=True)  # fmt: skip


def wait_ready(client, process, timeout=600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit("the stack exited; see its messages above")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("the stack is not ready")


def ingest(data_dir: Path, corpora: dict[str, dict[str, str]], cache: Path | None, db: int) -> None:
    """Into the stack's store directly (the bench's cached vectors), then announced to the API
    as the ingest worker would (a document record per document)."""
    import hashlib

    import redis

    from retrieval import DocumentStore
    from retrieval.embeddings import Embedder
    from workers.contracts import DocumentRecord

    embedder = cached_embedder_class()(Embedder(None), cache)
    client = redis.Redis.from_url(f"redis://127.0.0.1:6379/{db}")
    with DocumentStore(data_dir / "store", embedder, progress=False) as store:
        for corpus, texts in corpora.items():
            for name, text in texts.items():
                info = store.add_text(text, name, collection=corpus)
                record = DocumentRecord(id=info.id, source=name, filename=name, collection=corpus,
                                        sha256=hashlib.sha256(text.encode()).hexdigest(),
                                        size=len(text.encode()), chunks=info.n_chunks,
                                        created_at=time.time())  # fmt: skip
                client.hset(f"qa-eval-{db}:documents", info.id, record.model_dump_json())


def ask(client, question: str, collection: str, max_new_tokens: int) -> tuple[dict, float]:
    t0 = time.perf_counter()
    reply = client.post("/v1/qa", json={"question": question, "collection": collection,
                                         "mode": "rag", "top_k": TOP_K, "max_new_tokens": max_new_tokens})  # fmt: skip
    if reply.status_code != 202:
        raise SystemExit(f"/v1/qa: {reply.status_code} {reply.text[:300]}")
    job_id = reply.json()["id"]
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job, time.perf_counter() - t0
        time.sleep(0.2)


def no_answer_questions(split: str) -> list[tuple[str, str]]:
    """(corpus, question) pairs nothing answers: the tuning set the no-answer rule was chosen on,
    or the held-out set written before any run."""
    name = "unanswerable.tsv" if split == "tune" else "unanswerable_heldout.tsv"
    return [tuple(line.split("\t")) for line in (DATA / name).read_text().splitlines() if line.strip()]


def score(q, result: dict, spans: dict) -> dict:
    answer = result["answer"].lower()
    sources = {s["number"]: s for s in result["sources"]}
    cited = result["citations"]
    return {
        "answer_ok": all(w.lower() in answer for w in q.answer),
        "citation_ok": any(overlaps(c["source"], c["start"], c["end"], spans) for c in cited),
        "source_ok": any(overlaps(sources[c["number"]]["source"], sources[c["number"]]["start"],
                                  sources[c["number"]]["end"], spans) for c in cited),  # fmt: skip
        "retrieved_ok": any(overlaps(s["source"], s["start"], s["end"], spans) for s in sources.values()),
        "attributed": sorted({c["attributed"] for c in cited}),
        "no_answer": result["extra"].get("no_answer", False),
        "no_answer_reason": result["extra"].get("no_answer_reason"),
        "model_answer": result["extra"].get("model_answer"),
        "repetition": result["extra"].get("repetition_stopped", False),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="heldout", choices=["heldout", "tune"])
    parser.add_argument("--corpus", nargs="*", default=list(CORPORA))
    parser.add_argument("--limit", type=int, default=None, help="questions per corpus")
    parser.add_argument("--url", default=None, help="a running stack (else one is started)")
    parser.add_argument("--db", type=int, default=10)
    parser.add_argument("--port", type=int, default=8110)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/longctx-qa-eval"))
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache folder")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--unanswerable", type=int, default=3, help="no-answer questions per corpus")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import httpx

    corpora = {name: CORPORA[name]() for name in args.corpus}
    process = None
    if args.url is None:  # the model loads while the first corpus is put into the store
        (args.data_dir / "store").mkdir(parents=True, exist_ok=True)
        process = start_stack(args.port, args.db, args.data_dir)
    url = args.url or f"http://127.0.0.1:{args.port}"
    rows, unanswerable = [], []
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            for corpus, texts in corpora.items():
                if args.url is None:
                    ingest(args.data_dir, {corpus: texts}, args.cache, args.db)
                wait_ready(client, process)
                questions = [q for q in load_questions(corpus, texts)
                             if q.span is not None and q.split == args.split][: args.limit]  # fmt: skip
                for q in questions:
                    job, seconds = ask(client, q.question, corpus, args.max_new_tokens)
                    if job["status"] != "succeeded":
                        rows.append({"id": q.id, "corpus": corpus, "error": job.get("error"), "seconds": seconds})
                        continue
                    result = job["result"]
                    rows.append({"id": q.id, "corpus": corpus, "seconds": seconds,
                                 "answer": result["answer"], **score(q, result, answer_spans(q, texts))})  # fmt: skip
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            asked: dict[str, int] = {}
            for corpus, question in no_answer_questions(args.split):
                asked[corpus] = asked.get(corpus, 0) + 1
                if corpus in corpora and asked[corpus] <= args.unanswerable:
                    job, seconds = ask(client, question, corpus, args.max_new_tokens)
                    result = job.get("result") or {"answer": "", "extra": {}}
                    unanswerable.append({"corpus": corpus, "question": question, "seconds": seconds,
                                         "answer": result["answer"],
                                         "no_answer": result["extra"].get("no_answer", False),
                                         "no_answer_reason": result["extra"].get("no_answer_reason"),
                                         "model_answer": result["extra"].get("model_answer")})  # fmt: skip
                    print(json.dumps(unanswerable[-1]), file=sys.stderr, flush=True)
    finally:
        if process is not None:  # `up` and the worker it started: the whole process group
            import signal

            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    summary = summarize(rows, unanswerable)
    print(json.dumps(summary, indent=1) if args.json else report(summary, args.split))
    return 0


def summarize(rows: list[dict], unanswerable: list[dict]) -> dict:
    out = {}
    for corpus in dict.fromkeys(r["corpus"] for r in rows):
        group = [r for r in rows if r["corpus"] == corpus]
        ok = [r for r in group if "error" not in r]
        n = len(group) or 1
        out[corpus] = {"n": len(group), "errors": len(group) - len(ok),
                       **{k: sum(r[k] for r in ok) / n for k in
                          ("answer_ok", "citation_ok", "source_ok", "retrieved_ok", "no_answer", "repetition")},
                       "overlap_attributed": sum("overlap" in r["attributed"] for r in ok) / n,
                       "seconds_per_question": sum(r["seconds"] for r in group) / n}  # fmt: skip
    out["unanswerable"] = {"n": len(unanswerable),
                           "said_no_answer": sum(u["no_answer"] for u in unanswerable) / max(1, len(unanswerable))}  # fmt: skip
    return out


def report(summary: dict, split: str) -> str:
    lines = [f"QA through POST /v1/qa, {split} questions, mode rag, top_k {TOP_K}",
             "| corpus | n | answer accuracy | citation accuracy (quote) | cited source holds passage "
             "| passage retrieved | said no answer | repetition stopped | cited by overlap | s/question |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for corpus, s in summary.items():
        if corpus == "unanswerable":
            continue
        lines.append(f"| {corpus} | {s['n']} | {s['answer_ok']:.3f} | {s['citation_ok']:.3f} | "
                     f"{s['source_ok']:.3f} | {s['retrieved_ok']:.3f} | {s['no_answer']:.3f} | "
                     f"{s['repetition']:.3f} | {s['overlap_attributed']:.3f} | {s['seconds_per_question']:.1f} |")  # fmt: skip
    u = summary["unanswerable"]
    lines.append(f"unanswerable questions: {u['n']}, answered 'the sources do not say': {u['said_no_answer']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
