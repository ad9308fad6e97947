"""What one worker process holds (model, document store, Redis) and what one running job sees.

`get_runtime()` is a per-process singleton: the model is loaded once per process, on first use
or by the warm-up thread started when the worker is ready. A GPU worker runs Celery's threads
pool (`LONGCTX_WORKER_SLOTS` jobs in flight): every job thread calls the one engine, whose loop
batches their requests (`Engine.generate` is thread-safe). An engine without that loop (no
`stats()`) is called one job at a time. While the engine is loaded a thread publishes its
`stats()` to Redis every `stats_interval_s` (with an expiry) for the API's /metrics. The document store (SQLite + FAISS on
disk, one writer at a time) reloads its indexes when another process wrote them, so a GPU
worker sees documents the CPU worker ingested a moment ago.

`JobContext` is what a task hands to the domain functions: `should_stop` (the cooperative cancel
flag, polled by a heartbeat thread so the decode loop only reads an Event; it is also raised
when the job runs past `task_soft_time_limit_s`, which the threads pool does not enforce),
`on_text` (token events), `progress`, `emit`. The same thread refreshes the job's lease; if the
process dies the lease runs out and the reaper fails the job, unless a worker started on the same
host requeued it first (`workers.celery_app`) or Celery redelivered it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib
import logging
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from workers.contracts import Job, Settings, get_settings
from workers.jobstore import JobStore

log = logging.getLogger(__name__)
T = TypeVar("T")
RATE_WINDOW_S = 10.0  # tokens/s on /metrics: generated tokens over about this long


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.jobs = JobStore.connect(settings)
        self._engine: Any = None
        self._store: Any = None
        self._lock = threading.Lock()

    def engine(self) -> Any:
        with self._lock:
            if self._engine is None:
                module_name, _, function = self.settings.engine_factory.partition(":")
                factory = getattr(importlib.import_module(module_name), function)
                started = time.perf_counter()
                self._engine = factory(
                    self.settings.model_path, dtype=self.settings.dtype, device=self.settings.device,
                    **self.settings.engine_options(),
                )
                log.info("engine loaded in %.1f s", time.perf_counter() - started)
                if not callable(getattr(self._engine, "stats", None)):
                    self._engine = OneAtATime(self._engine)
                threading.Thread(target=self._publish_stats, name="stats", daemon=True).start()
            return self._engine

    def _publish_stats(self) -> None:
        """Every `stats_interval_s`: the engine's figures, jobs in flight and tokens/s over the
        last `RATE_WINDOW_S`, under this worker's name, expiring after three missed rounds."""
        from workers.celery_app import node_name

        interval = self.settings.stats_interval_s
        seen: collections.deque[tuple[float, int]] = collections.deque()
        while True:
            try:
                figures = dataclasses.asdict(self._engine.stats())
                now, generated = time.monotonic(), figures.get("generated_tokens", 0)
                seen.append((now, generated))
                while len(seen) > 2 and now - seen[1][0] >= RATE_WINDOW_S:
                    seen.popleft()
                span = now - seen[0][0]
                rate = (generated - seen[0][1]) / span if span > 0 else 0.0
                figures.update(tokens_per_s=rate, jobs_in_flight=len(IN_FLIGHT),
                               slots=self.settings.worker_slots, at=time.time())  # fmt: skip
                self.jobs.publish_stats(node_name(), figures, ttl_s=3 * interval)
            except Exception as exc:  # Redis away or a stats hiccup: next round
                log.debug("stats: %s", exc)
            time.sleep(interval)

    def store(self) -> Any:
        """The document store; it reloads its indexes itself when another process wrote them."""
        with self._lock:
            if self._store is None:
                from retrieval import DocumentStore

                self._store = DocumentStore(self.settings.data_dir / "store")
            return self._store

    def warm_up(self) -> None:
        try:
            self.engine()
        except Exception:
            log.exception("warm-up failed; the first job will try again")


class OneAtATime:
    """An engine without a batching loop, called by one job thread at a time."""

    def __init__(self, engine: Any):
        self._inner, self._lock = engine, threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._inner.generate(*args, **kwargs)

    def chat(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._inner.chat(*args, **kwargs)

    def stats(self) -> Any:
        return EngineFigures(running=int(self._lock.locked()))


@dataclasses.dataclass
class EngineFigures:
    """The figures of an engine that has no `stats()` (the field names of `EngineStats`)."""

    running: int = 0
    waiting: int = 0
    generated_tokens: int = 0


IN_FLIGHT: set[str] = set()  # ids of the jobs this process is running now (threads pool)
IN_FLIGHT_LOCK = threading.Lock()


def until_redis_answers(action: Callable[[], T], patience_s: float = 120.0) -> T:
    """Run a Redis action, retrying while Redis is away (a restart must not lose a finished job):
    redis-py's `Retry`, exponential backoff from 0.1 s to 1 s, about `patience_s` in all."""
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=max(1, int(patience_s) + 3))
    return retry.call_with_retry(action, lambda exc: log.warning("Redis away (%s); retrying", exc))


@lru_cache(maxsize=1)
def get_runtime() -> Runtime:
    return Runtime(get_settings())


class JobContext:
    """The running job as the domain code sees it: cancel flag, events, progress."""

    def __init__(self, jobs: JobStore, job: Job):
        self.jobs = jobs
        self.job = job
        self._stop = threading.Event()
        self._done = threading.Event()
        self._deadline = time.monotonic() + jobs.settings.task_soft_time_limit_s
        self.timed_out = False
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job.id}", daemon=True)

    def __enter__(self) -> JobContext:
        if self.jobs.cancel_requested(self.job.id):
            self._stop.set()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def emit(self, event_type: str, data: Any) -> None:
        """Best effort: an event lost while Redis is away must not abort the job."""
        try:
            self.jobs.emit(self.job.id, event_type, data)
        except redis.exceptions.RedisError as exc:
            log.warning("event of %s dropped: %s", self.job.id, exc)

    def on_text(self, *args: Any) -> None:
        """Token events; called as `(text)` (agent backends) or `(prompt index, text)` (engine)."""
        piece = args[-1]
        if piece:
            self.emit("token", {"text": piece, "index": args[0] if len(args) == 2 else 0})

    def progress(self, fraction: float, message: str | None = None) -> None:
        fraction = max(0.0, min(1.0, fraction))
        with contextlib.suppress(redis.exceptions.RedisError):
            self.jobs.update(self.job.id, progress=fraction, progress_message=message)
        self.emit("progress", {"progress": fraction, "message": message})

    def _beat(self) -> None:
        settings = self.jobs.settings
        last_beat = 0.0
        while not self._done.wait(settings.cancel_poll_s):
            if time.monotonic() > self._deadline:
                self.timed_out = True
                self._stop.set()
            try:
                if self.jobs.cancel_requested(self.job.id):
                    self._stop.set()
                if time.monotonic() - last_beat >= settings.heartbeat_s:
                    self.jobs.heartbeat(self.job.id)
                    last_beat = time.monotonic()
            except Exception as exc:  # Redis away for a moment: the lease has slack
                log.warning("heartbeat of %s: %s", self.job.id, exc)
