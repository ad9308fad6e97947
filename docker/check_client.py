"""The user's side of scripts/compose_check.sh: plain HTTP (httpx) and the `openai` client.

Each subcommand prints what it saw and exits 0 (pass) or 1 (fail); the job ids it makes are kept
in a state file (LONGCTX_CHECK_STATE) so later steps can check them. Not a test module: it needs a
running stack at LONGCTX_CHECK_URL (default http://127.0.0.1:8113).
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import redis

URL = os.environ.get("LONGCTX_CHECK_URL", "http://127.0.0.1:8113")
REDIS = os.environ.get("LONGCTX_CHECK_REDIS", "redis://127.0.0.1:6399/0")
STATE = os.environ.get("LONGCTX_CHECK_STATE", "/tmp/longctx-compose-check.json")
DOCUMENT = (
    "Varnholm lighthouse notes.\n\n"
    "The lighthouse on Varnholm island was painted teal in 1931 by its keeper, Edda Lunquist. "
    "Its lamp is fed by a wind turbine installed in 1987, and the island ferry leaves from "
    "Korsby harbour every Tuesday at 07:40.\n"
)
QUESTION = "What colour was the Varnholm lighthouse painted, and by whom?"
TERMINAL = {"succeeded", "failed", "cancelled"}


def state() -> dict:
    try:
        with open(STATE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"jobs": []}


def save(data: dict) -> None:
    with open(STATE, "w") as f:
        json.dump(data, f)


def client() -> httpx.Client:
    return httpx.Client(base_url=URL, timeout=30)


def accepted(reply: httpx.Response) -> str:
    if reply.status_code != 202:
        raise SystemExit(f"FAIL {reply.request.url.path}: {reply.status_code} {reply.text[:300]}")
    job_id = reply.json()["id"]
    data = state()
    data["jobs"].append(job_id)
    save(data)
    return job_id


def get(http: httpx.Client, job_id: str) -> dict:
    """The job as GET /v1/jobs/{id} shows it, plus `worker` and `attempts` from its Redis hash.

    The public job view leaves out which worker holds a job and how often it was delivered; the
    check reads those two fields from the stack's own Redis (127.0.0.1:6399, `workers.jobstore`).
    """
    job = http.get(f"/v1/jobs/{job_id}").json()
    with redis.Redis.from_url(REDIS, socket_timeout=5) as r:
        worker, attempts = r.hmget(f"longctx:job:{job_id}", "worker", "attempts")
    job["worker"] = json.loads(worker) if worker else None
    job["attempts"] = json.loads(attempts) if attempts else 0
    return job


def wait(http: httpx.Client, job_id: str, timeout_s: float = 900) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = get(http, job_id)
        if job["status"] in TERMINAL:
            return job
        time.sleep(1)
    raise SystemExit(f"FAIL job {job_id} not finished after {timeout_s:.0f} s: {job['status']}")


def ask(http: httpx.Client, document_id: str | None, max_new_tokens: int = 48) -> str:
    """A QA job over the document (its id: the job is routed to the worker holding its prefix)
    or, with None, over the collection "check" (no prefix key: the shared gpu queue)."""
    scope = {"document_ids": [document_id]} if document_id else {"collection": "check"}
    body = {"question": QUESTION, **scope, "mode": "rag", "top_k": 2,
            "max_new_tokens": max_new_tokens}
    return accepted(http.post("/v1/qa", json=body))


def cites(job: dict, document_id: str) -> bool:
    result = job.get("result") or {}
    return job["status"] == "succeeded" and any(
        c["document"] == document_id for c in result.get("citations", []))


SERVICES = ("worker-cpu", "worker-model-1", "worker-model-2")


def cmd_ready(timeout_s: str = "900") -> int:
    """Wait for /readyz 200 with every worker container of the stack announced in it."""
    started, first = time.monotonic(), None
    while time.monotonic() - started < float(timeout_s):
        try:
            reply = httpx.get(f"{URL}/readyz", timeout=5)
            if reply.status_code == 200:
                first = first or time.monotonic() - started
                workers = reply.json()["workers"]
                if all(any(w.startswith(s + "-") for w in workers) for s in SERVICES):
                    print(f"/readyz 200 after {first:.1f} s, all {len(SERVICES)} workers after "
                          f"{time.monotonic() - started:.1f} s: {workers}")
                    return 0
        except httpx.HTTPError:
            pass
        time.sleep(1)
    print(f"FAIL /readyz not 200 within {timeout_s} s")
    return 1


def cmd_upload() -> int:
    with client() as http:
        job = wait(http, accepted(http.post(
            "/v1/documents", files={"file": ("varnholm.txt", DOCUMENT.encode())},
            data={"collection": "check"})))
        if job["status"] != "succeeded":
            print(f"FAIL ingest {job['status']}: {job.get('error')}")
            return 1
        document = job["result"]["document"]
        data = state()
        data["document"] = document["id"]
        save(data)
        print(f"ingested varnholm.txt: {document['chunks']} chunk(s), id {document['id']}, by {job['worker']}")
        return 0


def cmd_qa() -> int:
    document_id = state()["document"]
    with client() as http:
        started = time.monotonic()
        job = wait(http, ask(http, document_id))
    answer = (job.get("result") or {}).get("answer", "")
    print(f"Q: {QUESTION}\nA: {answer.strip()[:300]}\n   ({time.monotonic() - started:.1f} s, {job['worker']})")
    for c in (job.get("result") or {}).get("citations", []):
        print(f"   [{c['number']}] {c['source']} ({c['document']}) chars {c['start']}-{c['end']}: {c['quote'][:80]!r}")
    if not cites(job, document_id):
        print(f"FAIL the answer does not cite {document_id}: {job['status']} {job.get('error')}")
        return 1
    return 0


def cmd_chat() -> int:
    from openai import OpenAI

    openai = OpenAI(base_url=f"{URL}/v1", api_key=os.environ.get("LONGCTX_API_KEY", "none"))
    started = time.monotonic()
    reply = openai.chat.completions.create(
        model="longctx", max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": "Say hello in French, in one word."}])
    text = reply.choices[0].message.content or ""
    print(f"openai client: {text.strip()[:200]!r} ({reply.usage.completion_tokens} tokens, "
          f"{time.monotonic() - started:.1f} s, finish_reason {reply.choices[0].finish_reason})")
    return 0 if text.strip() else 1


def cmd_long_job() -> int:
    """Start a long QA job and print '<job id> <worker>' once it runs (for docker kill)."""
    document_id = state()["document"]
    with client() as http:
        job_id = ask(http, document_id, max_new_tokens=1024)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            job = get(http, job_id)
            if job["status"] == "running" and job["worker"]:
                print(job_id, job["worker"])
                return 0
            if job["status"] in TERMINAL:
                break
            time.sleep(0.5)
    print(f"FAIL job {job_id} never seen running: {job['status']}", file=sys.stderr)
    return 1


def cmd_after_kill(job_id: str, timeout_s: str = "240") -> int:
    """The killed job must leave `running`: failed (lease expired) or redelivered and run again."""
    started = time.monotonic()
    seen = []
    with client() as http:
        while time.monotonic() - started < float(timeout_s):
            job = get(http, job_id)
            now = (job["status"], job["attempts"], job["worker"])
            if not seen or seen[-1][1:] != now:
                seen.append((round(time.monotonic() - started, 1), *now))
            if job["status"] in TERMINAL:
                break
            time.sleep(1)
    for at, status, attempts, worker in seen:
        print(f"   +{at:6.1f} s  {status:<9} attempts={attempts} worker={worker}")
    final = seen[-1][1]
    error = (job.get("error") or {}).get("message", "")
    print(f"job {job_id} ended {final} {error[:160]}")
    return 0 if final in TERMINAL else 1


def cmd_submit() -> int:
    """Accept a QA job and print its id (the Redis restart step checks it survives)."""
    with client() as http:
        print(ask(http, state()["document"]))
    return 0


def cmd_survived(job_id: str) -> int:
    data = state()
    with client() as http:
        missing = [j for j in data["jobs"] if http.get(f"/v1/jobs/{j}").status_code != 200]
        documents = http.get("/v1/documents", params={"collection": "check"}).json()["data"]
        job = wait(http, job_id)
    print(f"{len(data['jobs']) - len(missing)}/{len(data['jobs'])} accepted jobs still known, "
          f"{len(documents)} document(s) listed; the job accepted before the restart ended "
          f"{job['status']} on {job['worker']}")
    return 0 if not missing and documents and job["status"] == "succeeded" else 1


def cmd_two_workers(count: str = "4") -> int:
    """Several QA jobs at once over the collection (the shared queue, no affinity): both model
    workers must take some, and each must find and cite the one document in the shared store."""
    document_id = state()["document"]
    with client() as http:
        ids = [ask(http, None, max_new_tokens=24) for _ in range(int(count))]
        with ThreadPoolExecutor(len(ids)) as pool:
            jobs = list(pool.map(lambda j: wait(httpx.Client(base_url=URL, timeout=30), j), ids))
    by_worker: dict[str, list[bool]] = {}
    for job in jobs:
        by_worker.setdefault((job["worker"] or "?").rsplit("-", 1)[0], []).append(cites(job, document_id))
    for worker, ok in sorted(by_worker.items()):
        print(f"   {worker}: {len(ok)} job(s), {sum(ok)} citing {document_id}")
    model_workers = [w for w in by_worker if w.startswith("worker-model")]
    return 0 if len(model_workers) >= 2 and all(all(v) for v in by_worker.values()) else 1


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    sys.exit(globals()["cmd_" + command.replace("-", "_")](*args))
