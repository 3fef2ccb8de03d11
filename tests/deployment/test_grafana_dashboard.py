"""The provisioned Grafana dashboard, validated by structure: every panel queries the provisioned Prometheus
datasource, every metric a query names is one the server exports, and the panels the deployment promises exist."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.deployment.exported_metrics import exported_series_names

GRAFANA = Path(__file__).resolve().parents[2] / "docker" / "grafana"
METRIC_NAME = re.compile(r"\bbeem_[a-z_]+\b")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "beem-serve.json").read_text())
    return loaded


def expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query, the template variable's included."""
    found = [(panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel["targets"]]
    found += [(f"variable {v['name']}", v["definition"]) for v in dashboard()["templating"]["list"]]
    return found


def test_every_query_names_only_metrics_the_server_exports() -> None:
    exported = exported_series_names()
    assert {"beem_exit_layer_bucket", "beem_requests_total", "beem_queue_depth"} <= exported
    for title, expression in expressions():
        names = set(METRIC_NAME.findall(expression))
        assert names, f"{title}: queries no beem metric"
        assert names <= exported, f"{title}: {sorted(names - exported)} are not exported"


def test_the_check_would_catch_a_misspelt_metric() -> None:
    assert "beem_exit_layers_bucket" not in exported_series_names()
    assert "beem_request_latency_seconds_bucket" not in exported_series_names()


def test_panels_query_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = provisioned["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"] and board["title"]
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    refs = [[t["refId"] for t in panel["targets"]] for panel in board["panels"]]
    assert all(len(r) == len(set(r)) for r in refs)


def test_the_dashboard_provider_reads_the_mounted_folder() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "beem.yaml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_promised_panels_are_there() -> None:
    """Requests/s, p50/p95 latency, exit-layer distribution, compute saved, batch size, queue depth, 429s."""
    queries = " ".join(expression for _, expression in expressions())
    by_title = {title.lower(): expression for title, expression in expressions()}
    assert "rate(beem_requests_total[1m])" in queries
    assert "histogram_quantile(0.5, sum by (le) (rate(beem_request_duration_seconds_bucket" in queries
    assert "histogram_quantile(0.95, sum by (le) (rate(beem_request_duration_seconds_bucket" in queries
    assert "beem_exit_layer_bucket" in by_title["exit-layer distribution"]
    saved = by_title["compute saved"]
    assert "beem_layers_computed_total" in saved and "beem_layers_possible_total" in saved
    assert "beem_batch_size" in by_title["batch size"]
    assert "beem_queue_depth" in by_title["queue depth"]
    assert 'status="429"' in by_title["shed load (429) per second"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_the_early_exit_health_panels_are_there() -> None:
    """What the alert rules (docker/prometheus/alerts.yml) watch, drawn: agreement against its calibrated level and
    the alert line, accuracy loss against budget, the live threshold and its changes, versions and reloads."""
    by_title = {panel["title"]: " ".join(t["expr"] for t in panel["targets"]) for panel in dashboard()["panels"]}
    agreement = by_title["Shadow agreement vs calibrated"]
    assert "beem_shadow_agreement)" in agreement and "beem_shadow_agreement_calibrated)" in agreement
    assert "beem_shadow_agreement_calibrated - beem_shadow_agreement_noise" in agreement
    loss = by_title["Estimated accuracy loss vs budget"]
    assert "beem_shadow_estimated_accuracy_loss" in loss and "beem_accuracy_budget" in loss
    threshold = by_title["Live threshold (alpha)"]
    assert "beem_policy_threshold)" in threshold and "beem_policy_threshold_changes_total" in threshold
    versions = by_title["Model versions / reloads"]
    assert "beem_model_serving_version" in versions and "by (model, outcome)" in versions
    assert "beem_model_reloads_total" in versions
