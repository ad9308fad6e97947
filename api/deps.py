"""Request dependencies as `Annotated` aliases: the seams tests override.

Authentication: when `LONGCTX_API_KEYS` is set, every /v1 route needs `Authorization: Bearer
<key>`; health, readiness and metrics stay open for probes. Rate limit: a moving one-minute
window per client (API key, or address when keys are off) kept in Redis by `limits`, so it holds
across API processes and allows no burst of twice the limit at a window's edge (as a fixed
window does); a refusal is a 429 with `Retry-After` (seconds until the oldest counted request
leaves the window).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from typing import Annotated

from fastapi import Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter, RateLimiter
from pydantic import BaseModel

from api.errors import ApiError
from workers.contracts import Job, JobKind, Settings
from workers.jobstore import JobStore, dispatch


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_jobs(request: Request) -> JobStore:
    return request.app.state.jobs


SettingsDep = Annotated[Settings, Depends(get_settings)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]

_bearer = HTTPBearer(
    auto_error=False, description="An API key, when the server has keys configured"
)


def get_principal(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    keys = settings.api_key_list()
    if not keys:
        return "ip-" + (request.client.host if request.client else "unknown")
    if credentials is None:
        raise ApiError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = credentials.credentials.encode()
    if not any(hmac.compare_digest(given, key.encode()) for key in keys):
        raise ApiError(
            401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )
    return "key-" + hashlib.sha256(given).hexdigest()[:16]


def get_limiter(request: Request) -> RateLimiter:
    return request.app.state.limiter


def rate_limit(
    principal: Annotated[str, Depends(get_principal)],
    settings: SettingsDep,
    limiter: Annotated[RateLimiter, Depends(get_limiter)],
) -> str:
    limit = settings.rate_limit_per_minute
    if limit > 0:
        item = RateLimitItemPerMinute(limit)
        if not limiter.hit(item, principal):
            reset = limiter.get_window_stats(item, principal).reset_time
            retry = max(1, math.ceil(reset - time.time()))
            raise ApiError(
                429,
                f"rate limit of {limit} requests per minute reached",
                code="rate_limited",
                headers={"Retry-After": str(retry)},
            )
    return principal


def make_limiter(settings: Settings, jobs: JobStore) -> RateLimiter:
    """A moving one-minute window per client in Redis (shared by every API process), on the
    job store's connection pool."""
    storage = RedisStorage(
        settings.redis_url,
        connection_pool=jobs.redis.connection_pool,
        key_prefix=jobs.key("rate"),
    )
    return MovingWindowRateLimiter(storage)


Principal = Annotated[str, Depends(rate_limit)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retrying with the same key returns the same job",
    ),
]


def submit(
    request: Request,
    response: Response,
    kind: JobKind,
    body: BaseModel,
    principal: str,
    idempotency_key: str | None,
) -> Job:
    """Record a job and send its message; a repeated Idempotency-Key returns the first job.

    The record is written first and the message second; if sending fails the job stays in the
    outbox and the reaper sends it, so an accepted (202) job is never lost.
    """
    jobs: JobStore = request.app.state.jobs
    job, created = jobs.create(kind, body, idempotency_key=idempotency_key, principal=principal)
    if created:
        try:
            dispatch(request.app.state.celery, jobs, job)
        except Exception as exc:  # noqa: BLE001 - left in the outbox for the reaper
            request.app.state.log.warning("job %s recorded, message not sent yet: %s", job.id, exc)
        request.app.state.metrics.jobs_submitted.labels(kind.value).inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job
