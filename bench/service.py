"""Service benchmark: requests/s and p50/p95 latency of job submission and of a short chat
completion under 16 concurrent clients, with the API's own overhead separated from model time.

    python bench/service.py                     # starts its own redis-server, API and worker
    python bench/service.py --url http://host:8000 --model longctx   # an already running service

Job submission (POST /v1/agent/jobs) is measured with no worker consuming, so it is the API
and Redis alone. For chat completions each reply's job record gives the split:
queue wait = started - created, model time = finished - started (the worker, including
tokenizing and rendering), API overhead = client latency - (finished - created) (HTTP,
validation, Redis writes, event relay).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * percentile(latencies, 50), 1),
        "p95_ms": round(1000 * percentile(latencies, 95), 1),
    }


def run_concurrently(clients: int, total: int, one_request) -> tuple[list, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: one_request(i), range(total)))
    return results, time.perf_counter() - started


def bench_submission(url: str, clients: int, total: int) -> dict:
    with httpx.Client(
        base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)
    ) as client:

        def submit(i: int) -> float:
            t = time.perf_counter()
            reply = client.post(
                "/v1/agent/jobs", json={"task": f"bench {i}", "tools": ["calculator"]}
            )
            reply.raise_for_status()
            return time.perf_counter() - t

        for i in range(20):  # warm the connection pool
            submit(i)
        latencies, wall = run_concurrently(clients, total, submit)
    return summary(latencies, wall)


def bench_chat(url: str, model: str, clients: int, total: int, max_tokens: int) -> dict:
    with httpx.Client(
        base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)
    ) as client:

        def chat(i: int) -> tuple[float, str]:
            body = {"model": model, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": f"Say a number ({i})."}]}  # fmt: skip
            t = time.perf_counter()
            reply = client.post("/v1/chat/completions", json=body)
            reply.raise_for_status()
            return time.perf_counter() - t, reply.json()["id"].removeprefix("chatcmpl-")

        chat(-1)  # the first call may wait for the model to load
        results, wall = run_concurrently(clients, total, chat)
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for _, job_id in results]
    latencies = [latency for latency, _ in results]
    model = [j["finished_at"] - j["started_at"] for j in jobs]
    queue = [j["started_at"] - j["created_at"] for j in jobs]
    overhead = [
        latency - (j["finished_at"] - j["created_at"])
        for latency, j in zip(latencies, jobs, strict=True)
    ]
    out = summary(latencies, wall)
    for name, values in (("model", model), ("queue_wait", queue), ("api_overhead", overhead)):
        out[f"{name}_p50_ms"] = round(1000 * statistics.median(values), 1)
        out[f"{name}_p95_ms"] = round(1000 * percentile(values, 95), 1)
    return out


class LocalStack:
    """redis-server on a free port (temp folder), `longctx serve` and, on demand, `longctx worker`."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="longctx-bench-"))
        self.redis_port, self.api_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.env = dict(os.environ, LONGCTX_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
                        LONGCTX_DATA_DIR=str(self.folder / "data"), LONGCTX_RATE_LIMIT_PER_MINUTE="0",
                        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1")  # fmt: skip
        self.processes: list[subprocess.Popen] = []
        self.redis = self._spawn([shutil.which("redis-server"), "--port", str(self.redis_port), "--dir",
                                  str(self.folder), "--save", "", "--appendonly", "no"])  # fmt: skip
        self.api = self._spawn([sys.executable, "-m", "longctx.cli", "serve", "--host", "127.0.0.1",
                                "--port", str(self.api_port)])  # fmt: skip
        self._wait(
            lambda: httpx.get(self.url + "/healthz", timeout=1).status_code == 200, "the API"
        )

    def start_worker(self) -> None:
        self._spawn([sys.executable, "-m", "longctx.cli", "worker", "--queues", "gpu,cpu"])
        self._wait(
            lambda: httpx.get(self.url + "/readyz", timeout=1).status_code == 200, "a worker"
        )

    def flush(self) -> None:
        import redis

        redis.Redis(port=self.redis_port).flushall()

    def _spawn(self, cmd: list) -> subprocess.Popen:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.processes.append(process)
        return process

    def _wait(self, ready, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{what} did not start")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running service (default: start one here)")
    parser.add_argument("--model", default="longctx")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--submissions", type=int, default=800)
    parser.add_argument("--chats", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "service.json"))
    args = parser.parse_args()

    stack = None if args.url else LocalStack()
    url = args.url or stack.url
    try:
        results = {"clients": args.clients, "cpu_count": os.cpu_count()}
        results["submission"] = bench_submission(url, args.clients, args.submissions)
        print("job submission:", json.dumps(results["submission"]), flush=True)
        if stack:
            stack.flush()  # drop the queued benchmark jobs before a worker sees them
            stack.start_worker()
        results["chat"] = bench_chat(url, args.model, args.clients, args.chats, args.max_tokens)
        print("chat completion:", json.dumps(results["chat"]), flush=True)
    finally:
        if stack:
            stack.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
