"""What the API and the workers agree on: settings, task names, job records, events, Redis keys.

This is the only project module the API imports (an import-linter contract keeps it so): it
depends on pydantic, pydantic-settings and redis, never on the model, the indexes or Celery's
worker side.

A job lives in Redis as one hash `{prefix}:job:{id}` whose fields hold JSON values, plus:
- `{prefix}:job:{id}:events`  a stream of events (status, token, step, progress, document, done);
- `{prefix}:job:{id}:cancel`  the cooperative cancel flag the worker polls between decode steps;
- `{prefix}:job:{id}:parts`   finished pieces of a batch (summaries per document), so a batch
  that is redelivered after a worker died does not redo them;
- `{prefix}:leases`           a sorted set job id -> lease expiry, refreshed by the worker's
  heartbeat; the reaper fails running jobs whose lease ran out (their worker died and the
  message was not redelivered);
- `{prefix}:outbox`           a sorted set job id -> creation time for jobs whose Celery message
  is not yet known to be sent; the reaper sends them again (an accepted job is never lost
  because the broker hiccuped between the record and the message).
Status moves only forward (queued -> running -> succeeded | failed | cancelled); the moves are
Lua scripts, so two processes never both finish one job.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of the API and the workers, from `LONGCTX_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="LONGCTX_", extra="ignore", protected_namespaces=())

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "longctx"
    data_dir: Path = Path("data")
    model_path: str | None = None  # None: the offline default (SmolLM2-135M GGUF)
    model_name: str = "longctx"  # the id /v1/models reports and chat requests may name
    engine_factory: str = "model_core:load_engine"  # "module:function(path, dtype=, device=)"
    device: str = "cpu"
    dtype: str = "float32"
    api_keys: str = ""  # comma-separated bearer keys; empty: no authentication
    max_upload_bytes: int = 20 * 1024 * 1024
    max_prompt_chars: int = 1_000_000  # cheap bound in the API; the worker checks the token window
    max_new_tokens_limit: int = 4096
    rate_limit_per_minute: int = 600  # requests per client per minute; 0: unlimited
    job_ttl_s: int = 7 * 24 * 3600
    visibility_timeout_s: int = 4 * 3600  # above the hard time limit: no redelivery of live jobs
    task_soft_time_limit_s: int = 3 * 3600
    task_time_limit_s: int = 3 * 3600 + 300
    result_expires_s: int = 24 * 3600
    lease_s: float = 60.0  # a running job whose worker is silent this long is failed
    heartbeat_s: float = 5.0
    cancel_poll_s: float = 0.25
    reaper_interval_s: float = 5.0
    outbox_grace_s: float = 10.0
    max_attempts: int = 3  # deliveries of one job before it is failed (no redelivery loops)
    sync_wait_s: float = 600.0  # how long /v1/chat/completions waits for its job
    redis_timeout_s: float = 5.0

    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()


class JobKind(str, Enum):
    ingest = "ingest"
    delete_document = "delete_document"
    qa = "qa"
    agent = "agent"
    summarize = "summarize"
    chat = "chat"


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
TASK_NAMES: dict[JobKind, str] = {kind: f"longctx.{kind.value}" for kind in JobKind}
QUEUES: dict[JobKind, str] = {
    JobKind.ingest: "cpu",
    JobKind.delete_document: "cpu",
    JobKind.qa: "gpu",
    JobKind.agent: "gpu",
    JobKind.summarize: "gpu",
    JobKind.chat: "gpu",
}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the producer (API) and the consumers (workers)."""
    from kombu import Queue

    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "task_queues": (Queue("gpu"), Queue("cpu")),
        "task_default_queue": "cpu",
        "task_routes": {TASK_NAMES[kind]: {"queue": QUEUES[kind]} for kind in JobKind},
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,  # a crash mid-task redelivers the message
        "task_reject_on_worker_lost": True,  # ...even when the child was killed by a signal
        "worker_prefetch_multiplier": 1,  # one long GPU job must not hold others back
        "task_track_started": True,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "result_expires": settings.result_expires_s,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # keep reconnecting while Redis is away
        "broker_connection_timeout": 2,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
    }


# ---- requests carried by jobs (validated by the API, read again by the worker) ----


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str  # relative to data_dir; written by the API, never chosen by the client
    filename: str
    collection: str = "default"
    sha256: str
    size: int


class DeleteDocumentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document_id: str


class QARequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=20_000)
    collection: str | None = None
    document_ids: list[str] | None = Field(default=None, max_length=1000)
    mode: Literal["auto", "stuff", "rag"] = "auto"
    max_new_tokens: int = Field(default=256, ge=1, le=8192)
    top_k: int = Field(default=6, ge=1, le=100)


class AgentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str = Field(min_length=1, max_length=50_000)
    collection: str | None = None
    document_ids: list[str] | None = Field(default=None, max_length=1000)
    max_steps: int = Field(default=6, ge=1, le=32)
    max_new_tokens: int = Field(default=256, ge=1, le=8192)


class SummarizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document_ids: list[str] = Field(min_length=1, max_length=1000)
    max_new_tokens: int = Field(default=200, ge=1, le=8192)
    instructions: str | None = Field(default=None, max_length=2000)

    @field_validator("document_ids")
    @classmethod
    def _unique(cls, ids: list[str]) -> list[str]:
        return list(dict.fromkeys(ids))


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat completion request the engine honours; unknown fields pass."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)


REQUEST_TYPES: dict[JobKind, type[BaseModel]] = {
    JobKind.ingest: IngestRequest,
    JobKind.delete_document: DeleteDocumentRequest,
    JobKind.qa: QARequest,
    JobKind.agent: AgentRequest,
    JobKind.summarize: SummarizeRequest,
    JobKind.chat: ChatRequest,
}


# ---- job records ----


class JobError(BaseModel):
    type: str
    message: str
    user_error: bool = False


