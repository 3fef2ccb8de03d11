"""Every Prometheus metric the server exports, in one place (DESIGN 5.8).

Each app gets its own registry so several apps (tests) never share counters. Labels stay low-cardinality: route,
policy name, status code, task.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self, num_layers: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "beem_requests_total", "HTTP requests answered", ["route", "policy", "status"], registry=self.registry
        )
        self.request_duration = Histogram(
            "beem_request_duration_seconds", "Time from request received to response", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        # One bucket per layer: le=1 counts samples that left after layer 1, and so on.
        self.exit_layer = Histogram(
            "beem_exit_layer", "Layer at which each sample exited", ["policy", "task"],
            buckets=tuple(range(1, num_layers + 1)), registry=self.registry,
        )  # fmt: skip
        self.layers_computed = Counter(
            "beem_layers_computed_total", "Encoder layers run, summed over samples", ["task"], registry=self.registry
        )
        self.layers_possible = Counter(
            "beem_layers_possible_total", "Encoder layers full depth would have run", ["task"], registry=self.registry
        )
        self.batch_size = Histogram(
            "beem_batch_size", "Rows per micro-batch when it starts layer 1", buckets=BATCH_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.layer_batch_size = Histogram(
            "beem_layer_batch_size", "Rows still running at each layer", ["layer"], buckets=BATCH_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge("beem_queue_depth", "Rows waiting for a batch", registry=self.registry)
        self.queue_wait = Histogram(
            "beem_queue_wait_seconds", "Time a row waited before its batch started", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.dropped_rows = Counter(
            "beem_dropped_rows_total", "Rows dropped before or during compute", ["reason"], registry=self.registry
        )
        self.model_info = Gauge(
            "beem_model_info", "The loaded bundle", ["name", "version", "task"], registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
