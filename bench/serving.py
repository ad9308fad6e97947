"""Serving benchmark: concurrent chat completions, document follow-ups and an agent run through
the HTTP API of a real stack (its own Redis DB, the API, one threads-pool GPU worker).

    python bench/serving.py                      # the offline default model, every part
    python bench/serving.py --parts chat --ks 1,4 --model smollm2-135m-instruct

Parts (each prints a markdown table):
- chat: K = 1, 4, 8, 16 concurrent streamed `/v1/chat/completions` of exactly `--new-tokens`
  tokens (`ignore_eos`): wall time, aggregate tokens/s, p50/p95 latency, p50 time to first
  token; the ratios against K = 1 measured in the same run (targets: 8 within 2.5x one, 8
  reach >= 3x one's tokens/s).
- followups: `POST /v1/qa` mode `stuff` on a license text of >= 8,000 tokens, then three other
  questions on it; time to first token (the first `token` event) and latency of each, and the
  same four with the prefix cache off (a second worker): answers must match.
- agent: an agent job of up to 4 steps; prompt tokens the engine computed with the cache and
  without it (from the engine figures the worker publishes, `Engine.stats()`).
- memory: 32 concurrent chats against a worker with a small KV budget: all finish, the KV
  blocks used never exceed the budget, the worker's peak RSS (VmHWM).

Departures: the machine is shared (2 cores, other jobs running), so read the ratios measured in
one run, not the absolute seconds. Redis DB 11 and API port 8108 by default (tests/service flush
DBs 5, 8, 9 and 13-15: a bench on one of them dies when the suite runs beside it); the stack is
stopped and the DB flushed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.contracts import Settings  # noqa: E402
from workers.jobstore import JobStore  # noqa: E402

LICENSE = Path("/usr/share/common-licenses/GPL-3")
CHAT_PROMPT = "Count from 1 to 500, separated by commas."
QUESTIONS = [
    "What does this license say about the source code of a covered work?",
    "Can I charge a fee for conveying copies of the program?",
    "What happens to my rights if I violate this license?",
    "Does the license include a patent grant from contributors?",
]
AGENT_TASK = ("Use the calculator for every step, one call per step: compute 17 * 23, then add 111 "
              "to the result, then multiply that by 3. Then answer with the final number.")  # fmt: skip


class Stack:
    """Redis DB `db` (flushed), the API on `port`, one GPU worker (threads pool)."""

    def __init__(self, args: argparse.Namespace, data_dir: Path):
        self.args, self.data_dir = args, data_dir
        self.url = f"http://127.0.0.1:{args.port}"
        self.env = dict(os.environ, LONGCTX_REDIS_URL=f"redis://127.0.0.1:6379/{args.db}",
                        LONGCTX_KEY_PREFIX="lctxbench", LONGCTX_DATA_DIR=str(data_dir),
                        LONGCTX_RATE_LIMIT_PER_MINUTE="0", LONGCTX_STATS_INTERVAL_S="0.25",
                        LONGCTX_HEARTBEAT_S="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                        TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))  # fmt: skip
        if args.model:
            self.env["LONGCTX_MODEL_PATH"] = args.model
        self.settings = Settings(redis_url=self.env["LONGCTX_REDIS_URL"], key_prefix="lctxbench")
        self.jobs = JobStore.connect(self.settings)
        self.jobs.redis.flushdb()
        self.api = self._spawn(["serve", "--host", "127.0.0.1", "--port", str(args.port)], "api")
        self.worker: subprocess.Popen | None = None

    def _spawn(self, argv: list[str], name: str, **env: str) -> subprocess.Popen:
        log = open(self.data_dir / f"{name}.log", "a")
        return subprocess.Popen([sys.executable, "-m", "longctx.cli", *argv], cwd=ROOT,
                                env=self.env | env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def start_worker(self, **env: str) -> None:
        """(Re)start the one GPU worker with these extra settings; wait for its engine."""
        self.stop_worker()
        self.jobs.redis.delete(*self.jobs.redis.keys("lctxbench:stats:*") or ["-"])
        self.worker = self._spawn(["worker", "--queues", "gpu,cpu"], "worker", **env)
        deadline = time.monotonic() + 300
        while not self.stats():
            if self.worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {self.data_dir}/worker.log")
            time.sleep(0.25)
        while True:
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)

    def stats(self) -> dict:
        """The figures our worker process published last (empty before its engine loaded)."""
        published = self.jobs.serving_stats()
        pid = self.worker.pid if self.worker else None
        return next((v for k, v in published.items() if k.endswith(f"-{pid}")), {})

    def fresh_stats(self, after: float) -> dict:
        """Engine figures published after the time `after` (a job's end)."""
        while (figures := self.stats()).get("at", 0) <= after:
            time.sleep(0.1)
        return figures

    def peak_rss_mb(self) -> float:
        """The worker's peak RSS (VmHWM of the process running the engine: the worker itself)."""
        for line in Path(f"/proc/{self.worker.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop_worker(self) -> None:
        if self.worker and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(10)

    def close(self) -> None:
        self.stop_worker()
        self.api.terminate()
        self.api.wait(15)
        self.jobs.redis.flushdb()


def stream_chat(client: httpx.Client, new_tokens: int) -> dict:
    """One streamed chat completion: latency, time to first token, tokens generated."""
    body = {"model": "longctx", "max_tokens": new_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": CHAT_PROMPT}]}  # fmt: skip
    started, first, tokens = time.perf_counter(), None, 0
    with client.stream("POST", "/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - started
    return {"latency": time.perf_counter() - started, "ttft": first or float("nan"), "tokens": tokens}


def concurrent(url: str, k: int, call) -> tuple[float, list[dict]]:
    results: list[dict] = [{} for _ in range(k)]

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=1800) as client:
            results[i] = call(client)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, results


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def part_chat(stack: Stack, args: argparse.Namespace) -> str:
    with httpx.Client(base_url=stack.url, timeout=600) as client:
        stream_chat(client, 4)  # warm-up: first-call costs out of the K = 1 anchor
    rows, anchor = [], None
    for k in args.ks:
        wall, results = concurrent(stack.url, k, lambda c: stream_chat(c, args.new_tokens))
        tokens = sum(r["tokens"] for r in results)
        assert all(r["tokens"] == args.new_tokens for r in results), results
        lat, ttft = [r["latency"] for r in results], [r["ttft"] for r in results]
        anchor = anchor or (wall, tokens / wall)
        rows.append(f"| {k} | {wall:.1f} | {tokens / wall:.1f} | {pct(lat, .5):.1f} | "
                    f"{pct(lat, .95):.1f} | {pct(ttft, .5):.2f} | {wall / anchor[0]:.2f}x | "
                    f"{tokens / wall / anchor[1]:.2f}x |")  # fmt: skip
        print(rows[-1], flush=True)
    head = ("| K concurrent | wall s | tokens/s | p50 latency s | p95 latency s | p50 TTFT s | "
            "wall vs K=1 | tokens/s vs K=1 |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    return head + "\n" + "\n".join(rows)


def ask(client: httpx.Client, jobs: JobStore, document: str, question: str) -> dict:
    """A stuff-mode question as a job: time to its first token event, latency, the answer."""
    started = time.perf_counter()
    job = client.post("/v1/qa", json={"question": question, "document_ids": [document],
                                      "mode": "stuff", "max_new_tokens": 32}).json()  # fmt: skip
    first, after = None, "0-0"
    while True:
        for event_id, kind, data in jobs.read_events(job["id"], after, block_ms=1000):
            after = event_id
            if kind == "token" and first is None:
                first = time.perf_counter() - started
            if kind == "done":
                assert data["status"] == "succeeded", data
                return {"ttft": first, "latency": time.perf_counter() - started,
                        "answer": data["result"]["answer"],
                        "context_tokens": data["result"]["context_tokens"]}  # fmt: skip


def upload(client: httpx.Client, jobs: JobStore, path: Path) -> str:
    reply = client.post("/v1/documents", files={"file": (path.name + ".txt", path.read_bytes(),
                                                         "text/plain")})  # fmt: skip
    job_id = reply.json()["id"]
    while (job := jobs.get(job_id)).status.value not in ("succeeded", "failed"):
        time.sleep(0.2)
    assert job.status.value == "succeeded", job
    return job.result["document"]["id"]


def part_followups(stack: Stack, args: argparse.Namespace) -> str:
    runs, document = {}, None
    for cache in ("on", "off"):
        stack.start_worker(**({} if cache == "on" else {"LONGCTX_PREFIX_CACHE": "false"}))
        with httpx.Client(base_url=stack.url, timeout=1800) as client:
            document = document or upload(client, stack.jobs, args.document)
            runs[cache] = [ask(client, stack.jobs, document, q) for q in QUESTIONS]
    on, off = runs["on"], runs["off"]
    rows = []
    for i, (a, b) in enumerate(zip(on, off, strict=True)):
        name = "first" if i == 0 else f"follow-up {i}"
        rows.append(f"| {name} | {a['ttft']:.2f} | {a['latency']:.2f} | {b['ttft']:.2f} | "
                    f"{b['latency']:.2f} | {on[0]['ttft'] / a['ttft']:.1f}x | "
                    f"{'yes' if a['answer'] == b['answer'] else 'NO'} |")  # fmt: skip
    head = (f"Document: {args.document.name}, {on[0]['context_tokens']} context tokens, mode stuff, "
            "32 new tokens per answer.\n\n"
            "| question | TTFT s (cache) | latency s (cache) | TTFT s (no cache) | "
            "latency s (no cache) | first TTFT / this TTFT | same answer |\n"
            "|---|---|---|---|---|---|---|")  # fmt: skip
    return head + "\n" + "\n".join(rows)


def agent_prefill(stack: Stack, **env: str) -> dict:
    stack.start_worker(**env)
    before = stack.stats()
    with httpx.Client(base_url=stack.url, timeout=1800) as client:
        job = client.post("/v1/agent/jobs", json={"task": AGENT_TASK, "tools": ["calculator"],
                                                  "max_steps": 4, "max_new_tokens": 96}).json()  # fmt: skip
        while (done := stack.jobs.get(job["id"])).status.value in ("queued", "running"):
            time.sleep(0.2)
    after = stack.fresh_stats(done.finished_at)
    prompt = after["prompt_tokens"] - before["prompt_tokens"]
    cached = after["cached_prompt_tokens"] - before["cached_prompt_tokens"]
    return {"steps": (done.result or {}).get("steps"), "status": done.status.value,
            "prompt": prompt, "computed": prompt - cached}  # fmt: skip


def part_agent(stack: Stack, args: argparse.Namespace) -> str:
    on = agent_prefill(stack)
    off = agent_prefill(stack, LONGCTX_PREFIX_CACHE="false")
    return ("| agent run | status | steps | prompt tokens | prefill tokens computed |\n"
            "|---|---|---|---|---|\n"
            f"| prefix cache on | {on['status']} | {on['steps']} | {on['prompt']} | {on['computed']} |\n"
            f"| prefix cache off | {off['status']} | {off['steps']} | {off['prompt']} | {off['computed']} |\n"
            f"\nPrefill computed with the cache: {on['computed'] / max(1, off['computed']):.2f} "
            "of the tokens computed without it.")  # fmt: skip


def part_memory(stack: Stack, args: argparse.Namespace) -> str:
    budget, k = args.small_budget, 32
    stack.start_worker(LONGCTX_KV_BUDGET_TOKENS=str(budget), LONGCTX_WORKER_SLOTS=str(k))
    peak = {"used": 0, "waiting": 0, "running": 0, "preemptions": 0}
    total = stack.stats()["kv_blocks_total"]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.1):
            figures = stack.stats()
            for name, key in (("used", "kv_blocks_used"), ("waiting", "waiting"),
                              ("running", "running"), ("preemptions", "preemptions")):  # fmt: skip
                peak[name] = max(peak[name], figures.get(key, 0))

    threading.Thread(target=watch, daemon=True).start()
    failures = []

    def call(client: httpx.Client) -> dict:
        try:
            return stream_chat(client, args.new_tokens)
        except httpx.HTTPStatusError as exc:
            failures.append(f"{exc.response.status_code} {exc.response.read().decode()[:300]}")
            return {"tokens": 0, "latency": float("nan")}
        except httpx.HTTPError as exc:
            failures.append(repr(exc))
            return {"tokens": 0, "latency": float("nan")}

    wall, results = concurrent(stack.url, k, call)
    stop.set()
    finished = sum(r["tokens"] == args.new_tokens for r in results)
    return ("| concurrent | KV budget tokens | KV blocks total | most blocks used | most running | "
            "most waiting | preemptions | finished | failed | wall s | worker peak RSS MB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n"
            f"| {k} | {budget} | {total} | {peak['used']} | {peak['running']} | {peak['waiting']} | "
            f"{peak['preemptions']} | {finished} | {len(failures)} | {wall:.1f} | "
            f"{stack.peak_rss_mb():.0f} |" + (f"\n\nFirst failure: {failures[0]}" if failures else ""))  # fmt: skip


PARTS = {"chat": part_chat, "followups": part_followups, "agent": part_agent,
         "memory": part_memory}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name or path (default: the offline default)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--ks", default="1,4,8,16", type=lambda s: [int(k) for k in s.split(",")])
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--small-budget", type=int, default=1024, help="KV tokens for the memory part")
    parser.add_argument("--document", type=Path, default=LICENSE, help="the follow-ups' document")
    parser.add_argument("--db", type=int, default=11)  # tests/service use 5, 8, 9, 13-15 and flush them
    parser.add_argument("--port", type=int, default=8108)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the stack
    with tempfile.TemporaryDirectory(prefix="longctx-bench-") as tmp:
        stack = Stack(args, Path(tmp))
        try:
            for name in args.parts.split(","):
                if name == "chat":
                    stack.start_worker()
                print(f"\n### {name}\n", flush=True)
                print(PARTS[name](stack, args), flush=True)
        except redis.exceptions.RedisError as exc:
            print(f"Redis: {exc}", file=sys.stderr)
            return 1
        finally:
            stack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
