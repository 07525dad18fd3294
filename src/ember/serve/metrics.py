"""Prometheus metrics for one server: a private registry, so servers can share a process.

prometheus-client is imported when a server is built, so `ember.serve` imports without it.
"""

from __future__ import annotations

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Every metric the server exports, labelled by model (and replica where it applies)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        self.content_type = CONTENT_TYPE_LATEST
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ember_requests", "Inference requests received", ["model", "protocol"], registry=r
        )
        self.failures = Counter(
            "ember_request_failures",
            "Inference requests that failed, by status code",
            ["model", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "ember_request_latency_seconds",
            "Request latency inside the server",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "ember_queue_seconds",
            "Time a request waits in the batcher's queue",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "ember_batch_size",
            "Rows per executed batch",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "ember_queue_depth", "Requests waiting in the batcher", ["model"], registry=r
        )
        self.cache_hits = Counter("ember_cache_hits", "Response cache hits", ["model"], registry=r)
        self.cache_misses = Counter(
            "ember_cache_misses", "Response cache misses", ["model"], registry=r
        )
        self.replica_up = Gauge(
            "ember_replica_up",
            "1 when the replica is alive and loaded",
            ["model", "replica"],
            registry=r,
        )
        self.replica_restarts = Counter(
            "ember_replica_restarts", "Replicas restarted after dying", ["model"], registry=r
        )
        self.retries = Counter(
            "ember_retries", "Batches retried after their replica died", ["model"], registry=r
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
