"""HTTP schemas kept apart from the stored records (as full-stack-fastapi-template keeps them).

`JobPublic` is what a client sees of a job: status, progress, result, error and times. The
stored `workers.contracts.Job` also holds the full request, the delivery count and the name of
the worker process that claimed it; those are the service's business, not the client's.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from workers.contracts import Job, JobError, JobKind, JobStatus


class JobPublic(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    progress: float = 0.0
    progress_message: str | None = None
    result: Any = None
    error: JobError | None = None
    cancel_requested: bool = False
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float


def job_public(job: Job) -> JobPublic:
    return JobPublic.model_validate(job.model_dump(include=set(JobPublic.model_fields)))
