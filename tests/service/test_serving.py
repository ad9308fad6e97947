"""Serving: one GPU worker process runs many jobs at once on its one engine, a follow-up goes to
the worker that holds its prefix, and /metrics shows what the engines are doing.

Real Redis (DB 8 and 9, the serving helper's), real Celery worker processes on the threads pool,
SmolLM2-135M as the model (small enough for two worker processes at once on a shared machine).
No assertion on wall-clock time: overlap is read from the jobs' own start and finish times and
from the figures the worker published.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import redis
from celery import Celery

from tests.service.conftest import (
    ApiServer,
    ThreadsWorker,
    flush,
    make_settings,
)
from workers.contracts import ChatRequest, JobKind, QARequest, Settings, celery_config, prefix_key
from workers.jobstore import JobStore, dispatch
from workers.runtime import until_redis_answers

SERVING_DB, SECOND_DB = 8, 9
MODEL = "smollm2-135m-instruct"


def serving_settings(tmp, db: int = SERVING_DB, **overrides) -> Settings:
    values = dict(model_path=MODEL, stats_interval_s=0.2, heartbeat_s=0.5)
    return make_settings(tmp, db, **(values | overrides))


def send_chat(jobs: JobStore, producer: Celery, text: str, max_tokens: int = 24,
              system: str = "You are a terse assistant.") -> str:  # fmt: skip
    """What the API's submit does for a chat: create the job, dispatch it; the job id."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    request = ChatRequest(model="longctx", messages=messages, max_tokens=max_tokens)
    job, _ = jobs.create(JobKind.chat, request)
    dispatch(producer, jobs, job)
    return job.id


