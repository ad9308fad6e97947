"""Container health checks that test what they claim (stdlib + redis-py only; no model loaded).

- `api [PORT]`: the API process answers GET /healthz on 127.0.0.1 (/readyz would also need a
  worker; an API without workers is healthy, just not ready).
- `worker`: this container's worker announced itself to Redis within its TTL (the housekeeping
  loop runs and Redis is reachable); it announces as `<LONGCTX_WORKER_NAME>-<pid>`.
Exit 0 healthy, 1 not (Docker's HEALTHCHECK contract).
"""

import json
import os
import sys
import urllib.request


def api(port: str = "8000") -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as response:
        return response.status == 200 and json.load(response).get("status") == "ok"


def _redis():
    import redis

    return redis.Redis.from_url(
        os.environ.get("LONGCTX_REDIS_URL", "redis://127.0.0.1:6379/0"), socket_timeout=4
    )


def worker() -> bool:
    name = os.environ["LONGCTX_WORKER_NAME"]
    prefix = os.environ.get("LONGCTX_KEY_PREFIX", "longctx")
    return any(True for _ in _redis().scan_iter(match=f"{prefix}:worker:{name}-*", count=100))


if __name__ == "__main__":
    checks = {"api": api, "worker": worker}
    try:
        ok = checks[sys.argv[1]](*sys.argv[2:])
    except Exception as exc:  # unreachable, refused, missing key: unhealthy
        print(f"unhealthy: {exc}")
        ok = False
    sys.exit(0 if ok else 1)
