"""The Celery tasks: thin, like web views. Each takes a job id, claims the job, calls one domain
function with the job's request and stores the outcome in the job record.

The message carries only the job id; the request lives in the job record, so a redelivered
message runs the same job again (a job claimed too often is failed instead: no loops), and a
job that is already final (cancelled while queued, reaped) is left alone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded

from workers.celery_app import app, holder_is_dead, node_name, worker_name
from workers.contracts import (
    TASK_NAMES,
    AgentRequest,
    DeleteDocumentRequest,
    DocumentRecord,
    IngestRequest,
    JobError,
    JobKind,
    JobStatus,
    QARequest,
    SummarizeRequest,
)
from workers.runtime import (
    IN_FLIGHT,
    IN_FLIGHT_LOCK,
    JobContext,
    Runtime,
    get_runtime,
    until_redis_answers,
)

log = logging.getLogger(__name__)

Handler = Callable[[Runtime, JobContext, Any], Any]


def run_job(job_id: str, handler: Handler) -> dict[str, str]:
    """Claim and run one job in this thread; a second message for a job this process is
    running already (a duplicate delivery) is dropped, since a claim by the same worker name
    would otherwise take it over."""
    with IN_FLIGHT_LOCK:
        duplicate = job_id in IN_FLIGHT
        IN_FLIGHT.add(job_id)
    if duplicate:
        log.info("job %s not run: running in this process already", job_id)
        return {"job": job_id, "status": "held:" + worker_name()}
    try:
        return _claim_and_run(job_id, handler)
    finally:
        with IN_FLIGHT_LOCK:
            IN_FLIGHT.discard(job_id)


def _claim_and_run(job_id: str, handler: Handler) -> dict[str, str]:
    runtime = get_runtime()
    jobs = runtime.jobs
    claim = partial(jobs.claim, job_id, worker_name(), holder_is_dead=holder_is_dead)
    try:
        status = until_redis_answers(claim, patience_s=30)
    except redis.exceptions.RedisError as exc:
        raise Reject(f"Redis away: {exc}", requeue=True) from exc
    if status != "running":
        log.info("job %s not run: %s", job_id, status)
        return {"job": job_id, "status": status}
    job = jobs.get(job_id)
    with contextlib.suppress(redis.exceptions.RedisError):
        jobs.remember_prefix(job, node_name())  # follow-ups with this prefix come here
    with JobContext(jobs, job) as ctx:
        outcome = _outcome(runtime, ctx, handler, job)
    until_redis_answers(lambda: jobs.finish(job_id, outcome[0], **outcome[1]))
    return {"job": job_id, "status": until_redis_answers(lambda: jobs.get(job_id).status.value)}


def _time_limit() -> tuple[JobStatus, dict[str, Any]]:
    error = JobError(type="TimeLimitExceeded", message="the job ran past its time limit")
    return JobStatus.failed, {"error": error}


def _outcome(
    runtime: Runtime, ctx: JobContext, handler: Handler, job: Any
) -> tuple[JobStatus, dict[str, Any]]:
    """Run the handler; the final status and what to store with it."""
    try:
        result = handler(runtime, ctx, runtime.jobs.request_of(job))
    except SoftTimeLimitExceeded:  # prefork: Celery's own soft limit
        return _time_limit()
    except Exception as exc:
        if ctx.timed_out:
            return _time_limit()
        user_error = bool(getattr(exc, "user_error", False))
        if not user_error:
            log.exception("job %s failed", job.id)
        message = str(exc) or type(exc).__name__
        return JobStatus.failed, {
            "error": JobError(type=type(exc).__name__, message=message, user_error=user_error)
        }
    if ctx.timed_out:  # threads pool: the job context's own soft limit
        return _time_limit()
    return (JobStatus.cancelled if ctx.should_stop() else JobStatus.succeeded), {"result": result}


# ---- handlers: one domain call each ----


def ingest(runtime: Runtime, ctx: JobContext, request: IngestRequest) -> dict[str, Any]:
    data = (runtime.settings.data_dir / request.path).read_bytes()
    ctx.progress(0.1, f"reading {request.filename}")
    metadata = {"sha256": request.sha256, "upload": request.path}
    info = runtime.store().add_bytes(data, request.filename, request.collection, metadata)
    record = DocumentRecord(
        id=info.id,
        source=request.filename,
        filename=request.filename,
        collection=request.collection,
        sha256=request.sha256,
        size=request.size,
        kind=info.kind,
        title=info.title,
        chars=info.n_chars,
        chunks=info.n_chunks,
        pages=info.n_pages,
        created_at=ctx.job.created_at,
    )
    runtime.jobs.put_document(record)
    return {"document": record.model_dump(mode="json")}


def delete_document(
    runtime: Runtime, ctx: JobContext, request: DeleteDocumentRequest
) -> dict[str, Any]:
    from retrieval.errors import UnknownDocumentError

    try:
        runtime.store().delete(request.document_id)
    except UnknownDocumentError:
        pass  # gone already (a redelivered delete): removing the record is all that is left
    runtime.jobs.remove_document(request.document_id)
    return {"deleted": request.document_id}


def qa(runtime: Runtime, ctx: JobContext, request: QARequest) -> dict[str, Any]:
    from agent.qa import answer_question

    answer = answer_question(
        runtime.engine(),
        runtime.store(),
        request.question,
        collection=request.collection,
        document_ids=request.document_ids,
        mode=request.mode,
        max_new_tokens=request.max_new_tokens,
        top_k=request.top_k,
        on_text=ctx.on_text,
        should_stop=ctx.should_stop,
    )
    return answer.as_dict()


def agent_job(runtime: Runtime, ctx: JobContext, request: AgentRequest) -> dict[str, Any]:
    from dataclasses import asdict

    from agent import EngineChat, builtin_tools, run_agent
    from model_core import SamplingParams

    params = SamplingParams(max_new_tokens=request.max_new_tokens, temperature=0.0)
    needs_store = {"search", "read"} & set(request.tools)
    store = runtime.store() if needs_store else None
    python = runtime.settings.enable_python_tool
    tools = builtin_tools(store, dict.fromkeys(request.tools), python=python,
                          collection=request.collection)

    def on_step(step: Any) -> None:
        ctx.emit("step", asdict(step))
        ctx.progress((step.index + 1) / request.max_steps, f"step {step.index + 1}")

    result = run_agent(
        EngineChat(runtime.engine(), params=params),
        request.task,
        tools,
        max_steps=request.max_steps,
        should_stop=ctx.should_stop,
        on_step=on_step,
        on_text=ctx.on_text,
        params=params,
    )
    return result.to_dict()


def summarize(runtime: Runtime, ctx: JobContext, request: SummarizeRequest) -> dict[str, Any]:
    from agent.summarize import summarize_documents

    jobs = runtime.jobs
    total = len(request.document_ids)

    def on_document(document_id: str, summary: dict[str, Any]) -> None:
        jobs.save_part(ctx.job.id, document_id, summary)
        ctx.emit("document", {"document": document_id, **summary})
        done = len(jobs.parts(ctx.job.id))
        ctx.progress(done / total, f"{done} of {total} documents summarized")

    finished = jobs.parts(ctx.job.id)
    summaries = summarize_documents(
        runtime.engine(),
        runtime.store(),
        request.document_ids,
        finished=finished,
        on_document=on_document,
        max_new_tokens=request.max_new_tokens,
        instructions=request.instructions,
        max_input_tokens=request.max_input_tokens,
        on_text=ctx.on_text,
        should_stop=ctx.should_stop,
    )
    return {"documents": summaries, "resumed": sorted(finished)}


def chat(runtime: Runtime, ctx: JobContext, request: Any) -> dict[str, Any]:
    from workers.chat import complete_chat

    settings = runtime.settings
    return complete_chat(
        runtime.engine(),
        request,
        ctx,
        model_name=settings.model_name,
        max_prompt_tokens=settings.max_prompt_tokens,
    )


HANDLERS: dict[JobKind, Handler] = {
    JobKind.ingest: ingest,
    JobKind.delete_document: delete_document,
    JobKind.qa: qa,
    JobKind.agent: agent_job,
    JobKind.summarize: summarize,
    JobKind.chat: chat,
}


def _register(kind: JobKind) -> None:
    handler = HANDLERS[kind]

    @app.task(name=TASK_NAMES[kind])
    def task(job_id: str) -> dict[str, str]:
        return run_job(job_id, handler)


for _kind in JobKind:
    _register(_kind)
