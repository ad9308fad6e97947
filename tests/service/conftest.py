"""Fixtures for the service tests: the real Redis, real Celery worker processes, the API served by
uvicorn on a free port.

Redis databases used (only these are flushed): 5 for the end-to-end stack, 13 for API-only
tests (no worker listens there), 14 for the worker-killing test; 15 holds only the lock that
makes concurrent runs of this suite take turns. The Redis-restart test starts
its own redis-server on port 6390 and never touches the shared one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from workers.contracts import Settings
from workers.jobstore import JobStore

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
E2E_DB, API_DB, KILL_DB, LOCK_DB = 5, 13, 14, 15
ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "cancelled"}


def _redis_up(port: int = REDIS_PORT) -> bool:
    try:
        return redis.Redis(host=REDIS_HOST, port=port, socket_connect_timeout=1).ping()
    except redis.exceptions.RedisError:
        return False


@pytest.fixture(autouse=True, scope="session")
def _need_redis():
    """Skip without Redis; with it, hold a lock so that two runs of this suite (two sessions
    in one tree) take turns instead of flushing and consuming each other's databases."""
    if not _redis_up():
        pytest.skip("no Redis at 127.0.0.1:6379")
    lock = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=LOCK_DB).lock(
        "longctx:service-tests", timeout=1800, blocking_timeout=1200
    )
    if not lock.acquire():
        pytest.skip("another run of tests/service held the lock for 20 minutes")
    yield
    try:
        lock.release()
    except redis.exceptions.LockError:
        pass  # expired: the run took longer than the lock's timeout


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/service/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def make_settings(tmp: Path, db: int, port: int = REDIS_PORT, **overrides) -> Settings:
    values = dict(
        redis_url=f"redis://{REDIS_HOST}:{port}/{db}",
        key_prefix="lctxtest",
        data_dir=tmp / "data",
        heartbeat_s=0.5,
        lease_s=15.0,  # generous: the machine is shared and busy; kill tests set their own
        cancel_poll_s=0.1,
        reaper_interval_s=0.5,
        requeue_after_s=3.0,
        sync_wait_s=180.0,
        rate_limit_per_minute=0,
        redis_timeout_s=2.0,
    )
    values.update(overrides)
    return Settings(**values)


def flush(settings: Settings) -> None:
    redis.Redis.from_url(settings.redis_url).flushdb()


def settings_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"LONGCTX_{name.upper()}"] = str(value)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        LONGCTX_WARMUP="1",
        PYTHONPATH=str(ROOT),
    )
    return env


class Worker:
    """`celery worker` as a subprocess (prefork, one child: the GPU-worker layout)."""

    def __init__(
        self, settings: Settings, log_path: Path, queues: str = "gpu,cpu", name: str = "w1"
    ):
        self.settings = settings
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-m", "celery", "-A", "workers.celery_app:app", "worker", "-Q", queues,
               "-c", "1", "-P", "prefork", "-n", f"{name}@%h", "--without-mingle", "--without-gossip",
               "--loglevel=INFO"]  # fmt: skip
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=settings_env(settings), stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout: float = 90) -> None:
        jobs = JobStore.connect(self.settings)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.process.returncode}; see {self.log.name}"
                )
            if jobs.live_workers():
                return
            time.sleep(0.2)
        raise TimeoutError("worker did not announce itself")

    def kill_all(self) -> None:
        """SIGKILL the worker's main process and its children (the whole process group)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


class ApiServer:
    """The API under uvicorn in a thread of the test process, on a free port."""

    def __init__(self, settings: Settings):
        import uvicorn

        from api.main import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("API did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_job(client: httpx.Client, job_id: str, timeout: float = 180, until=TERMINAL) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job.get("status") in until:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job.get('status')} after {timeout} s: {job}")


def upload(client: httpx.Client, name: str, text: str, collection: str = "default") -> dict:
    reply = client.post("/v1/documents", files={"file": (name, text.encode(), "text/plain")},
                        data={"collection": collection})  # fmt: skip
    assert reply.status_code == 202, reply.text
    job = wait_job(client, reply.json()["id"])
    assert job["status"] == "succeeded", job
    return job["result"]["document"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """Redis DB 5 + one worker (queues gpu and cpu) + the API: the service as a user runs it."""
    tmp = tmp_path_factory.mktemp("stack")
    settings = make_settings(tmp, E2E_DB)
    flush(settings)
    worker = Worker(settings, tmp / "worker.log")
    api = ApiServer(settings)
    try:
        worker.wait_ready()
        yield {"settings": settings, "worker": worker, "api": api, "url": api.url, "tmp": tmp}
    finally:
        api.stop()
        worker.stop()
        flush(settings)


@pytest.fixture
def client(stack):
    with httpx.Client(base_url=stack["url"], timeout=200) as c:
        yield c


@pytest.fixture(scope="session")
def corpus(stack):
    """Three short documents ingested through the API (the CPU queue)."""
    with httpx.Client(base_url=stack["url"], timeout=200) as c:
        texts = {
            "eiffel.txt": "The Eiffel Tower stands in Paris. Construction of the tower was completed in 1889. "
            "It is 330 metres tall and was designed by the company of Gustave Eiffel.",
            "moon.txt": "The Moon orbits the Earth once every 27.3 days. Neil Armstrong was the first person "
            "to walk on the Moon, in July 1969.",
            "coffee.txt": "Coffee plants grow best in the tropics. The two main species are arabica and robusta. "
            "Brazil is the largest producer of coffee in the world.",
        }
        return {name: upload(c, name, text) for name, text in texts.items()}


class ThreadsWorker(Worker):
    """A GPU worker as `longctx worker` runs it: Celery's threads pool, `slots` jobs in flight."""

    def __init__(self, settings: Settings, log_path, queues: str = "gpu,cpu", name: str = "w1",
                 slots: int = 4):  # fmt: skip
        self.settings = settings
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-m", "celery", "-A", "workers.celery_app:app", "worker", "-Q", queues,
               "-c", str(slots), "-P", "threads", "-n", f"{name}@%h", "--without-mingle",
               "--without-gossip", "--loglevel=INFO"]  # fmt: skip
        env = settings_env(settings) | {"LONGCTX_WORKER_SLOTS": str(slots)}
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def wait_engine(self, jobs: JobStore, timeout: float = 180) -> str:
        """Wait until this worker's engine is loaded (it publishes stats); its name."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"worker exited; see {self.log.name}"
            for name in jobs.serving_stats():
                if name.endswith(f"-{self.process.pid}"):
                    return name
            time.sleep(0.2)
        raise TimeoutError(f"engine of worker {self.process.pid} did not load; see {self.log.name}")
