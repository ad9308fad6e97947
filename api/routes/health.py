"""Probes and metrics: /healthz (the process answers), /readyz (Redis answers and a worker is
alive; 503 otherwise), /metrics (Prometheus text format: requests and latency per route, jobs
accepted per kind, messages waiting per queue, live workers)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import JobsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(jobs: JobsDep) -> Any:
    try:
        jobs.redis.ping()
        workers = jobs.live_workers()
    except Exception as exc:  # any Redis trouble means not ready
        return JSONResponse(
            {"status": "unavailable", "redis": str(exc), "workers": {}}, status_code=503
        )
    queues = sorted({q for qs in workers.values() for q in qs})
    ready = bool(workers)
    body = {
        "status": "ready" if ready else "no_workers",
        "redis": "ok",
        "workers": workers,
        "queues": queues,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, jobs: JobsDep) -> PlainTextResponse:
    gauges = request.app.state.metrics
    try:
        for queue in ("gpu", "cpu"):
            gauges.queue_length.labels(queue).set(jobs.redis.llen(queue))  # Celery's list per queue
        gauges.live_workers.set(len(jobs.live_workers()))
    except Exception:  # Redis away: report the request counters anyway
        pass
    return PlainTextResponse(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
