"""``GET /metrics``: Prometheus text, built from the database and Redis at scrape time plus this
process's own search latency histogram and WebSocket count."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

SEARCH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Snapshot(Collector):
    """Yields families from a monitor snapshot fetched (asynchronously) just before rendering."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        data = self.data
        jobs = GaugeMetricFamily("semantik_jobs", "Jobs by status", labels=["status"])
        for status, count in data.get("jobs_by_status", {}).items():
            jobs.add_metric([status], count)
        yield jobs
        queue = data.get("queue") or {}
        yield GaugeMetricFamily("semantik_queue_depth", "Jobs waiting in the arq queue", value=queue.get("depth", 0))
        yield GaugeMetricFamily(
            "semantik_queue_oldest_age_seconds", "Age of the oldest queued job", value=queue.get("oldest_age_s") or 0
        )
        yield GaugeMetricFamily("semantik_workers", "Live workers", value=len(data.get("workers") or []))
        throughput = data.get("throughput") or {}
        yield CounterMetricFamily(
            "semantik_chunks_embedded", "Chunks embedded by all workers", value=throughput.get("chunks_total", 0)
        )
        yield CounterMetricFamily(
            "semantik_embed_seconds", "Seconds workers spent in encode", value=throughput.get("embed_seconds_total", 0)
        )
        yield GaugeMetricFamily(
            "semantik_ws_clients", "Open WebSockets on this server", value=data.get("ws_clients", 0)
        )
        slots = (data.get("gpus") or {}).get("slots") or []
        held = sum(1 for slot in slots if slot.get("state") == "held")
        yield GaugeMetricFamily("semantik_gpu_slots", "GPU lease slots", value=len(slots))
        yield GaugeMetricFamily("semantik_gpu_slots_in_use", "GPU lease slots held", value=held)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.search_seconds = Histogram(
            "semantik_search_seconds", "Search latency", buckets=SEARCH_BUCKETS_S, registry=self.registry
        )
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)

    def render(self, data: dict[str, Any]) -> bytes:
        self._snapshot.data = data
        return generate_latest(self.registry)
