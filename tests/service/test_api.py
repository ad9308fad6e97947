"""The API on its own (Redis DB 13, no worker): authentication, idempotency, limits, bad input,
cancel of a queued job, the reaper, Redis away. Every refusal is a clear 4xx and leaves nothing
behind."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from tests.service.conftest import API_DB, flush, make_settings, wait_job
from workers.contracts import JobKind, JobStatus, QARequest
from workers.jobstore import JobStore


@pytest.fixture
def settings(tmp_path):
    settings = make_settings(
        tmp_path, API_DB, max_upload_bytes=2000, max_prompt_chars=5000, sync_wait_s=0.5
    )
    flush(settings)
    yield settings
    flush(settings)


def make_client(settings, **overrides) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=overrides)))


@pytest.fixture
def client(settings):
    with make_client(settings) as c:
        yield c


def job_keys(settings) -> list[bytes]:
    """The job records (not their event streams)."""
    keys = redis.Redis.from_url(settings.redis_url).keys(f"{settings.key_prefix}:job:*")
    return [k for k in keys if k.count(b":") == 2]


def assert_error(reply, status: int, words: str) -> None:
    assert reply.status_code == status, reply.text
    message = reply.json()["error"]["message"]
    assert words in message, message


def test_api_keys_are_required_when_configured(settings):
    with make_client(settings, api_keys="alpha,beta") as c:
        assert_error(c.get("/v1/models"), 401, "missing API key")
        assert_error(
            c.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401, "invalid API key"
        )
        assert c.get("/v1/models", headers={"Authorization": "Bearer beta"}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes stay open


def test_a_retried_request_with_its_idempotency_key_returns_the_same_job(client, settings):
    body = {"task": "What is 2 + 2?", "tools": ["calculator"]}
    first = client.post("/v1/agent/jobs", json=body, headers={"Idempotency-Key": "abc-1"})
    again = client.post("/v1/agent/jobs", json=body, headers={"Idempotency-Key": "abc-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(job_keys(settings)) == 1

    other = client.post(
        "/v1/agent/jobs", json={**body, "task": "else"}, headers={"Idempotency-Key": "abc-1"}
    )
    assert_error(other, 409, "different request")
    fresh = client.post("/v1/agent/jobs", json=body)
    assert fresh.json()["id"] != first.json()["id"]


def test_unknown_job_ids_are_404(client):
    for reply in (
        client.get("/v1/jobs/job_doesnotexist"),
        client.post("/v1/jobs/job_doesnotexist/cancel"),
        client.get("/v1/jobs/job_doesnotexist/events"),
    ):
        assert_error(reply, 404, "no job with id job_doesnotexist")


def test_malformed_and_invalid_json(client):
    reply = client.post(
        "/v1/qa", content=b'{"question": "x",', headers={"Content-Type": "application/json"}
    )
    assert_error(reply, 400, "not valid JSON")
    assert_error(client.post("/v1/qa", json={"mode": "auto"}), 422, "question")
    assert_error(client.post("/v1/qa", json={"question": "x", "mode": "guess"}), 422, "mode")


@pytest.mark.parametrize(
    ("name", "data", "status", "words"),
    [
        ("empty.txt", b"", 400, "empty"),
        ("blank.md", b"  \n\n ", 400, "empty"),
        ("big.txt", b"x" * 2001, 413, "larger than the limit"),
        ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage", 400, "broken PDF"),
        ("notapdf.pdf", b"hello, I am text", 400, "broken PDF"),
        ("latin1.txt", "café".encode("latin-1"), 400, "UTF-8"),
        ("program.exe", b"MZ\x90\x00", 415, "unsupported file type"),
    ],
)
def test_bad_uploads_are_refused_and_nothing_is_written(
    client, settings, name, data, status, words
):
    reply = client.post("/v1/documents", files={"file": (name, data, "application/octet-stream")})
    assert_error(reply, status, words)
    assert not (settings.data_dir / "uploads").exists() or not any(
        (settings.data_dir / "uploads").rglob("*.*")
    )
    assert job_keys(settings) == []


def test_an_upload_is_stored_inside_the_data_folder_whatever_its_name(client, settings):
    reply = client.post(
        "/v1/documents", files={"file": ("../../../etc/notes.txt", b"plain text", "text/plain")}
    )
    assert reply.status_code == 202, reply.text
    (stored,) = (settings.data_dir / "uploads").rglob("*.txt")
    assert stored.read_bytes() == b"plain text"
    assert stored.resolve().is_relative_to((settings.data_dir / "uploads").resolve())
    assert stored.name == "notes.txt"


def test_prompt_and_model_limits(client, settings):
    chat = {"model": settings.model_name, "messages": [{"role": "user", "content": "x" * 6000}]}
    reply = client.post("/v1/chat/completions", json=chat)
    assert_error(reply, 400, "over the limit")
    assert reply.json()["error"]["code"] == "context_length_exceeded"
    too_many = {**chat, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}
    assert_error(client.post("/v1/chat/completions", json=too_many), 400, "max_tokens")
    assert_error(
        client.post("/v1/chat/completions", json={**chat, "model": "gpt-9"}), 404, "does not exist"
    )
    assert_error(
        client.post("/v1/chat/completions", json={**chat, "messages": []}), 422, "messages"
    )
    wizard = {**chat, "messages": [{"role": "wizard", "content": "hi"}]}
    assert_error(client.post("/v1/chat/completions", json=wizard), 422, "role must be one of")


def test_questions_about_documents_that_do_not_exist(client):
    assert_error(
        client.post("/v1/qa", json={"question": "why?", "document_ids": ["nope"]}),
        404,
        "no document",
    )
    assert_error(client.post("/v1/qa", json={"question": "why?"}), 422, "no documents yet")
    assert_error(client.post("/v1/summaries", json={"document_ids": ["nope"]}), 404, "no document")
    assert_error(client.get("/v1/documents/nope"), 404, "no document")
    assert_error(client.delete("/v1/documents/nope"), 404, "no document")


def test_cancel_of_a_queued_job_is_immediate_and_ends_its_event_stream(client):
    job = client.post("/v1/agent/jobs", json={"task": "wait for me"}).json()
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        text = "".join(stream.iter_text())
    events = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event: ")]
    assert events == ["status", "done"]
    assert '"status": "cancelled"' in text


def test_readiness_health_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "no_workers"
    client.get("/v1/models")
    metrics = client.get("/metrics").text
    assert 'longctx_http_requests_total{method="GET",route="/v1/models",status="200"}' in metrics
    assert 'longctx_queue_length{queue="gpu"}' in metrics and "longctx_live_workers 0.0" in metrics


def test_rate_limit(settings):
    with make_client(settings, rate_limit_per_minute=3) as c:
        replies = [c.get("/v1/models") for _ in range(4)]
    assert [r.status_code for r in replies[:3]] == [200, 200, 200]
    assert_error(replies[3], 429, "rate limit")
    # a moving window: the first of the three leaves it a minute after it was counted
    assert 55 <= int(replies[3].headers["Retry-After"]) <= 60, replies[3].headers["Retry-After"]


def test_the_rate_limit_is_shared_by_api_processes(settings):
    first, second = (make_client(settings, rate_limit_per_minute=2) for _ in range(2))
    with first, second:
        assert first.get("/v1/models").status_code == 200
        assert second.get("/v1/models").status_code == 200
        assert first.get("/v1/models").status_code == 429  # the count is in Redis, not in-process
    keys = redis.Redis.from_url(settings.redis_url).keys(f"{settings.key_prefix}:rate*")
    assert keys, "the limiter's window is not under the service's key prefix"


def test_the_reaper_fails_jobs_whose_worker_went_silent_and_resends_unsent_ones(settings):
    jobs = JobStore.connect(settings.model_copy(update={"lease_s": 0.2}))
    job, _ = jobs.create(JobKind.qa, QARequest(question="q"))
    assert jobs.claim(job.id, "worker-that-dies") == "running"
    sent = []
    unsent, _ = jobs.create(JobKind.qa, QARequest(question="never sent"))
    outcome = jobs.reap(dispatch=sent.append, now=time.time() + settings.requeue_after_s + 1)
    assert outcome == {"failed": 1, "resent": 1}
    assert jobs.get(job.id).status == JobStatus.failed
    assert jobs.get(job.id).error.type == "WorkerLost"
    assert [j.id for j in sent] == [unsent.id]
    assert jobs.finish(job.id, JobStatus.succeeded, result={}) is False  # final means final


def test_a_job_delivered_too_often_is_failed_not_looped(settings):
    jobs = JobStore.connect(settings.model_copy(update={"max_attempts": 2}))
    job, _ = jobs.create(JobKind.qa, QARequest(question="q"))
    assert [jobs.claim(job.id, "w") for _ in range(3)] == ["running", "running", "exhausted"]
    assert jobs.get(job.id).error.type == "TooManyAttempts"


def test_redis_away_is_503_not_500(settings):
    gone = settings.model_copy(
        update={"redis_url": "redis://127.0.0.1:1/0", "redis_timeout_s": 0.5}
    )
    with TestClient(create_app(gone), raise_server_exceptions=False) as c:
        reply = c.get("/v1/jobs/job_x")
        assert_error(reply, 503, "Redis")
        assert reply.headers["Retry-After"] == "2"
        assert c.post("/v1/agent/jobs", json={"task": "t"}).status_code == 503
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200


def test_job_events_resume_after_last_event_id(client, settings):
    jobs = JobStore.connect(settings)
    job, _ = jobs.create(JobKind.qa, QARequest(question="q"))
    jobs.claim(job.id, "w")
    jobs.emit(job.id, "token", {"text": "Hel", "index": 0})
    jobs.emit(job.id, "token", {"text": "lo", "index": 0})
    jobs.finish(job.id, JobStatus.succeeded, result={"answer": "Hello"})
    with client.stream("GET", f"/v1/jobs/{job.id}/events") as stream:
        lines = "".join(stream.iter_text()).splitlines()
    ids = [line[4:] for line in lines if line.startswith("id: ")]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [d.get("text") for d in data if "text" in d] == ["Hel", "lo"]
    with client.stream(
        "GET", f"/v1/jobs/{job.id}/events", headers={"Last-Event-ID": ids[-2]}
    ) as stream:
        tail = "".join(stream.iter_text())
    assert "event: done" in tail and "event: token" not in tail
    assert wait_job(client, job.id)["result"] == {"answer": "Hello"}


def test_a_job_shows_the_client_its_status_not_the_services_bookkeeping(client, settings):
    jobs = JobStore.connect(settings)
    job, _ = jobs.create(JobKind.qa, QARequest(question="what is secret?"))
    jobs.claim(job.id, "w-host-123")
    shown = client.get(f"/v1/jobs/{job.id}").json()
    assert shown["status"] == "running" and shown["id"] == job.id
    assert not {"worker", "attempts", "request"} & set(shown), sorted(shown)
    schema = client.get("/openapi.json").json()["components"]["schemas"]["JobPublic"]
    assert not {"worker", "attempts", "request"} & set(schema["properties"])


def test_a_quiet_event_stream_sends_keep_alives(settings):
    jobs = JobStore.connect(settings)
    job, _ = jobs.create(JobKind.qa, QARequest(question="q"))
    jobs.claim(job.id, "w")

    def finish_later():
        time.sleep(1.5)
        jobs.finish(job.id, JobStatus.succeeded, result={"answer": "late"})

    threading.Thread(target=finish_later, daemon=True).start()
    with make_client(settings, sse_keepalive_s=0.3) as c:
        with c.stream("GET", f"/v1/jobs/{job.id}/events") as stream:
            text = "".join(stream.iter_text())
    assert text.count(": keep-alive") >= 2, text
    assert "event: done" in text and '"late"' in text
