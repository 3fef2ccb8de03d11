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
            "beem_batch_size", "Rows that joined the engine together between two steps", buckets=BATCH_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.layer_batch_size = Histogram(
            "beem_layer_batch_size", "Rows in each classification layer step, by layer", ["layer"],
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.inflight_rows = Gauge("beem_inflight_rows", "Rows in the engine, at any depth", registry=self.registry)
        self.queue_depth = Gauge("beem_queue_depth", "Rows waiting to join the engine", registry=self.registry)
        self.queue_wait = Histogram(
            "beem_queue_wait_seconds", "Time a row waited before it joined the engine", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.expected_queue_wait = Gauge(
            "beem_expected_queue_wait_seconds", "(Rows waiting + rows in flight) / measured drain rate: what "
            "admission compares with max_queue_wait_ms", registry=self.registry,
        )  # fmt: skip
        self.drain_rate = Gauge(
            "beem_drain_rate_rows_per_second", "Rows the engine finishes per second of busy time (smoothed)",
            registry=self.registry,
        )  # fmt: skip
        self.admitted_rows = Counter(
            "beem_admitted_rows_total", "Rows admitted into the queue", ["task"], registry=self.registry
        )
        self.rows = Counter(
            "beem_rows_total", "Rows that left, counted once, by outcome: answered, client_gone, timeout, shed, "
            "shutdown, error", ["task", "outcome"], registry=self.registry,
        )  # fmt: skip
        # The GPU path (service/engine/device_engine.py).
        self.device_steps = Counter(
            "beem_device_steps_total", "GPU-path layer steps, by how they ran: graph (a CUDA graph replay) or eager "
            "(a shape outside the buckets, or the CPU)", ["run"], registry=self.registry,
        )  # fmt: skip
        self.step_readbacks = Counter(
            "beem_step_readbacks_total", "GPU-path steps whose decisions were read back to the host (one small "
            "non-blocking copy each; steps where no row can leave read nothing)", registry=self.registry,
        )  # fmt: skip
        self.exit_heads_skipped = Counter(
            "beem_exit_heads_skipped_rows_total", "Rows run at full depth with their exit heads skipped, because "
            "the exit statistics said early exit would not pay for their group", ["policy"], registry=self.registry,
        )  # fmt: skip
        self.model_info = Gauge(
            "beem_model_info", "The loaded bundle", ["name", "version", "task"], registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