class Job(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    progress: float = 0.0
    progress_message: str | None = None
    request: dict[str, Any] = {}
    result: Any = None
    error: JobError | None = None
    attempts: int = 0
    worker: str | None = None
    cancel_requested: bool = False
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float


class DocumentRecord(BaseModel):
    """What the API lists about a document; written by the ingest worker."""

    id: str
    source: str
    filename: str
    collection: str
    sha256: str
    size: int
    chars: int | None = None
    chunks: int | None = None
    pages: int | None = None
    created_at: float


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request."""


class JobNotFound(Exception):
    """No job with this id (or it expired)."""


_JOB_FIELDS = set(Job.model_fields)

# Create a job unless the idempotency key already names one.
# KEYS: job, outbox, idem (or "") ; ARGV: job id, now, ttl, fingerprint, field/value pairs...
_CREATE = """
if KEYS[3] ~= '' then
  local seen = redis.call('GET', KEYS[3])
  if seen then return {0, seen} end
  redis.call('SET', KEYS[3], cjson.encode({job=ARGV[1], fingerprint=ARGV[4]}), 'EX', ARGV[3])
end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return {1, ARGV[1]}
"""

# Claim a job for a delivery. KEYS: job, leases ; ARGV: id, now, lease_until, worker, max_attempts
# Returns the status after the claim ("running", or the terminal status to leave alone,
# or "missing", or "exhausted" when it was failed for too many deliveries).
_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
status = cjson.decode(status)
if status ~= 'queued' and status ~= 'running' then return status end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') + 1
redis.call('HSET', KEYS[1], 'attempts', tostring(attempts), 'updated_at', ARGV[2])
if attempts > tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'status', '"failed"', 'finished_at', ARGV[2],
    'error', cjson.encode({type='TooManyAttempts', user_error=false,
      message='the job was delivered ' .. attempts .. ' times; its worker died each time'}))
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'exhausted'
end
redis.call('HSET', KEYS[1], 'status', '"running"', 'worker', cjson.encode(ARGV[4]))
if not redis.call('HGET', KEYS[1], 'started_at') or redis.call('HGET', KEYS[1], 'started_at') == 'null' then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[2])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 'running'
"""

# Move a job to a terminal status if it is not final yet.
# KEYS: job, leases, outbox ; ARGV: id, now, status (JSON), allowed statuses (JSON list),
# then field/value pairs. Returns 1 when moved.
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local allowed = cjson.decode(ARGV[4])
local ok = false
for _, s in ipairs(allowed) do if cjson.decode(status) == s then ok = true end end
if not ok then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', ARGV[2], 'updated_at', ARGV[2])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex


def fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class JobStore:
    """Job records, events, cancel flags, leases and documents in Redis (sync client)."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.settings = settings
        self.prefix = settings.key_prefix
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)

    @classmethod
    def connect(cls, settings: Settings) -> JobStore:
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s + 10,  # above the longest XREAD block
            health_check_interval=10,
        )
        return cls(client, settings)

    # keys
    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def job_key(self, job_id: str, suffix: str | None = None) -> str:
        return self.key("job", job_id, suffix) if suffix else self.key("job", job_id)

    # records
    def create(
        self,
        kind: JobKind,
        request: BaseModel,
        *,
        idempotency_key: str | None = None,
        principal: str = "anonymous",
    ) -> tuple[Job, bool]:
        """Create a queued job; with an idempotency key seen before, return that job instead."""
        now = time.time()
        job_id = new_job_id()
        payload = request.model_dump(mode="json", exclude_none=True)
        print_ = fingerprint({"kind": kind.value, "request": payload})
        idem = self.key("idem", principal, hashlib.sha256(idempotency_key.encode()).hexdigest()) if idempotency_key else ""
        fields = {
            "id": job_id,
            "kind": kind.value,
            "status": JobStatus.queued.value,
            "progress": 0.0,
            "request": payload,
            "attempts": 0,
            "cancel_requested": False,
            "created_at": now,
            "updated_at": now,
        }
        argv: list[Any] = [job_id, now, self.settings.job_ttl_s, print_]
        for name, value in fields.items():
            argv += [name, json.dumps(value)]
        created, found_id = self._create(keys=[self.job_key(job_id), self.key("outbox"), idem], args=argv)
        found_id = found_id.decode() if isinstance(found_id, bytes) else found_id
        if not created:
            seen = json.loads(self.redis.get(idem) or "{}")
            if seen.get("fingerprint") not in (None, print_):
                raise IdempotencyConflict("this Idempotency-Key was already used with a different request")
            return self.get(found_id), False
        self.emit(job_id, "status", {"status": "queued"})
        return self.get(job_id), True

    def get(self, job_id: str) -> Job:
        raw = self.redis.hgetall(self.job_key(job_id))
        if not raw:
            raise JobNotFound(job_id)
        fields = {k.decode(): json.loads(v) for k, v in raw.items() if k.decode() in _JOB_FIELDS}
        return Job.model_validate(fields)

    def request_of(self, job: Job) -> BaseModel:
        return REQUEST_TYPES[job.kind].model_validate(job.request)

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        self.redis.hset(self.job_key(job_id), mapping={k: json.dumps(v) for k, v in fields.items()})

    def mark_dispatched(self, job_id: str) -> None:
        self.redis.zrem(self.key("outbox"), job_id)

    def claim(self, job_id: str, worker: str) -> str:
        now = time.time()
        status = self._claim(
            keys=[self.job_key(job_id), self.key("leases")],
            args=[job_id, now, now + self.settings.lease_s, worker, self.settings.max_attempts],
        )
        status = status.decode() if isinstance(status, bytes) else status
        if status == "running":
            self.emit(job_id, "status", {"status": "running", "worker": worker})
        elif status == "exhausted":
            self._emit_done(job_id)
        return status

    def heartbeat(self, job_id: str) -> None:
        self.redis.zadd(self.key("leases"), {job_id: time.time() + self.settings.lease_s})

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: Any = None,
        error: JobError | None = None,
        allowed_from: tuple[JobStatus, ...] = (JobStatus.queued, JobStatus.running),
    ) -> bool:
        """Move the job to a terminal status; False when it was final already."""
        argv: list[Any] = [
            job_id,
            time.time(),
            json.dumps(status.value),
            json.dumps([s.value for s in allowed_from]),
        ]
        if result is not None:
            argv += ["result", json.dumps(result)]
        if error is not None:
            argv += ["error", error.model_dump_json()]
        if status == JobStatus.succeeded:
            argv += ["progress", "1.0"]
        moved = self._finish(
            keys=[self.job_key(job_id), self.key("leases"), self.key("outbox")], args=argv
        )
        if moved:
            self._emit_done(job_id)
        return bool(moved)

    def _emit_done(self, job_id: str) -> None:
        job = self.get(job_id)
        self.emit(job_id, "done", {"status": job.status.value, "result": job.result, "error": job.error and job.error.model_dump()})

    # cancel
    def request_cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once; flag a running one for its worker to stop."""
        job = self.get(job_id)
        if job.status == JobStatus.queued and self.finish(job_id, JobStatus.cancelled, allowed_from=(JobStatus.queued,)):
            return self.get(job_id)
        if job.status in (JobStatus.queued, JobStatus.running):
            self.redis.set(self.job_key(job_id, "cancel"), "1", ex=self.settings.job_ttl_s)
            self.update(job_id, cancel_requested=True)
            self.emit(job_id, "status", {"status": job.status.value, "cancel_requested": True})
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.job_key(job_id, "cancel")))

    # events
    def emit(self, job_id: str, event_type: str, data: Any) -> None:
        key = self.job_key(job_id, "events")
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(key, {"type": event_type, "data": json.dumps(data)}, maxlen=20_000, approximate=True)
        pipe.expire(key, self.settings.job_ttl_s)
        pipe.execute()

    def read_events(self, job_id: str, after: str = "0-0", block_ms: int | None = None) -> list[tuple[str, str, Any]]:
        """Events after the stream id `after`: (event id, type, data)."""
        reply = self.redis.xread({self.job_key(job_id, "events"): after}, count=500, block=block_ms)
        events = []
        for _stream, entries in reply or []:
            for event_id, fields in entries:
                events.append((event_id.decode(), fields[b"type"].decode(), json.loads(fields[b"data"])))
        return events

    # finished pieces of a batch
    def save_part(self, job_id: str, name: str, value: Any) -> None:
        key = self.job_key(job_id, "parts")
        self.redis.hset(key, name, json.dumps(value))
        self.redis.expire(key, self.settings.job_ttl_s)

    def parts(self, job_id: str) -> dict[str, Any]:
        return {k.decode(): json.loads(v) for k, v in self.redis.hgetall(self.job_key(job_id, "parts")).items()}

    # reaper
    def reap(self, dispatch=None, now: float | None = None) -> dict[str, int]:
        """Fail running jobs whose lease ran out; re-send queued jobs whose message may be lost."""
        now = time.time() if now is None else now
        failed = resent = 0
        for raw in self.redis.zrangebyscore(self.key("leases"), "-inf", now):
            job_id = raw.decode()
            error = JobError(
                type="WorkerLost",
                message="the worker running this job stopped (its lease expired) and the job was not redelivered",
            )
            if self.finish(job_id, JobStatus.failed, error=error, allowed_from=(JobStatus.running,)):
                failed += 1
            else:
                self.redis.zrem(self.key("leases"), job_id)
        if dispatch is not None:
            stale = self.redis.zrangebyscore(self.key("outbox"), "-inf", now - self.settings.outbox_grace_s)
            for raw in stale:
                job_id = raw.decode()
                try:
                    job = self.get(job_id)
                except JobNotFound:
                    self.redis.zrem(self.key("outbox"), job_id)
                    continue
                if job.status == JobStatus.queued:
                    dispatch(job)
                    resent += 1
                self.mark_dispatched(job_id)
        return {"failed": failed, "resent": resent}

    # documents (written by the ingest worker, listed by the API)
    def put_document(self, record: DocumentRecord) -> None:
        self.redis.hset(self.key("documents"), record.id, record.model_dump_json())

    def get_document(self, document_id: str) -> DocumentRecord | None:
        raw = self.redis.hget(self.key("documents"), document_id)
        return DocumentRecord.model_validate_json(raw) if raw else None

    def list_documents(self, collection: str | None = None) -> list[DocumentRecord]:
        records = [DocumentRecord.model_validate_json(v) for v in self.redis.hvals(self.key("documents"))]
        records = [r for r in records if collection is None or r.collection == collection]
        return sorted(records, key=lambda r: r.created_at)

    def remove_document(self, document_id: str) -> bool:
        return bool(self.redis.hdel(self.key("documents"), document_id))

    def bump_store_version(self) -> int:
        return int(self.redis.incr(self.key("store_version")))

    def store_version(self) -> int:
        return int(self.redis.get(self.key("store_version")) or 0)

    # workers announce themselves so /readyz can tell whether anyone will run a job
    def announce_worker(self, name: str, queues: list[str], ttl_s: float) -> None:
        self.redis.set(self.key("worker", name), json.dumps({"queues": queues, "at": time.time()}), ex=max(1, int(ttl_s)))

    def live_workers(self) -> dict[str, list[str]]:
        workers = {}
        for key in self.redis.scan_iter(match=self.key("worker", "*"), count=100):
            raw = self.redis.get(key)
            if raw:
                workers[key.decode().rsplit(":", 1)[-1]] = json.loads(raw)["queues"]
        return workers


def dispatch(celery_app: Any, jobs: JobStore, job: Job) -> None:
    """Send the Celery message of a job (by task name: the sender never imports the task)."""
    celery_app.send_task(TASK_NAMES[job.kind], args=[job.id], queue=QUEUES[job.kind])
    jobs.mark_dispatched(job.id)
