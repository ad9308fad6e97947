"""Errors as HTTP answers, all in OpenAI's shape: `{"error": {"message", "type", "code"}}`.

Redis (or the broker) away is a 503 with `Retry-After`, never a 500: the client may retry, and
the API recovers by itself when Redis is back.
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.jobstore import IdempotencyConflict, JobNotFound

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, *, code: str | None = None, headers: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers


def error_response(
    status: int, message: str, *, code: str | None = None, headers: dict | None = None, **extra
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "code": code,
            **extra,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.message, code=exc.code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        return error_response(
            exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        details = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        if any(d["type"] == "json_invalid" for d in details):
            return error_response(400, "the request body is not valid JSON", code="json_invalid")
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p != "body") or "request"
        return error_response(
            422, f"{where}: {first['msg']}", code="validation_error", details=details
        )

    @app.exception_handler(JobNotFound)
    async def _no_job(_: Request, exc: JobNotFound):
        return error_response(
            404, f"no job with id {exc} (unknown or expired)", code="job_not_found"
        )

    @app.exception_handler(IdempotencyConflict)
    async def _conflict(_: Request, exc: IdempotencyConflict):
        return error_response(409, str(exc), code="idempotency_key_reused")

    async def _unavailable(_: Request, exc: Exception):
        log.warning("Redis unavailable: %s", exc)
        return error_response(
            503,
            f"the job store (Redis) is unavailable: {exc}",
            code="redis_unavailable",
            headers={"Retry-After": "2"},
        )

    for cls in (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.BusyLoadingError,
        OperationalError,
    ):
        app.add_exception_handler(cls, _unavailable)
