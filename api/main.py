"""The FastAPI application: `create_app(settings)` wires routers, errors, metrics and the reaper.

Endpoints are plain `def` functions on a sync Redis client (they run in the thread pool), except
the two that wait on a job's event stream (`/v1/jobs/{id}/events`, `/v1/chat/completions`):
those are `async` on the asyncio Redis client (`api.events`), so a long wait holds no thread.
A background thread runs the job reaper (lease expiry, outbox re-sends) every few seconds.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from celery import Celery
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.metrics import Info

from api import errors, serving_metrics
from api.deps import make_limiter
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


def instrument(app: FastAPI, metrics: Metrics) -> None:
    """Requests and latency per route template, by `prometheus-fastapi-instrumentator` (its ASGI
    wrapper; our metric names and labels). Latency runs to the end of a streamed response."""

    def record(info: Info) -> None:
        route = "unmatched" if info.modified_handler == "none" else info.modified_handler
        metrics.requests.labels(info.method, route, info.modified_status).inc()
        metrics.latency.labels(info.method, route).observe(info.modified_duration)

    Instrumentator(should_group_status_codes=False, registry=metrics.registry).add(
        record
    ).instrument(app)


class UploadLimit:
    """ASGI middleware: an upload whose Content-Length is over the limit is refused (413) before
    its body is read."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] == "http"
            and scope["path"] == "/v1/documents"
            and scope["method"] == "POST"
            and self._too_large(scope)
        ):
            response = errors.error_response(
                413,
                f"the request is larger than the limit of {self.settings.max_upload_bytes} bytes",
                code="file_too_large",
            )
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)

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
    app.state.limiter = make_limiter(settings, app.state.jobs)
    app.state.metrics = Metrics()
    serving_metrics.register(app.state.metrics.registry, app.state.jobs)
    app.state.log = log
    errors.install(app)
    for module in (documents, jobs, openai, health):
        app.include_router(module.router)
    app.add_middleware(UploadLimit, settings=settings)
    instrument(app, app.state.metrics)
    return app
