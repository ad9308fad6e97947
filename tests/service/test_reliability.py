"""Failures a service meets: a worker child SIGKILLed mid-batch, a whole worker SIGKILLed (and
restarted, or not), Redis stopped and started again. A job is redelivered and completes, or ends
failed; it never stays `running` and never vanishes. GPU workers run the threads pool (many jobs
on one engine, `ThreadsWorker`); the first test keeps the prefork layout of a CPU worker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import httpx
import pytest
import redis

from tests.service.conftest import (
    KILL_DB,
    ApiServer,
    ThreadsWorker,
    flush,
    make_settings,
    upload,
    wait_job,
)
from workers.jobstore import JobStore

LONG_TASK = {"task": "Write a long story about a dragon who learns to bake bread.", "tools": ["calculator"],
             "max_steps": 1, "max_new_tokens": 400}  # fmt: skip


def first_event(client: httpx.Client, job_id: str, wanted: str) -> dict:
    import json

    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in (wanted, "done"):
                return {"type": kind, **json.loads(line[6:])}
    raise AssertionError(f"no {wanted} event")


def test_a_child_killed_mid_batch_is_redelivered_and_skips_finished_documents(
    client, corpus, stack
):
    ids = [corpus[n]["id"] for n in ("moon.txt", "coffee.txt", "eiffel.txt")]
    job = client.post("/v1/summaries", json={"document_ids": ids, "max_new_tokens": 24}).json()
    event = first_event(client, job["id"], "document")
    assert event["type"] == "document" and event["document"] == ids[0]
    records = JobStore.connect(stack["settings"])  # who runs a job is not in the public view
    running = records.get(job["id"])
    os.kill(int(running.worker.rsplit("-", 1)[1]), signal.SIGKILL)  # the pool child running it

    done = wait_job(client, job["id"], timeout=240)
    assert done["status"] == "succeeded", done
    assert records.get(job["id"]).attempts == 2
    assert done["result"]["resumed"] == [ids[0]]
    assert [d["document"] for d in done["result"]["documents"]] == ids


def test_a_threads_worker_killed_mid_batch_and_restarted_resumes_the_batch(tmp_path):
    settings = make_settings(tmp_path, KILL_DB, lease_s=30.0)
    flush(settings)
    worker = ThreadsWorker(settings, tmp_path / "worker.log", name="first")
    api = ApiServer(settings)
    texts = {"moon.txt": "The Moon orbits the Earth once every 27.3 days.",
             "coffee.txt": "Brazil is the largest producer of coffee in the world.",
             "eiffel.txt": "The Eiffel Tower in Paris was completed in 1889."}  # fmt: skip
    try:
        worker.wait_ready()
        with httpx.Client(base_url=api.url, timeout=120) as client:
            ids = [upload(client, name, text)["id"] for name, text in texts.items()]
            job = client.post("/v1/summaries", json={"document_ids": ids, "max_new_tokens": 24}).json()
            assert first_event(client, job["id"], "document")["document"] == ids[0]
            worker.kill_all()  # the whole process: every job it held in flight
            worker.stop()
            worker = ThreadsWorker(settings, tmp_path / "worker2.log", name="second")

            done = wait_job(client, job["id"], timeout=300)
            assert done["status"] == "succeeded", done
            assert JobStore.connect(settings).get(job["id"]).attempts == 2  # requeued by the successor
            assert done["result"]["resumed"] == [ids[0]]
            assert [d["document"] for d in done["result"]["documents"]] == ids
    finally:
        api.stop()
        worker.stop()
        flush(settings)


def test_a_worker_killed_outright_leaves_a_failed_job_not_a_running_one(tmp_path):
    settings = make_settings(tmp_path, KILL_DB, lease_s=5.0)
    flush(settings)
    worker = ThreadsWorker(settings, tmp_path / "worker.log", name="doomed")
    api = ApiServer(settings)
    try:
        worker.wait_ready()
        with httpx.Client(base_url=api.url, timeout=60) as client:
            job = client.post("/v1/agent/jobs", json=LONG_TASK).json()
            assert first_event(client, job["id"], "token")["type"] == "token"
            worker.kill_all()
            killed = time.monotonic()
            done = wait_job(client, job["id"], timeout=30)
            assert done["status"] == "failed"
            assert done["error"]["type"] == "WorkerLost"
            assert time.monotonic() - killed < settings.lease_s + 10
            assert client.get("/readyz").status_code == 503  # and nobody is left to run jobs
    finally:
        api.stop()
        worker.stop()
        flush(settings)


class OwnRedis:
    """A private redis-server (AOF on) in a temp folder: ours to stop and start."""

    def __init__(self, folder, port: int = 6390):
        self.folder, self.port = folder, port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
               "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                if client.ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            try:
                redis.Redis(port=self.port).shutdown()
            except redis.exceptions.ConnectionError:
                pass  # shutdown closes the connection on us
            self.process.wait(10)


def test_redis_stopped_and_started_again(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    server = OwnRedis(tmp_path)
    server.start()
    settings = make_settings(tmp_path, 0, port=server.port, lease_s=60.0)
    worker = ThreadsWorker(settings, tmp_path / "worker.log", name="survivor")
    api = ApiServer(settings)
    quick = {"task": "What is 6 * 7?", "tools": ["calculator"], "max_steps": 1, "max_new_tokens": 8}
    try:
        worker.wait_ready()
        with httpx.Client(base_url=api.url, timeout=60) as client:
            accepted = [client.post("/v1/agent/jobs", json=quick).json()["id"] for _ in range(2)]
            server.stop()
            assert client.get(f"/v1/jobs/{accepted[0]}").status_code == 503
            assert client.post("/v1/agent/jobs", json=quick).status_code == 503
            assert client.get("/readyz").status_code == 503
            assert client.get("/healthz").status_code == 200

            server.start()
            deadline = time.monotonic() + 30
            while client.get(f"/v1/jobs/{accepted[0]}").status_code != 200:
                assert time.monotonic() < deadline, "the API did not recover"
                time.sleep(0.2)
            later = client.post("/v1/agent/jobs", json=quick)
            assert later.status_code == 202
            for job_id in [*accepted, later.json()["id"]]:
                assert wait_job(client, job_id, timeout=180)["status"] == "succeeded"
    finally:
        api.stop()
        worker.stop()
        server.stop()
