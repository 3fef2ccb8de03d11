"""Every Prometheus metric the server exports, in one place (DESIGN 5.8).

Two kinds of registry. `ServiceMetrics`: one per loaded bundle version, what its engine, ledger, shadow monitor
and threshold controller record (its exit-layer buckets follow that bundle's depth). `ServerMetrics`: one per app,
what is about the server (HTTP requests, model reloads); it renders every live version's registry too, each
sample labelled with its `model` and `version`, so /metrics is one exposition however many models are served.
Each app gets its own registries so several apps (tests) never share counters. Labels stay low-cardinality:
route, model, version, policy name, status code, task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self, num_layers: int) -> None:
        self.registry = CollectorRegistry()
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
        # The GPU path (service/engine/classify/device/device_path.py).
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
        # The shadow agreement monitor (service/monitoring/shadow_monitor.py): a sample of early-exited rows also
        # runs to full depth, at low priority, and their answers are compared.
        self.shadow_rows = Counter(
            "beem_shadow_rows_total", "Shadow rows (early-exited rows re-run at full depth) that left, by outcome: "
            "compared, shed (dropped for real work or a full shadow queue), timeout, error", ["outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.shadow_samples = Counter(
            "beem_shadow_samples_total", "Shadow comparisons, by whether the exited answer agreed with full depth",
            ["policy", "result"], registry=self.registry,
        )  # fmt: skip
        self.shadow_agreement = Gauge(
            "beem_shadow_agreement", "Estimated share of answered rows whose answer equals full depth's (recent "
            "window: early-exit share x agreement of the shadowed early exits, plus the rows that ran to the end)",
            ["policy"], registry=self.registry,
        )  # fmt: skip
        self.shadow_exited_agreement = Gauge(
            "beem_shadow_exited_agreement", "Share of shadowed early-exited rows that agreed with full depth (recent "
            "window)", ["policy"], registry=self.registry,
        )  # fmt: skip
        self.shadow_agreement_calibrated = Gauge(
            "beem_shadow_agreement_calibrated", "beem_shadow_agreement's value on the bundle's calibration split, at "
            "the policy's calibrated threshold", ["policy"], registry=self.registry,
        )  # fmt: skip
        self.shadow_agreement_noise = Gauge(
            "beem_shadow_agreement_noise", "How far beem_shadow_agreement may fall below the calibrated level by "
            "chance alone: z x the standard error of the recent window (alert margin)", ["policy"],
            registry=self.registry,
        )  # fmt: skip
        self.shadow_accuracy_loss = Gauge(
            "beem_shadow_estimated_accuracy_loss", "Estimated accuracy lost against full depth: disagreeing rows' "
            "share x the calibration split's net loss per disagreement", ["policy"], registry=self.registry,
        )  # fmt: skip
        self.accuracy_budget = Gauge(
            "beem_accuracy_budget", "The accuracy the calibration allowed early exit to lose against full depth",
            registry=self.registry,
        )  # fmt: skip
        # Online threshold control (service/monitoring/alpha_controller.py).
        self.policy_threshold = Gauge(
            "beem_policy_threshold", "The threshold a policy serves with now (BEEM's alpha): calibrated, or moved by "
            "online control", ["policy"], registry=self.registry,
        )  # fmt: skip
        self.policy_threshold_changes = Counter(
            "beem_policy_threshold_changes_total", "Online control's changes of a policy's threshold, by direction "
            "(up: more conservative) and reason (agreement, latency)", ["policy", "direction", "reason"],
            registry=self.registry,
        )  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ServerMetrics:
    """The app's own metrics, and the exposition of every live version's `ServiceMetrics`."""

    def __init__(self, live_versions: Callable[[], Iterable[tuple[str, str, ServiceMetrics]]] = lambda: ()) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "beem_requests_total", "HTTP requests answered", ["route", "model", "policy", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.request_duration = Histogram(
            "beem_request_duration_seconds", "Time from request received to response", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.model_reloads = Counter(
            "beem_model_reloads_total", "New bundle versions the server tried to load, by outcome: loaded (it "
            "serves now) or refused (broken: the old version kept serving)", ["model", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.serving_version = Gauge(
            "beem_model_serving_version", "The version of each model that takes new requests", ["model"],
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(VersionMetricsCollector(live_versions))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class VersionMetricsCollector(Collector):
    """Every live version's families merged into one family per metric name, each sample labelled with its model
    and version (two versions of a model are both live while the old one drains)."""

    def __init__(self, live_versions: Callable[[], Iterable[tuple[str, str, ServiceMetrics]]]) -> None:
        self.live_versions = live_versions

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for model, version, metrics in self.live_versions():
            for family in metrics.registry.collect():
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                target.samples.extend(_labelled(family.samples, model, version))
        yield from merged.values()


def _labelled(samples: Sequence[Sample], model: str, version: str) -> Iterator[Sample]:
    for sample in samples:
        labels = {"model": model, "version": version, **sample.labels}
        yield Sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)
