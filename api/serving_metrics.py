"""The serving figures on /metrics: what each GPU worker's engine is doing right now.

Workers publish `Engine.stats()` to Redis every few seconds with an expiry
(`workers.runtime.Runtime._publish_stats`, key `{prefix}:stats:{worker}`); this collector reads
them at each scrape and exports one gauge per figure, labelled by worker: requests running and
waiting, KV blocks total/used/cached, the prefix-cache hit rate (cached over prompt tokens since
the worker started), generated tokens/s over the last 10 s and jobs in flight. A worker that
stopped publishing drops out when its key expires. Redis away: no serving figures, the rest of
/metrics still answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from workers.jobstore import JobStore

GAUGES: dict[str, tuple[str, str]] = {  # exported name -> (published figure, help)
    "longctx_engine_running_requests": ("running", "Requests in the engine's running batch"),
    "longctx_engine_waiting_requests": ("waiting", "Requests waiting for KV memory or a batch slot"),
    "longctx_engine_kv_blocks_total": ("kv_blocks_total", "KV cache blocks of the budget"),
    "longctx_engine_kv_blocks_used": ("kv_blocks_used", "KV cache blocks in use"),
    "longctx_engine_kv_blocks_cached": ("kv_blocks_cached", "KV blocks held only by the prefix cache"),
    "longctx_engine_tokens_per_second": ("tokens_per_s", "Generated tokens per second, last 10 s"),
    "longctx_engine_preemptions": ("preemptions", "Requests preempted for memory (cumulative)"),
    "longctx_worker_jobs_in_flight": ("jobs_in_flight", "Jobs a GPU worker is running"),
    "longctx_worker_slots": ("slots", "Jobs a GPU worker may run at once"),
}


def hit_rate(figures: dict[str, Any]) -> float:
    prompt = figures.get("prompt_tokens") or 0
    return (figures.get("cached_prompt_tokens") or 0) / prompt if prompt else 0.0


class ServingCollector:
    """A prometheus collector over the figures the workers published last."""

    def __init__(self, jobs: JobStore):
        self.jobs = jobs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            published = self.jobs.serving_stats()
        except Exception:  # Redis away: nothing to say about the engines
            published = {}
        for name, (figure, help_text) in GAUGES.items():
            gauge = GaugeMetricFamily(name, help_text, labels=["worker"])
            for worker, figures in sorted(published.items()):
                if figures.get(figure) is not None:
                    gauge.add_metric([worker], float(figures[figure]))
            yield gauge
        rate = GaugeMetricFamily("longctx_engine_prefix_cache_hit_rate",
                                 "Prompt tokens served from the prefix cache, as a fraction",
                                 labels=["worker"])  # fmt: skip
        for worker, figures in sorted(published.items()):
            rate.add_metric([worker], hit_rate(figures))
        yield rate


def register(registry: CollectorRegistry, jobs: JobStore) -> None:
    registry.register(ServingCollector(jobs))
