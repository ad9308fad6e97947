"""What one worker process holds (model, document store, Redis) and what one running job sees.

`get_runtime()` is a per-process singleton: the model is loaded once per process, on first use
or by the warm-up thread started right after the fork. The document store (SQLite + FAISS on
disk, one writer at a time) reloads its indexes when another process wrote them, so a GPU
worker sees documents the CPU worker ingested a moment ago.

`JobContext` is what a task hands to the domain functions: `should_stop` (the cooperative cancel
flag, polled by a heartbeat thread so the decode loop only reads an Event), `on_text` (token
events), `progress`, `emit`. The same thread refreshes the job's lease; if the process dies the
lease runs out and the reaper fails the job unless Celery redelivered it first.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import redis

from workers.contracts import Job, Settings, get_settings
from workers.jobstore import JobStore

log = logging.getLogger(__name__)
T = TypeVar("T")


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
            return self._engine

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


def until_redis_answers(action: Callable[[], T], patience_s: float = 120.0) -> T:
    """Run a Redis action, retrying while Redis is away (a restart must not lose a finished job)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return action()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("Redis away (%s); retrying", exc)
            time.sleep(1.0)


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
            try:
                if self.jobs.cancel_requested(self.job.id):
                    self._stop.set()
                if time.monotonic() - last_beat >= settings.heartbeat_s:
                    self.jobs.heartbeat(self.job.id)
                    last_beat = time.monotonic()
            except Exception as exc:  # Redis away for a moment: the lease has slack
                log.warning("heartbeat of %s: %s", self.job.id, exc)
