"""Schema-driven fuzzing of the OpenAPI document (schemathesis): no input gives a 5xx.

Runs against the API in process on Redis DB 13, where no worker listens; jobs it creates just
wait in the queue. The one 5xx allowed is a chat completion's 504 (no worker answered within
the wait, which the test shortens to a fraction of a second): it is about the missing worker,
not about the input; so is /readyz's 503. Bounded to a few examples per operation (about a minute on 2 cores).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.main import create_app
from tests.service.conftest import API_DB, _redis_up, flush, make_settings

_tmp = Path(tempfile.mkdtemp(prefix="longctx-fuzz-"))
SETTINGS = make_settings(_tmp, API_DB, sync_wait_s=0.3, max_upload_bytes=4096)
APP = create_app(SETTINGS)
# 5xx answers that say "no worker here" (there is none on this database), not "bad input"
NOT_ABOUT_INPUT = {("/v1/chat/completions", 504), ("/readyz", 503)}
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


def setup_module():
    if _redis_up():
        flush(SETTINGS)


def teardown_module():
    if _redis_up():
        flush(SETTINGS)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_api_fail(case):
    if not _redis_up():
        pytest.skip("no Redis at 127.0.0.1:6379")
    response = case.call()
    if (case.path, response.status_code) in NOT_ABOUT_INPUT:
        return
    assert response.status_code < 500, (
        f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}"
    )
