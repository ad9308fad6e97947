"""Request dependencies as `Annotated` aliases: the seams tests override.

Authentication: when `LONGCTX_API_KEYS` is set, every /v1 route needs `Authorization: Bearer
<key>`; health, readiness and metrics stay open for probes. Rate limit: a fixed one-minute
window per client (API key, or address when keys are off) counted in Redis, so it holds across
API processes.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
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


def rate_limit(
    principal: Annotated[str, Depends(get_principal)], settings: SettingsDep, jobs: JobsDep
) -> str:
    limit = settings.rate_limit_per_minute
    if limit > 0:
        window = int(time.time() // 60)
        key = jobs.key("rate", principal, str(window))
        pipe = jobs.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 61)
        count = pipe.execute()[0]
        if count > limit:
            retry = str(60 - int(time.time()) % 60)
            raise ApiError(
                429,
                f"rate limit of {limit} requests per minute reached",
                code="rate_limited",
                headers={"Retry-After": retry},
            )
    return principal


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


def job_view(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json")
