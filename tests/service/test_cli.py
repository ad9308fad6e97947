"""`longctx up` on a machine where no Redis answers at the configured URL: it starts
redis-server, a worker and the API, prints the URL when ready, and stops them on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest
import redis

from tests.service.conftest import ROOT, free_port, make_settings, settings_env


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_up_starts_redis_a_worker_and_the_api(tmp_path):
    redis_port, api_port = free_port(), free_port()
    env = settings_env(make_settings(tmp_path, 0, port=redis_port))
    process = subprocess.Popen([sys.executable, "-m", "longctx.cli", "up", "--port", str(api_port)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any("ready at" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            lines.append(process.stdout.readline())
        assert f"longctx is ready at http://127.0.0.1:{api_port}" in "".join(lines)
        assert any(f"started redis-server on port {redis_port}" in line for line in lines)
        ready = httpx.get(f"http://127.0.0.1:{api_port}/readyz").json()
        assert ready["queues"] == ["cpu", "gpu"]
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(60)
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()
