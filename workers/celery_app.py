"""The one Celery app of the service, configured for long GPU jobs.

Settings (see `workers.contracts.celery_config`): queues `gpu` and `cpu`, prefetch 1 per slot,
`acks_late` with `task_reject_on_worker_lost` (a prefork child killed mid-job puts its message
back), a Redis visibility timeout above the hard time limit (so a live job is never delivered
twice), soft and hard time limits, results that expire. A GPU worker runs the threads pool
(`longctx worker`: `LONGCTX_WORKER_SLOTS` jobs in flight on the one engine of the process); the
model is loaded once per process (warmed in a thread when the worker is ready, or right after
the fork under prefork, see `workers.runtime`).

The main process of each worker announces itself in Redis (for /readyz and routing, with its
jobs in flight), consumes its private queue `gpu.<name>` besides `gpu` (follow-ups whose prefix
it holds, see `JobStore.route`), and runs the housekeeping: the reaper, which fails running jobs
whose heartbeat stopped and re-sends accepted jobs whose message was never confirmed sent, and
the takeover of jobs whose worker on this host died (a restarted worker requeues them at once;
they resume from their saved parts).
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import Celery, signals

from workers.contracts import celery_config, get_settings, worker_queue
from workers.jobstore import JobStore, dispatch

log = logging.getLogger(__name__)

app = Celery("longctx", include=["workers.tasks"])
app.conf.update(celery_config(get_settings()))


def worker_name() -> str:
    """<host>-<pid>; LONGCTX_WORKER_NAME replaces the host name where containers share it."""
    host = os.environ.get("LONGCTX_WORKER_NAME") or socket.gethostname()
    return f"{host}-{os.getpid()}".replace(":", "-")


_NODE: list[str] = []  # the consuming (main) process's name, set before prefork children fork


def node_name() -> str:
    """The worker as routing sees it: the main process, which owns the private queue."""
    return _NODE[0] if _NODE else worker_name()


def holder_is_dead(holder: str) -> bool:
    """True for a worker process on this host that no longer exists (SIGKILL, OOM kill; a
    threads-pool worker itself, or a prefork child): its job may be taken over at once instead
    of waiting for its lease to run out."""
    host, _, pid = holder.rpartition("-")
    if host != worker_name().rpartition("-")[0] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@signals.worker_init.connect
def _name_node(**_: object) -> None:
    _NODE[:] = [worker_name()]


@signals.worker_process_init.connect
def _warm_up(**_: object) -> None:
    """Load the model in the background right after the fork (the fork must stay quick)."""
    if os.environ.get("LONGCTX_WARMUP") == "1":
        from workers.runtime import get_runtime

        threading.Thread(target=get_runtime().warm_up, name="warm-up", daemon=True).start()


@signals.worker_ready.connect
def _start_housekeeping(sender, **_: object) -> None:
    from celery.concurrency.prefork import TaskPool as Prefork

    queues = sorted(sender.app.amqp.queues.consume_from or sender.app.amqp.queues)
    if "gpu" in queues:
        sender.add_task_queue(worker_queue(node_name()))
    if not isinstance(sender.pool, Prefork):  # threads or solo: the jobs run in this process
        _warm_up()
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
    from workers.runtime import IN_FLIGHT

    jobs = JobStore.connect(settings)
    name = node_name()
    while not stop.is_set():
        try:
            jobs.announce_worker(name, queues, ttl_s=3 * settings.heartbeat_s,
                                 busy=len(IN_FLIGHT), slots=settings.worker_slots)  # fmt: skip
            jobs.reap(dispatch=lambda job: dispatch(app, jobs, job))
            _take_over_orphans(jobs)
        except Exception as exc:  # Redis away: try again next round
            log.warning("housekeeping: %s", exc)
        stop.wait(settings.heartbeat_s)
    try:
        jobs.redis.delete(jobs.key("worker", name))
    except Exception:
        pass


def _take_over_orphans(jobs: JobStore) -> None:
    """Requeue the running jobs whose worker on this host is dead (the worker was restarted):
    they resume now instead of failing when their lease runs out; the claim counts attempts."""
    for job in jobs.running_jobs():
        if job.worker and holder_is_dead(job.worker) and jobs.requeue_orphan(job.id, job.worker):
            log.warning("job %s of dead worker %s requeued", job.id, job.worker)
            dispatch(app, jobs, jobs.get(job.id))
