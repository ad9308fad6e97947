"""Following a job's event stream (Redis XREAD), for SSE relays and for waiting on a result."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from workers.contracts import TERMINAL
from workers.jobstore import JobStore

Event = tuple[str, str, Any]  # (stream id, type, data)


def follow(
    jobs: JobStore,
    job_id: str,
    after: str = "0-0",
    *,
    block_ms: int = 5000,
    deadline: float | None = None,
) -> Iterator[Event | None]:
    """Yield events until the `done` event; None after each quiet `block_ms` (for keep-alives).

    A job that is final but whose stream lost its `done` event (trimmed, expired) still ends
    the iteration with a `done` built from the record. Stops silently at `deadline`.
    """
    while deadline is None or time.monotonic() < deadline:
        events = jobs.read_events(job_id, after, block_ms=block_ms)
        if not events:
            job = jobs.get(job_id)
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


def sse(event_id: str | None, event_type: str | None, data: Any) -> str:
    lines = []
    if event_id:
        lines.append(f"id: {event_id}")
    if event_type:
        lines.append(f"event: {event_type}")
    lines.append("data: " + (data if isinstance(data, str) else json.dumps(data)))
    return "\n".join(lines) + "\n\n"