def wait_done(jobs: JobStore, job_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.get(job_id)
        if job.status.value in ("succeeded", "failed", "cancelled"):
            return job.model_dump(mode="json")
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {jobs.get(job_id).status.value}")


class Watch:
    """Samples the figures the workers publish while a test runs: the most seen at once."""

    def __init__(self, jobs: JobStore):
        self.jobs, self.most = jobs, {"running": 0, "jobs_in_flight": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            for figures in self.jobs.serving_stats().values():
                for name in self.most:
                    self.most[name] = max(self.most[name], figures.get(name, 0))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(5)
        return self.most


@pytest.fixture
def one_worker(tmp_path):
    settings = serving_settings(tmp_path)
    flush(settings)
    worker = ThreadsWorker(settings, tmp_path / "worker.log", slots=4)
    jobs = JobStore.connect(settings)
    producer = Celery("test-producer")
    producer.conf.update(celery_config(settings))
    try:
        worker.wait_ready()
        worker.wait_engine(jobs)
        yield {"settings": settings, "jobs": jobs, "producer": producer, "worker": worker,
               "tmp": tmp_path}  # fmt: skip
    finally:
        worker.stop()
        flush(settings)


def test_four_chats_on_one_worker_run_at_once_and_all_succeed(one_worker):
    jobs, producer = one_worker["jobs"], one_worker["producer"]
    watch = Watch(jobs)
    ids = [send_chat(jobs, producer, f"Name {n} animals that live in the sea.") for n in (2, 3, 4, 5)]
    done = [wait_done(jobs, job_id) for job_id in ids]
    most = watch.stop()

    assert [job["status"] for job in done] == ["succeeded"] * 4, done
    assert len({job["worker"] for job in done}) == 1  # one process ran all four
    assert most["jobs_in_flight"] >= 2, most  # ...at the same time
    latest_start = max(job["started_at"] for job in done)
    earliest_end = min(job["finished_at"] for job in done)
    assert latest_start < earliest_end  # all four were running at one moment
    engine_loop = "kv_blocks_total" in next(iter(jobs.serving_stats().values()))
    if engine_loop:  # the batching engine: its running batch held several requests
        assert most["running"] >= 2, most


def test_cancelling_one_running_chat_leaves_the_others_running(one_worker):
    jobs, producer = one_worker["jobs"], one_worker["producer"]
    ids = [send_chat(jobs, producer, "Tell a long story about a lighthouse keeper.", max_tokens=160)
           for _ in range(3)]  # fmt: skip
    victim = ids[1]
    deadline = time.monotonic() + 300
    while jobs.get(victim).status.value != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.1)
    jobs.request_cancel(victim)
    done = {job_id: wait_done(jobs, job_id) for job_id in ids}

    assert done[victim]["status"] == "cancelled", done[victim]
    others = [done[i]["status"] for i in ids if i != victim]
    assert others == ["succeeded", "succeeded"], done


def test_metrics_show_the_serving_gauges(one_worker):
    settings = one_worker["settings"]
    api = ApiServer(settings)
    try:
        with httpx.Client(base_url=api.url, timeout=120) as client:
            reply = client.post("/v1/chat/completions", json={
                "model": "longctx", "max_tokens": 8,
                "messages": [{"role": "user", "content": "Say hello."}]})  # fmt: skip
            assert reply.status_code == 200, reply.text
            text = client.get("/metrics").text
    finally:
        api.stop()
    for gauge in ("longctx_engine_running_requests", "longctx_engine_waiting_requests",
                  "longctx_engine_prefix_cache_hit_rate", "longctx_engine_tokens_per_second",
                  "longctx_worker_jobs_in_flight"):  # fmt: skip
        assert f'{gauge}{{worker="' in text, f"{gauge} missing from /metrics"


def test_a_follow_up_goes_to_the_worker_that_holds_its_prefix(tmp_path):
    settings = serving_settings(tmp_path, SECOND_DB)
    flush(settings)
    workers = [ThreadsWorker(settings, tmp_path / f"w{n}.log", name=f"w{n}", slots=2) for n in (1, 2)]
    jobs = JobStore.connect(settings)
    producer = Celery("test-producer")
    producer.conf.update(celery_config(settings))
    long_system = "You answer questions about the Apache License. " * 20
    try:
        names = [w.wait_engine(jobs) for w in workers]
        first = wait_done(jobs, send_chat(jobs, producer, "What is it?", 8, system=long_system))
        holder = first["worker"]
        assert first["status"] == "succeeded" and holder in names

        served = [wait_done(jobs, send_chat(jobs, producer, f"Question {n}?", 8, system=long_system))
                  for n in range(4)]  # one after another, as a user asks them  # fmt: skip
        assert [job["worker"] for job in served] == [holder] * 4  # the shared queue splits them

        workers[names.index(holder)].kill_all()  # the holder dies: follow-ups go to the other
        survivor = names[1 - names.index(holder)]
        later = wait_done(jobs, send_chat(jobs, producer, "And now?", 8, system=long_system))
        assert later["worker"] == survivor, later
    finally:
        for worker in workers:
            worker.stop()
        flush(settings)


def test_routing_prefers_a_live_worker_with_a_free_slot(tmp_path):
    settings = serving_settings(tmp_path, SECOND_DB)
    flush(settings)
    jobs = JobStore.connect(settings)
    request = {"question": "Who?", "document_ids": ["doc_b", "doc_a"]}
    job, _ = jobs.create(JobKind.qa, QARequest(**request))
    assert jobs.route(job) == "gpu"  # nobody ran this prefix yet
    jobs.remember_prefix(job, "host-1")
    assert jobs.route(job) == "gpu"  # the holder is not alive
    jobs.announce_worker("host-1", ["gpu"], ttl_s=30, busy=1, slots=2)
    assert jobs.route(job) == "gpu.host-1"
    jobs.announce_worker("host-1", ["gpu"], ttl_s=30, busy=2, slots=2)
    assert jobs.route(job) == "gpu"  # all its slots are busy: any worker
    other_question = {**request, "question": "When?", "document_ids": ["doc_a", "doc_b"]}
    assert prefix_key(JobKind.qa, other_question) == prefix_key(JobKind.qa, request)
    flush(settings)


def test_redis_calls_are_retried_with_backoff_and_give_up_after_their_patience():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise redis.exceptions.ConnectionError("Redis is restarting")
        return "done"

    assert until_redis_answers(flaky, patience_s=5) == "done"
    assert len(calls) == 3
    assert calls[2] - calls[1] > calls[1] - calls[0]  # the wait grows

    def away():
        raise redis.exceptions.TimeoutError("no answer")

    with pytest.raises(redis.exceptions.TimeoutError):
        until_redis_answers(away, patience_s=1)


def test_engine_options_pass_the_serving_settings():
    settings = Settings(kv_budget_tokens=4096, prefix_cache=False, max_batch=8)
    options = settings.engine_options()
    assert (options["kv_budget_tokens"], options["prefix_cache"], options["max_batch"]) == (4096, False, 8)
    assert "kv_budget_tokens" not in Settings().engine_options()  # unset: the engine's defaults
