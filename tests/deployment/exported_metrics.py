"""What /metrics can show, read from the server's own metric definitions (service/metrics.py): the series names,
and the labels their samples carry, that the Grafana dashboard's and the alert rules' queries may name. One
`ServiceMetrics` (per loaded bundle version; the server adds `model` and `version` to each of its samples) and one
`ServerMetrics` (the server's own metrics)."""

from __future__ import annotations

from prometheus_client.metrics import MetricWrapperBase

from service.metrics import ServerMetrics, ServiceMetrics

SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}
VERSION_LABELS = frozenset({"model", "version"})  # added by VersionMetricsCollector to every ServiceMetrics sample
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series


def exported_series_labels(num_layers: int = 3) -> dict[str, frozenset[str]]:
    """Sample name -> the label names its samples carry on /metrics (Prometheus' target labels aside)."""
    series: dict[str, frozenset[str]] = {}
    for metrics, added in ((ServiceMetrics(num_layers=num_layers), VERSION_LABELS), (ServerMetrics(), frozenset())):
        # A labelled family without children has no samples to read its label names from: the metric objects know
        # them (prometheus_client keeps them in `_labelnames`).
        wrappers = {w._name: w for w in vars(metrics).values() if isinstance(w, MetricWrapperBase)}
        families = {family.name: family.type for family in metrics.registry.collect()}
        assert families.keys() <= wrappers.keys(), f"metrics not held by {type(metrics).__name__}: {families}"
        for name, kind in families.items():
            labels = added | set(wrappers[name]._labelnames)
            for suffix in SUFFIXES[kind]:
                series[name + suffix] = (labels | {"le"}) if suffix == "_bucket" else labels
    return series


def exported_series_names() -> set[str]:
    """Every sample name /metrics can show."""
    return set(exported_series_labels())
