"""Prometheus metrics on the app's own registry (never the global one): `vital_` prefix, base units."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Fine enough for tens of milliseconds, wide enough for explicit-CoT-like tails.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    20.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
STAGES = ("decode_image", "preprocess", "vision", "prefill", "latent", "decode", "explain")


class Metrics:
    """Every metric the service exports, bound to one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "vital_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.request_latency = Histogram(
            "vital_request_duration_seconds",
            "End-to-end request latency by route and status",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "vital_stage_duration_seconds",
            "Latency per stage of the forward pass (per batch)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "vital_queue_wait_seconds",
            "Time a request waited before its batch started",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vital_batch_size", "Requests per executed batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.in_flight = Gauge("vital_in_flight_requests", "Requests being handled now", registry=r)
        self.queue_depth = Gauge("vital_queue_depth", "Requests waiting for a batch", registry=r)
        self.errors = Counter("vital_errors", "Error responses by code", ["code", "status"], registry=r)
        self.latent_steps = Counter("vital_latent_steps", "Latent reasoning steps run (sum of K)", registry=r)
        self.generated_tokens = Counter("vital_generated_tokens", "Answer tokens generated", registry=r)
        self.prefix_hits = Counter(
            "vital_prefix_cache_hits", "Requests whose image prefix came from the prefix cache", registry=r
        )
        self.prefix_misses = Counter(
            "vital_prefix_cache_misses", "Requests whose image prefix was computed", registry=r
        )
        self.prefix_bytes = Gauge("vital_prefix_cache_bytes", "Bytes held by the prefix cache", registry=r)
        self.static_cache_bytes = Gauge(
            "vital_static_cache_bytes", "Bytes held by the static-cache buckets", registry=r
        )
        self.model_info = Info("vital_model", "The served model", registry=r)
        self.ready = Gauge("vital_ready", "1 when the model is loaded and not draining", registry=r)
