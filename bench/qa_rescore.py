"""Score a finished `bench.qa_eval` run again from the jobs its stack left in Redis (results
live 7 days), with the evaluation's current span rule: e.g. after a change to where a passage
counts (bench/retrieval_eval.py SPANS), without asking the model again.

    python -m bench.qa_rescore [--db 10] [--split heldout] [--spans all|first] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from bench import retrieval_eval
from bench.corpora import CORPORA, load_questions
from bench.qa_eval import no_answer_questions, report, score, summarize


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=int, default=10)
    parser.add_argument("--split", default="heldout", choices=["heldout", "tune"])
    parser.add_argument("--spans", default="all", choices=["all", "first"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    retrieval_eval.SPANS = args.spans

    import redis

    client = redis.Redis.from_url(f"redis://127.0.0.1:6379/{args.db}", decode_responses=True)
    jobs = {}  # (collection, question) -> the last finished job
    for key in client.scan_iter(f"qa-eval-{args.db}:job:job_*"):
        if key.endswith(":events") or client.type(key) != "hash":
            continue
        job = {field: json.loads(value) for field, value in client.hgetall(key).items()}  # JSON fields
        if job.get("kind") == "qa" and job.get("status") in ("succeeded", "failed"):
            jobs[(job["request"].get("collection"), job["request"]["question"])] = job
    rows, unanswerable = [], []
    for corpus, make in CORPORA.items():
        texts = make()
        for q in load_questions(corpus, texts):
            job = jobs.get((corpus, q.question))
            if q.split != args.split or q.span is None or job is None:
                continue
            seconds = float(job["finished_at"]) - float(job["created_at"])
            if job["status"] != "succeeded":
                rows.append({"id": q.id, "corpus": corpus, "error": job.get("error"), "seconds": seconds})
                continue
            result = job["result"]
            rows.append({"id": q.id, "corpus": corpus, "seconds": seconds, "answer": result["answer"],
                         **score(q, result, retrieval_eval.answer_spans(q, texts))})  # fmt: skip
    for corpus, question in no_answer_questions(args.split):
        job = jobs.get((corpus, question))
        if job is not None and job["status"] == "succeeded":
            result = job["result"]
            unanswerable.append({"corpus": corpus, "question": question, "answer": result["answer"],
                                 "seconds": float(job["finished_at"]) - float(job["created_at"]),
                                 "no_answer": result["extra"].get("no_answer", False)})  # fmt: skip
    summary = summarize(rows, unanswerable)
    print(json.dumps(summary, indent=1) if args.json else report(summary, args.split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
