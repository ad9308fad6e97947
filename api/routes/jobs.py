"""Job-creating routes (QA, agent jobs, summaries) and the job resource (status, events, cancel).

Every creating route answers 202 with the job record and a `Location`; an `Idempotency-Key`
seen before returns that job again (header `Idempotent-Replayed: true`), never a second job.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Query, Request, Response
from sse_starlette import EventSourceResponse

from api.deps import IdempotencyKey, JobsDep, Principal, SettingsDep, submit
from api.errors import ApiError
from api.events import EventReader, follow, message, sse
from api.schemas import JobPublic, job_public
from workers.contracts import (
    AgentRequest,
    JobKind,
    JobStatus,
    QARequest,
    SummarizeRequest,
)
from workers.jobstore import JobStore

router = APIRouter(prefix="/v1", tags=["jobs"])
JobId = Annotated[str, Path(min_length=1, max_length=100)]


def check_documents(jobs: JobStore, document_ids: list[str] | None, collection: str | None) -> None:
    """Unknown documents or an empty collection are the client's mistake: 404 / 422 now, not a failed job later."""
    for document_id in document_ids or []:
        if jobs.get_document(document_id) is None:
            raise ApiError(404, f"no document with id {document_id!r}", code="document_not_found")
    if not document_ids and not jobs.list_documents(collection):
        where = f"collection {collection!r}" if collection else "the store"
        raise ApiError(422, f"{where} has no documents yet: upload some first", code="no_documents")


@router.post("/qa", status_code=202, response_model=JobPublic)
def create_qa(
    body: QARequest,
    request: Request,
    response: Response,
    principal: Principal,
    jobs: JobsDep,
    key: IdempotencyKey = None,
) -> Any:
    """Ask a question over a collection or given documents; the answer cites numbered spans."""
    check_documents(jobs, body.document_ids, body.collection)
    return job_public(submit(request, response, JobKind.qa, body, principal, key))


@router.post("/agent/jobs", status_code=202, response_model=JobPublic)
def create_agent_job(
    body: AgentRequest,
    request: Request,
    response: Response,
    principal: Principal,
    key: IdempotencyKey = None,
) -> Any:
    """Run the tool-using agent on a task; its steps stream as `step` events."""
    if "python" in body.tools and not request.app.state.settings.enable_python_tool:
        raise ApiError(
            400,
            "the python tool is off on this server (LONGCTX_ENABLE_PYTHON_TOOL)",
            code="tool_disabled",
        )
    return job_public(submit(request, response, JobKind.agent, body, principal, key))


@router.post("/summaries", status_code=202, response_model=JobPublic)
def create_summaries(
    body: SummarizeRequest,
    request: Request,
    response: Response,
    principal: Principal,
    jobs: JobsDep,
    key: IdempotencyKey = None,
) -> Any:
    """Summarize a batch of documents (whole when they fit the window, map-reduce otherwise)."""
    check_documents(jobs, body.document_ids, None)
    return job_public(submit(request, response, JobKind.summarize, body, principal, key))


@router.get("/jobs/{job_id}", response_model=JobPublic)
def get_job(job_id: JobId, jobs: JobsDep, _: Principal) -> Any:
    """Status, progress, result or error of a job."""
    return job_public(jobs.get(job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: JobId, jobs: JobsDep, _: Principal) -> Any:
    """Cancel a job: at once when queued; a running job stops at its next decode step."""
    job = jobs.get(job_id)
    if job.status in (JobStatus.succeeded, JobStatus.failed):
        raise ApiError(409, f"job {job_id} already {job.status.value}", code="job_finished")
    return job_public(jobs.request_cancel(job_id))


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def job_events(
    job_id: JobId,
    jobs: JobsDep,
    settings: SettingsDep,
    _: Principal,
    after: Annotated[
        str | None,
        Query(max_length=40, pattern=r"^\d+-\d+$", description="resume after this event id"),
    ] = None,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=40, pattern=r"^\d+-\d+$")
    ] = None,
) -> EventSourceResponse:
    """Server-sent events of a job (status, token, step, progress, document, done), from the start
    or after `Last-Event-ID`; the stream ends after `done`."""
    reader = EventReader(jobs)
    try:
        await reader.get(job_id)  # 404 before the stream starts
    except BaseException:
        await reader.aclose()
        raise

    async def stream():
        try:
            async for event in follow(reader, job_id, after or last_event_id or "0-0"):
                if event is not None:  # quiet spells: sse-starlette sends the keep-alives
                    yield message(*event)
        finally:
            with anyio.CancelScope(shield=True):  # a client that left cancels this generator
                await reader.aclose()

    return sse(stream(), settings.sse_keepalive_s)
