"""OpenAI-compatible `/v1/chat/completions` (streaming and tools) and `/v1/models`.

A chat completion is a GPU job like any other; this route waits for it on the asyncio Redis
client (`api.events.EventReader`), so a waiting client holds a socket, not a thread. Streaming waits for the
job's first output before answering, so a prompt over the window (found by the worker before
any work) is still a 400, not an error inside a 200 stream. A client that goes away cancels
its job.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sse_starlette import ServerSentEvent

from api.deps import IdempotencyKey, JobsDep, Principal, SettingsDep, submit
from api.errors import ApiError, error_response
from api.events import Event, EventReader, follow, message, sse
from workers.contracts import ChatRequest, Job, JobKind, Settings
from workers.jobstore import JobStore

router = APIRouter(prefix="/v1", tags=["openai"])


def model_card(settings: Settings) -> dict[str, Any]:
    return {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "longctx"}


@router.get("/models")
def list_models(settings: SettingsDep, _: Principal) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(settings)]}


@router.get("/models/{model_id}")
def get_model(model_id: str, settings: SettingsDep, _: Principal) -> dict[str, Any]:
    if model_id != settings.model_name:
        raise ApiError(
            404,
            f"the model {model_id!r} does not exist; this server has {settings.model_name!r}",
            code="model_not_found",
        )
    return model_card(settings)


def check_chat(body: ChatRequest, settings: Settings) -> None:
    if body.model != settings.model_name:
        raise ApiError(
            404,
            f"the model {body.model!r} does not exist; this server has {settings.model_name!r}",
            code="model_not_found",
        )
    wanted = body.max_completion_tokens or body.max_tokens or 0
    if wanted > settings.max_new_tokens_limit:
        raise ApiError(
            400,
            f"max_tokens {wanted} is over this server's limit of {settings.max_new_tokens_limit}",
            code="max_tokens_too_large",
        )
    size = len(json.dumps(body.messages)) + len(json.dumps(body.tools or []))
    if size > settings.max_prompt_chars:
        raise ApiError(
            400,
            f"the prompt has {size} characters, over the limit of {settings.max_prompt_chars}",
            code="context_length_exceeded",
        )


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatRequest,
    request: Request,
    response: Response,
    principal: Principal,
    settings: SettingsDep,
    jobs: JobsDep,
    key: IdempotencyKey = None,
) -> Any:
    """Chat completion in OpenAI's format; `stream: true` answers with server-sent chunks."""
    check_chat(body, settings)
    job = await run_in_threadpool(submit, request, response, JobKind.chat, body, principal, key)
    reader = EventReader(jobs)
    deadline = time.monotonic() + settings.sync_wait_s
    events = follow(reader, job.id, block_ms=2000, deadline=deadline)
    streaming = False
    try:
        head = await _first_output(events, jobs, job)
        if head[1] == "done":
            return _final_response(head[2], job)
        if not body.stream:
            async for event in events:
                if event is not None and event[1] == "done":
                    return _final_response(event[2], job)
            return await _timed_out(jobs, job)
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        chunks = _chunks(job, settings.model_name, head, events, jobs, reader, include_usage)
        streaming = True
        return sse(chunks, settings.sse_keepalive_s)
    finally:
        if not streaming:  # else the stream closes it when it ends
            await reader.aclose()


async def _first_output(events: AsyncIterator[Event | None], jobs: JobStore, job: Job) -> Event:
    async for event in events:
        if event is not None and event[1] in ("token", "tool_call", "done"):
            return event
    await run_in_threadpool(jobs.request_cancel, job.id)
    raise ApiError(504, "the model did not answer in time", code="timeout")


async def _timed_out(jobs: JobStore, job: Job) -> JSONResponse:
    await run_in_threadpool(jobs.request_cancel, job.id)
    return error_response(
        504, "the model did not finish in time; the job was cancelled", code="timeout"
    )


def _final_response(done: dict[str, Any], job: Job) -> Any:
    if done["status"] == "succeeded":
        return done["result"]
    error = done.get("error") or {}
    if done["status"] == "failed" and error.get("user_error"):
        code = (
            "context_length_exceeded"
            if error.get("type") == "PromptTooLongError"
            else "invalid_request"
        )
        return error_response(400, error.get("message", "invalid request"), code=code)
    if done["status"] == "cancelled":
        return error_response(409, f"the job {job.id} was cancelled", code="cancelled")
    return error_response(
        500, f"the worker failed: {error.get('type')}: {error.get('message')}", code="worker_error"
    )


def _chunk(
    job: Job,
    model: str,
    delta: dict[str, Any],
    finish: str | None = None,
    usage: dict | None = None,
) -> ServerSentEvent:
    choices = (
        []
        if usage is not None
        else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    )
    body = {
        "id": "chatcmpl-" + job.id,
        "object": "chat.completion.chunk",
        "created": int(job.created_at),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return message(None, None, body)


async def _chunks(
    job: Job,
    model: str,
    head: Event,
    events: AsyncIterator[Event | None],
    jobs: JobStore,
    reader: EventReader,
    include_usage: bool,
) -> AsyncIterator[ServerSentEvent]:
    finished = False
    calls = 0
    try:
        yield _chunk(job, model, {"role": "assistant", "content": ""})
        async for event in _prepend(head, events):
            if event is None:  # quiet: sse-starlette sends the keep-alives
                continue
            _id, kind, data = event
            if kind == "token":
                yield _chunk(job, model, {"content": data["text"]})
            elif kind == "tool_call":
                yield _chunk(job, model, {"tool_calls": [{"index": calls, **data}]})
                calls += 1
            elif kind == "done":
                finished = True
                if data["status"] != "succeeded":
                    text = (data.get("error") or {}).get("message") or f"job {data['status']}"
                    yield message(None, None, {"error": {"message": text, "type": "server_error"}})
                else:
                    result = data["result"]
                    yield _chunk(job, model, {}, finish=result["choices"][0]["finish_reason"])
                    if include_usage:
                        yield _chunk(job, model, {}, usage=result["usage"])
        yield message(None, None, "[DONE]")
    finally:
        with anyio.CancelScope(shield=True):  # a client that left cancels this generator
            await reader.aclose()
            if not finished:  # the client left, or the wait ran out
                with contextlib.suppress(Exception):  # best effort: Redis may be what failed
                    await run_in_threadpool(jobs.request_cancel, job.id)


async def _prepend(head: Event, events: AsyncIterator[Event | None]) -> AsyncIterator[Event | None]:
    yield head
    async for event in events:
        yield event
