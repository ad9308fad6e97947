"""Job records, events, cancel flags, leases and the outbox in Redis, shared by API and workers.

A job lives in Redis as one hash `{prefix}:job:{id}` whose fields hold JSON values, plus:
- `{prefix}:job:{id}:events`  a stream of events (status, token, step, progress, document, done);
- `{prefix}:job:{id}:cancel`  the cooperative cancel flag the worker polls between decode steps;
- `{prefix}:job:{id}:parts`   finished pieces of a batch (summaries per document), so a batch
  that is redelivered after a worker died does not redo them;
- `{prefix}:leases`           a sorted set job id -> lease expiry, refreshed by the worker's
  heartbeat; the reaper fails running jobs whose lease ran out (their worker died and the
  message was not redelivered);
- `{prefix}:affinity:{key}`   the GPU worker that last ran a job whose prompt starts with the
  prefix `key` (`workers.contracts.prefix_key`), with an expiry: follow-ups are sent to that
  worker's own queue while it is alive and has a free slot, to the shared queue otherwise;
- `{prefix}:stats:{worker}`   the serving figures a GPU worker publishes (engine stats, slots),
  with an expiry, read by the API's /metrics;
- `{prefix}:outbox`           a sorted set job id -> time of its last send, for jobs no worker
  has claimed yet; the reaper sends them again after `requeue_after_s` (an accepted job is
  never lost, whether the message never left or was stranded by a Redis restart).
Status moves only forward (queued -> running -> succeeded | failed | cancelled); the moves are
Lua scripts, so two processes never both finish one job.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

import redis
from pydantic import BaseModel
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry

from workers.contracts import (
    QUEUES,
    REQUEST_TYPES,
    TASK_NAMES,
    TERMINAL,
    DocumentRecord,
    Job,
    JobError,
    JobKind,
    JobStatus,
    Settings,
    prefix_key,
    worker_queue,
)


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
  if seen then return {0, cjson.decode(seen).job, cjson.decode(seen).fingerprint} end
  redis.call('SET', KEYS[3], cjson.encode({job=ARGV[1], fingerprint=ARGV[4]}), 'EX', ARGV[3])
end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return {1, ARGV[1]}
"""

# Claim a job for a delivery.
# KEYS: job, leases, outbox ; ARGV: id, now, lease_until, worker, max_attempts, force
# Returns the status after the claim: "running" (claimed), a terminal status (leave it alone),
# "missing", "exhausted" (failed now: delivered too often), or "held:<worker>" when another
# worker holds a live lease (a duplicate message; `force` takes over from a holder known dead).
_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
status = cjson.decode(status)
if status ~= 'queued' and status ~= 'running' then return status end
if status == 'running' and ARGV[6] ~= '1' then
  local holder = cjson.decode(redis.call('HGET', KEYS[1], 'worker') or 'null')
  local lease = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
  if holder ~= ARGV[4] and lease > tonumber(ARGV[2]) then return 'held:' .. tostring(holder) end
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') + 1
redis.call('HSET', KEYS[1], 'attempts', tostring(attempts), 'updated_at', ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[1])
if attempts > tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'status', '"failed"', 'finished_at', ARGV[2],
    'error', cjson.encode({type='TooManyAttempts', user_error=false,
      message='the job was delivered ' .. attempts .. ' times; its worker died each time'}))
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'exhausted'
end
redis.call('HSET', KEYS[1], 'status', '"running"', 'worker', cjson.encode(ARGV[4]))
local started = redis.call('HGET', KEYS[1], 'started_at')
if not started or started == 'null' then redis.call('HSET', KEYS[1], 'started_at', ARGV[2]) end
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


