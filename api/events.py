"""Following a job's event stream (Redis XREAD) on the asyncio Redis client, and sending it as
server-sent events with `sse-starlette`.

A client that follows a job (an SSE relay, a chat completion waiting for its result) holds an
`EventReader`: its own asyncio connection, so a wait of minutes holds a socket, not a thread of
the pool. `sse` wraps an event iterator in an `EventSourceResponse`: ids are the Redis stream
ids (a client resumes with `Last-Event-ID`), and a `: keep-alive` comment goes out every
`sse_keepalive_s` of silence.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from sse_starlette import EventSourceResponse, ServerSentEvent

from workers.contracts import TERMINAL, Job
from workers.jobstore import JobStore, events_from_reply, job_from_hash

Event = tuple[str, str, Any]  # (stream id, type, data)


class EventReader:
    """A job's record and events, read on one asyncio Redis connection; `aclose()` when done."""

    def __init__(self, jobs: JobStore):
        settings = jobs.settings
        self.jobs = jobs
        self.redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s + 10,  # above the longest XREAD block
        )

    async def get(self, job_id: str) -> Job:
        return job_from_hash(job_id, await self.redis.hgetall(self.jobs.job_key(job_id)))

    async def read(self, job_id: str, after: str, block_ms: int) -> list[Event]:
        key = self.jobs.job_key(job_id, "events")
        return events_from_reply(await self.redis.xread({key: after}, count=500, block=block_ms))

    async def aclose(self) -> None:
        await self.redis.aclose()


async def follow(
    reader: EventReader,
    job_id: str,
    after: str = "0-0",
    *,
    block_ms: int = 5000,
    deadline: float | None = None,
) -> AsyncIterator[Event | None]:
    """Yield events until the `done` event; None after each quiet `block_ms`.

    A job that is final but whose stream lost its `done` event (trimmed, expired) still ends
    the iteration with a `done` built from the record. Stops silently at `deadline`.
    """
    while deadline is None or time.monotonic() < deadline:
        events = await reader.read(job_id, after, block_ms)
        if not events:
            job = await reader.get(job_id)
            if job.status in TERMINAL:
                error = job.error.model_dump() if job.error else None
                yield (
                    after,
                    "done",
                    {"status": job.status.value, "result": job.result, "error": error},
                )
                return
            yield None
            continue
        for event in events:
            after = event[0]
            yield event
            if event[1] == "done":
                return


def message(event_id: str | None, event_type: str | None, data: Any) -> ServerSentEvent:
    text = data if isinstance(data, str) else json.dumps(data)
    return ServerSentEvent(text, id=event_id, event=event_type)


def sse(messages: AsyncIterator[ServerSentEvent], keepalive_s: float) -> EventSourceResponse:
    return EventSourceResponse(
        messages,
        ping=keepalive_s,
        ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"),
        sep="\n",
        headers={"Cache-Control": "no-cache"},
    )
