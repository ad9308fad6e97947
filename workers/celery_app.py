"""The one Celery app of the service, configured for long GPU jobs.

Settings (see `workers.contracts.celery_config`): queues `gpu` and `cpu`, prefetch 1,
`acks_late` with `task_reject_on_worker_lost` (a child killed mid-job puts its message back),
a Redis visibility timeout above the hard time limit (so a live job is never delivered twice),
soft and hard time limits, results that expire. Each worker process loads the model once
(lazily, warmed in a thread right after the fork, see `workers.runtime`).

The main process of each worker announces itself in Redis (for /readyz) and runs the reaper,
which fails running jobs whose heartbeat stopped and re-sends accepted jobs whose message was
never confirmed sent.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import Celery, signals

from workers.contracts import celery_config, get_settings
from workers.jobstore import JobStore, dispatch

log = logging.getLogger(__name__)

app = Celery("longctx", include=["workers.tasks"])
app.conf.update(celery_config(get_settings()))


def worker_name() -> str:
    """<host>-<pid>; LONGCTX_WORKER_NAME replaces the host name where containers share it."""
    host = os.environ.get("LONGCTX_WORKER_NAME") or socket.gethostname()
    return f"{host}-{os.getpid()}".replace(":", "-")


@signals.worker_process_init.connect
def _warm_up(**_: object) -> None:
    """Load the model in the background right after the fork (the fork must stay quick)."""
    if os.environ.get("LONGCTX_WARMUP") == "1":
        from workers.runtime import get_runtime

        threading.Thread(target=get_runtime().warm_up, name="warm-up", daemon=True).start()


@signals.worker_ready.connect
def _start_housekeeping(sender, **_: object) -> None:
    queues = sorted(sender.app.amqp.queues.consume_from or sender.app.amqp.queues)
    stop = threading.Event()
    thread = threading.Thread(
        target=_housekeeping, args=(queues, stop), name="housekeeping", daemon=True
    )
    thread.start()
    _HOUSEKEEPING.append(stop)


_HOUSEKEEPING: list[threading.Event] = []


@signals.worker_shutdown.connect
def _stop_housekeeping(**_: object) -> None:
    for stop in _HOUSEKEEPING:
        stop.set()


def _housekeeping(queues: list[str], stop: threading.Event) -> None:
    settings = get_settings()
    jobs = JobStore.connect(settings)
    name = worker_name()
    while not stop.is_set():
        try:
            jobs.announce_worker(name, queues, ttl_s=3 * settings.heartbeat_s)
            jobs.reap(dispatch=lambda job: dispatch(app, jobs, job))
        except Exception as exc:  # Redis away: try again next round
            log.warning("housekeeping: %s", exc)
        stop.wait(settings.heartbeat_s)
    try:
        jobs.redis.delete(jobs.key("worker", name))
    except Exception:
        pass
