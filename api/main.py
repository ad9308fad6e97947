"""The FastAPI application: `create_app(settings)` wires routers, errors, metrics and the reaper.

Endpoints are plain `def` functions on a sync Redis client (they run in the thread pool, which
is widened at start); event streams block in Redis for a few seconds at a time, never forever.
A background thread runs the job reaper (lease expiry, outbox re-sends) every few seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager

from anyio import to_thread
from celery import Celery
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from api import errors, serving_metrics
from api.routes import documents, health, jobs, openai
from workers.contracts import Settings, celery_config, get_settings
from workers.jobstore import JobStore, dispatch

log = logging.getLogger("longctx.api")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "longctx_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "longctx_http_request_seconds",
            "Time to the end of the response",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.jobs_submitted = Counter(
            "longctx_jobs_submitted", "Jobs accepted", ["kind"], registry=self.registry
        )
        self.queue_length = Gauge(
            "longctx_queue_length", "Messages waiting per queue", ["queue"], registry=self.registry
        )
        self.live_workers = Gauge(
            "longctx_live_workers", "Workers that announced themselves", registry=self.registry
        )


class MetricsAndLimits:
    """ASGI middleware: request counts and latency per route; oversized uploads refused before
    their body is read."""

    def __init__(self, app, settings: Settings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if (
            scope["path"] == "/v1/documents"
            and scope["method"] == "POST"
            and self._too_large(scope)
        ):
            response = errors.error_response(
                413,
                f"the request is larger than the limit of {self.settings.max_upload_bytes} bytes",
                code="file_too_large",
            )
            return await response(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status["code"])).inc()
            self.metrics.latency.labels(scope["method"], path).observe(
                time.perf_counter() - started
            )

    def _too_large(self, scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit():
                return int(value) > self.settings.max_upload_bytes + 64 * 1024
        return False


def _reaper(app: FastAPI, stop: threading.Event) -> None:
    state = app.state
    while not stop.wait(state.settings.reaper_interval_s):
        try:
            outcome = state.jobs.reap(dispatch=lambda job: dispatch(state.celery, state.jobs, job))
            if any(outcome.values()):
                log.warning("reaper: %s", outcome)
        except Exception as exc:  # Redis away: next round
            log.debug("reaper: %s", exc)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        to_thread.current_default_thread_limiter().total_tokens = 200
        stop = threading.Event()
        thread = threading.Thread(target=_reaper, args=(app, stop), name="reaper", daemon=True)
        thread.start()
        yield
        stop.set()

    app = FastAPI(
        title="longctx",
        version="0.1.0",
        description="Long-context document QA, agent jobs and batch summaries on Qwen2, with an OpenAI-compatible chat API.",
        lifespan=lifespan,
    )
    celery = Celery("longctx-api")
    celery.conf.update(celery_config(settings))
    app.state.settings = settings
    app.state.jobs = JobStore.connect(settings)
    app.state.celery = celery
    app.state.metrics = Metrics()
    serving_metrics.register(app.state.metrics.registry, app.state.jobs)
    app.state.log = log
    errors.install(app)
    for module in (documents, jobs, openai, health):
        app.include_router(module.router)
    app.add_middleware(MetricsAndLimits, settings=settings, metrics=app.state.metrics)
    return app