# Put a running job whose worker died back in the queue (its successor on the host found it).
# KEYS: job, leases, outbox ; ARGV: id, now, dead holder (JSON). Returns 1 when requeued.
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= '"running"' then return 0 end
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'status', '"queued"', 'updated_at', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
"""
def job_from_hash(job_id: str, raw: dict[bytes, bytes]) -> Job:
    """The job record from its Redis hash (HGETALL's reply, from a sync or an asyncio client)."""
    if not raw:
        raise JobNotFound(job_id)
    fields = {k.decode(): json.loads(v) for k, v in raw.items() if k.decode() in _JOB_FIELDS}
    return Job.model_validate(fields)


def events_from_reply(reply: Any) -> list[tuple[str, str, Any]]:
    """(event id, type, data) from XREAD's reply (sync or asyncio client)."""
    return [
        (event_id.decode(), fields[b"type"].decode(), json.loads(fields[b"data"]))
        for _stream, entries in reply or []
        for event_id, fields in entries
    ]


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
        self._requeue = client.register_script(_REQUEUE)

    @classmethod
    def connect(cls, settings: Settings) -> JobStore:
        """A client that retries a failed command a few times (redis-py's `Retry`, exponential
        backoff with jitter up to 0.5 s) before the caller sees the error."""
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s + 10,  # above the longest XREAD block
            health_check_interval=10,
            retry=Retry(EqualJitterBackoff(cap=0.5, base=0.05), retries=3),
            retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
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
        idem = (
            self.key("idem", principal, hashlib.sha256(idempotency_key.encode()).hexdigest())
            if idempotency_key
            else ""
        )
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
        created, found_id, *seen_print = self._create(
            keys=[self.job_key(job_id), self.key("outbox"), idem], args=argv
        )
        if not created:
            if seen_print and seen_print[0].decode() != print_:
                raise IdempotencyConflict(
                    "this Idempotency-Key was already used with a different request"
                )
            return self.get(found_id.decode()), False
        self.emit(job_id, "status", {"status": "queued"})
        return self.get(job_id), True

    def get(self, job_id: str) -> Job:
        return job_from_hash(job_id, self.redis.hgetall(self.job_key(job_id)))

    def request_of(self, job: Job) -> BaseModel:
        return REQUEST_TYPES[job.kind].model_validate(job.request)

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        self.redis.hset(self.job_key(job_id), mapping={k: json.dumps(v) for k, v in fields.items()})

    def mark_sent(self, job_id: str) -> None:
        """The message is sent: re-send only if nobody claims the job within `requeue_after_s`."""
        self.redis.zadd(self.key("outbox"), {job_id: time.time()}, xx=True)

    def claim(self, job_id: str, worker: str, *, holder_is_dead=None) -> str:
        """Claim a job for this delivery; see `_CLAIM`. `holder_is_dead(worker)` lets a worker
        take over a job whose holder it knows died (a child on its own host, by pid)."""
        status = self._run_claim(job_id, worker, force=False)
        if status.startswith("held:") and holder_is_dead and holder_is_dead(status[5:]):
            status = self._run_claim(job_id, worker, force=True)
        if status == "running":
            self.emit(job_id, "status", {"status": "running", "worker": worker})
        elif status == "exhausted":
            self._emit_done(job_id)
        return status

    def _run_claim(self, job_id: str, worker: str, *, force: bool) -> str:
        now = time.time()
        status = self._claim(
            keys=[self.job_key(job_id), self.key("leases"), self.key("outbox")],
            args=[
                job_id,
                now,
                now + self.settings.lease_s,
                worker,
                self.settings.max_attempts,
                int(force),
            ],
        )
        return status.decode() if isinstance(status, bytes) else status

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
        self.emit(
            job_id,
            "done",
            {
                "status": job.status.value,
                "result": job.result,
                "error": job.error and job.error.model_dump(),
            },
        )

    # cancel
    def request_cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once; flag a running one for its worker to stop."""
        job = self.get(job_id)
        if job.status == JobStatus.queued and self.finish(
            job_id, JobStatus.cancelled, allowed_from=(JobStatus.queued,)
        ):
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
        pipe.xadd(
            key, {"type": event_type, "data": json.dumps(data)}, maxlen=20_000, approximate=True
        )
        pipe.expire(key, self.settings.job_ttl_s)
        pipe.execute()

    def read_events(
        self, job_id: str, after: str = "0-0", block_ms: int | None = None
    ) -> list[tuple[str, str, Any]]:
        """Events after the stream id `after`: (event id, type, data)."""
        reply = self.redis.xread({self.job_key(job_id, "events"): after}, count=500, block=block_ms)
        return events_from_reply(reply)

    # finished pieces of a batch
    def save_part(self, job_id: str, name: str, value: Any) -> None:
        key = self.job_key(job_id, "parts")
        self.redis.hset(key, name, json.dumps(value))
        self.redis.expire(key, self.settings.job_ttl_s)

    def parts(self, job_id: str) -> dict[str, Any]:
        return {
            k.decode(): json.loads(v)
            for k, v in self.redis.hgetall(self.job_key(job_id, "parts")).items()
        }

    def requeue_orphan(self, job_id: str, holder: str) -> bool:
        """A running job of a worker known dead goes back to `queued` (and into the outbox)."""
        return bool(self._requeue(
            keys=[self.job_key(job_id), self.key("leases"), self.key("outbox")],
            args=[job_id, time.time(), json.dumps(holder)],
        ))  # fmt: skip

    def running_jobs(self) -> list[Job]:
        """The jobs that hold a lease (running somewhere)."""
        jobs = []
        for raw in self.redis.zrange(self.key("leases"), 0, -1):
            try:
                jobs.append(self.get(raw.decode()))
            except JobNotFound:
                continue
        return [job for job in jobs if job.status not in TERMINAL]

    # routing of follow-ups to the worker that holds their prefix
    def remember_prefix(self, job: Job, worker: str) -> None:
        key = prefix_key(job.kind, job.request)
        if key:
            self.redis.set(self.key("affinity", key), worker, ex=int(self.settings.affinity_ttl_s))

    def route(self, job: Job) -> str:
        """The queue for a job: the private queue of the live worker that ran a job with the
        same prefix, if it has a free slot; the shared queue of its kind otherwise."""
        key = prefix_key(job.kind, job.request)
        holder = self.redis.get(self.key("affinity", key)) if key else None
        if holder:
            announced = self.redis.get(self.key("worker", holder.decode()))
            state = json.loads(announced) if announced else {}
            if state and state.get("busy", 0) < state.get("slots", 1):
                return worker_queue(holder.decode())
        return QUEUES[job.kind]

    # reaper
    def reap(self, dispatch=None, now: float | None = None) -> dict[str, int]:
        """Fail running jobs whose lease ran out; re-send queued jobs nobody claimed in time.

        A queued job is re-sent when no worker claimed it within `requeue_after_s` of its last
        send: its message was never sent, or it was stranded in the broker's unacked set when
        Redis went away under a worker (Celery restores those only after the visibility
        timeout). A re-send of a job that was merely waiting in a long queue is a duplicate
        message; the claim drops it (the job is running or final by then).
        """
        now = time.time() if now is None else now
        failed = resent = 0
        for raw in self.redis.zrangebyscore(self.key("leases"), "-inf", now):
            job_id = raw.decode()
            error = JobError(
                type="WorkerLost",
                message="the worker running this job stopped (its lease expired) and the job was not redelivered",
            )
            if self.finish(
                job_id, JobStatus.failed, error=error, allowed_from=(JobStatus.running,)
            ):
                failed += 1
            else:
                self.redis.zrem(self.key("leases"), job_id)
        if dispatch is not None:
            stale = self.redis.zrangebyscore(
                self.key("outbox"), "-inf", now - self.settings.requeue_after_s
            )
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
                else:
                    self.redis.zrem(self.key("outbox"), job_id)
        return {"failed": failed, "resent": resent}

    # documents (written by the ingest worker, listed by the API)
    def put_document(self, record: DocumentRecord) -> None:
        self.redis.hset(self.key("documents"), record.id, record.model_dump_json())

    def get_document(self, document_id: str) -> DocumentRecord | None:
        raw = self.redis.hget(self.key("documents"), document_id)
        return DocumentRecord.model_validate_json(raw) if raw else None

    def list_documents(self, collection: str | None = None) -> list[DocumentRecord]:
        records = [
            DocumentRecord.model_validate_json(v) for v in self.redis.hvals(self.key("documents"))
        ]
        records = [r for r in records if collection is None or r.collection == collection]
        return sorted(records, key=lambda r: r.created_at)

    def remove_document(self, document_id: str) -> bool:
        return bool(self.redis.hdel(self.key("documents"), document_id))

    # workers announce themselves so /readyz can tell whether anyone will run a job
    def announce_worker(
        self, name: str, queues: list[str], ttl_s: float, busy: int = 0, slots: int = 1
    ) -> None:
        """`busy` of `slots` jobs in flight: routing sends follow-ups only to a worker with room."""
        self.redis.set(
            self.key("worker", name),
            json.dumps({"queues": queues, "at": time.time(), "busy": busy, "slots": slots}),
            ex=max(1, int(ttl_s)),
        )

    def publish_stats(self, name: str, stats: dict[str, Any], ttl_s: float) -> None:
        self.redis.set(self.key("stats", name), json.dumps(stats), ex=max(1, int(ttl_s)))

    def serving_stats(self) -> dict[str, dict[str, Any]]:
        """The figures each live GPU worker published last (see `workers.runtime.StatsPublisher`)."""
        found = {}
        for key in self.redis.scan_iter(match=self.key("stats", "*"), count=100):
            raw = self.redis.get(key)
            if raw:
                found[key.decode().rsplit(":", 1)[-1]] = json.loads(raw)
        return found

    def live_workers(self) -> dict[str, list[str]]:
        workers = {}
        for key in self.redis.scan_iter(match=self.key("worker", "*"), count=100):
            raw = self.redis.get(key)
            if raw:
                workers[key.decode().rsplit(":", 1)[-1]] = json.loads(raw)["queues"]
        return workers


def dispatch(celery_app: Any, jobs: JobStore, job: Job) -> None:
    """Send the Celery message of a job (by task name: the sender never imports the task), to
    the queue `JobStore.route` picks (a follow-up to the worker holding its prefix)."""
    celery_app.send_task(TASK_NAMES[job.kind], args=[job.id], queue=jobs.route(job))
    jobs.mark_sent(job.id)
