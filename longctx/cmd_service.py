"""`longctx serve`, `longctx worker`, `longctx up`: the service's processes.

- `serve`: the API under uvicorn (it loads no model).
- `worker [--queues gpu,cpu]`: a Celery worker. With the gpu queue: one process per GPU, Celery's
  threads pool with `LONGCTX_WORKER_SLOTS` (default 16) jobs in flight, all feeding the one
  engine loop of the process (the model loaded once, when the worker is ready). The cpu queue
  alone: prefork, `--concurrency` processes (default 1).
- `up`: everything on one machine: redis-server if none answers at LONGCTX_REDIS_URL (data
  kept under the data folder), one worker on both queues, the API; prints the URL when ready
  and stops what it started on Ctrl-C.
- `demo`: a client of a running service: uploads documents (by default the license texts in
  /usr/share/common-licenses), asks a question, prints the answer with its citations.

Configuration comes from LONGCTX_* environment variables (see workers/contracts.py, Settings);
the flags here override the few that differ per process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the HTTP API (FastAPI under uvicorn)")
    _add_http_flags(serve)
    serve.set_defaults(handler=run_serve)

    worker = subparsers.add_parser(
        "worker", help="run a Celery worker (model jobs on gpu, ingestion on cpu)"
    )
    worker.add_argument(
        "--queues", default="gpu,cpu", help="comma-separated queues to consume (default: gpu,cpu)"
    )
    worker.add_argument(
        "--concurrency", type=int, default=None,
        help="jobs in flight (gpu: threads, default LONGCTX_WORKER_SLOTS; cpu only: processes, default 1)",
    )  # fmt: skip
    worker.add_argument(
        "--name", default=None, help="worker node name (default: longctx-<queues>@<host>)"
    )
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(handler=run_worker)

    up = subparsers.add_parser(
        "up", help="Redis (if none answers), a worker and the API on this machine"
    )
    _add_http_flags(up, default_host="127.0.0.1")
    up.add_argument("--queues", default="gpu,cpu", help="queues of the worker it starts")
    up.set_defaults(handler=run_up)

    demo = subparsers.add_parser(
        "demo", help="upload documents to a running service, ask a question, print the cited answer"
    )
    demo.add_argument(
        "files",
        nargs="*",
        help="txt/md/html/pdf files (default: license texts found on this machine)",
    )
    demo.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the service (default http://127.0.0.1:8000)"
    )
    demo.add_argument("--question", default=DEMO_QUESTION)
    demo.add_argument(
        "--mode",
        default="rag",
        choices=("auto", "stuff", "rag"),
        help="rag (default: quick on a CPU), or auto/stuff to give the model whole documents",
    )
    demo.add_argument(
        "--api-key",
        default=os.environ.get("LONGCTX_API_KEY"),
        help="bearer key, if the service wants one",
    )
    demo.set_defaults(handler=run_demo)


def _add_http_flags(parser: argparse.ArgumentParser, default_host: str = "0.0.0.0") -> None:
    parser.add_argument(
        "--host", default=default_host, help=f"address to listen on (default {default_host})"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="info")
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from longctx.cli import CliError

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - {"gpu", "cpu"})
    if not queues or unknown:
        raise CliError(
            f"unknown queue(s) {', '.join(unknown) or '(none)'}; use gpu, cpu or gpu,cpu"
        )
    from workers.contracts import get_settings

    if "gpu" in queues:
        os.environ.setdefault("LONGCTX_WARMUP", "1")  # load the model as soon as it is ready
        pool, concurrency = "threads", args.concurrency or get_settings().worker_slots
    else:
        pool, concurrency = "prefork", args.concurrency or 1
    from workers.celery_app import app

    name = args.name or f"longctx-{'-'.join(queues)}@%h"
    app.worker_main(["worker", "-Q", ",".join(queues), "-c", str(concurrency), "-P", pool,
                     "-n", name, "--loglevel", args.loglevel, "--without-gossip", "--without-mingle"])  # fmt: skip
    return 0


def run_up(args: argparse.Namespace) -> int:
    import redis

    from workers.contracts import get_settings

    settings = get_settings()
    started: list[subprocess.Popen] = []
    try:
        if not _redis_answers(settings.redis_url):
            started.append(_start_redis(settings.redis_url, Path(settings.data_dir) / "redis"))
        worker_cmd = [sys.executable, "-m", "longctx.cli", "worker", "--queues", args.queues]
        started.append(subprocess.Popen(worker_cmd))
        url = f"http://{args.host}:{args.port}"
        threading.Thread(target=_announce_when_ready, args=(url, started), daemon=True).start()
        run_serve(args)
    except redis.exceptions.RedisError as exc:
        from longctx.cli import CliError

        raise CliError(f"Redis: {exc}") from exc
    finally:
        for process in reversed(started):
            _stop(process)
    return 0


DEMO_QUESTION = (
    "Under the Apache License, what must you give recipients when you redistribute the Work?"
)
DEMO_FILES = ("Apache-2.0", "MPL-2.0", "BSD", "CC0-1.0")


def run_demo(args: argparse.Namespace) -> int:
    import httpx

    from longctx.cli import CliError

    files = [Path(f) for f in args.files] or _demo_files()
    if not files:
        raise CliError("no files given and no license texts found under /usr/share/common-licenses")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=600) as client:
        ids = []
        for path in files:
            known = path.suffix.lower() in (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")
            name = path.name if known else path.name + ".txt"
            reply = client.post("/v1/documents", files={"file": (name, path.read_bytes())})
            document = _wait(client, _accepted(reply))["result"]["document"]
            print(f"ingested {name}: {document['chunks']} chunks ({document['id']})")
            ids.append(document["id"])
        print(f"\nQ: {args.question}")
        reply = client.post(
            "/v1/qa",
            json={
                "question": args.question,
                "document_ids": ids,
                "mode": args.mode,
                "top_k": 4,
                "max_new_tokens": 96,
            },
        )
        answer = _wait(client, _accepted(reply))["result"]
    print(
        f"A: {answer['answer']}\n   (context: {answer['mode']}, {answer['context_tokens']} tokens)"
    )
    for citation in answer["citations"]:
        print(
            f'[{citation["number"]}] {citation["source"]} chars {citation["start"]}-{citation["end"]}: "{citation["quote"]}"'
        )
    return 0


def _demo_files() -> list[Path]:
    folder = Path("/usr/share/common-licenses")
    return [folder / name for name in DEMO_FILES if (folder / name).is_file()]


def _accepted(reply) -> str:
    from longctx.cli import CliError

    if reply.status_code != 202:
        raise CliError(f"{reply.request.url.path}: {reply.status_code} {reply.text[:300]}")
    return reply.json()["id"]


def _wait(client, job_id: str) -> dict:
    from longctx.cli import CliError

    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "succeeded":
            return job
        if job["status"] in ("failed", "cancelled"):
            raise CliError(
                f"job {job_id} {job['status']}: {(job.get('error') or {}).get('message')}"
            )
        time.sleep(0.3)


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.exceptions.RedisError:
        return False


def _start_redis(url: str, folder: Path) -> subprocess.Popen:
    from longctx.cli import CliError

    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        raise CliError(f"no Redis answers at {url}, and it is not on this machine to start")
    binary = shutil.which("redis-server")
    if binary is None:
        raise CliError(f"no Redis answers at {url} and redis-server is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "--port", str(parsed.port or 6379), "--bind", "127.0.0.1", "--dir", str(folder),
           "--appendonly", "yes"]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not _redis_answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise CliError(f"redis-server did not start on port {parsed.port or 6379}")
        time.sleep(0.1)
    print(f"started redis-server on port {parsed.port or 6379} (data in {folder})", flush=True)
    return process


def _announce_when_ready(url: str, started: list[subprocess.Popen]) -> None:
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                print(f"longctx is ready at {url} (OpenAPI docs at {url}/docs)", flush=True)
                return
        except httpx.HTTPError:
            pass
        if any(p.poll() is not None for p in started):
            print(
                "longctx: a process it started has exited; see the messages above",
                file=sys.stderr,
                flush=True,
            )
            return
        time.sleep(0.5)
    print("longctx: not ready after 300 s", file=sys.stderr, flush=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
