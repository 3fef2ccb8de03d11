"""The server as deployed, scraped by a real Prometheus: `beem serve` (the image's command) runs natively on the
tiny bundle, a Prometheus server (Debian package `prometheus`) scrapes it every second, and the exit-layer and
latency series must arrive in Prometheus' query API."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_real_server import ServerProcess

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary: apt-get install prometheus (.ci/run and make setup do)"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def beem_server(tiny_bundle_dir: Path) -> Iterator[ServerProcess]:
    running = ServerProcess(tiny_bundle_dir)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def prometheus(beem_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("prometheus")
    config = directory / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: beem\n"
        "    metrics_path: /metrics\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{beem_server.port}']}}]\n"
    )
    port = _free_port()
    assert PROMETHEUS is not None
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else "prometheus exited"
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready in 30 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _query(url: str, expression: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expression}, timeout=5)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _wait_for(url: str, expression: str, timeout_s: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        result = _query(url, expression)
        if result and all(float(sample["value"][1]) > 0 for sample in result):
            return result
        assert time.monotonic() < deadline, f"{expression}: nothing in Prometheus after {timeout_s} s ({result})"
        time.sleep(0.5)


def test_exit_layer_and_latency_series_reach_prometheus(beem_server: ServerProcess, prometheus: str) -> None:
    for index in range(12):
        policy = "full" if index % 2 else "beem-a"
        body = {"inputs": [f"a fine film number {index}", "dull"], "policy": {"name": policy}}
        assert httpx.post(f"{beem_server.url}/v1/classify", json=body, timeout=30).status_code == 200
    exits = _wait_for(prometheus, 'beem_exit_layer_count{task="classification"}')
    by_policy = {sample["metric"]["policy"]: float(sample["value"][1]) for sample in exits}
    # Scrapes are a second apart: wait until the last one holds all 24 rows.
    deadline = time.monotonic() + 30
    while by_policy != {"beem-a": 12.0, "full": 12.0}:
        assert time.monotonic() < deadline, by_policy
        time.sleep(0.5)
        by_policy = {s["metric"]["policy"]: float(s["value"][1]) for s in _query(prometheus, "beem_exit_layer_count")}
    assert {s["metric"]["job"] for s in exits} == {"beem"}
    latency = _wait_for(prometheus, 'beem_request_duration_seconds_count{route="/v1/classify"}')
    assert float(latency[0]["value"][1]) == 12
    (p95,) = _wait_for(prometheus, "histogram_quantile(0.95, sum by (le) (beem_request_duration_seconds_bucket))")
    assert 0 < float(p95["value"][1]) < 30
    full_depth = _query(prometheus, 'beem_exit_layer_bucket{policy="full", le="2.0"}')
    assert [float(s["value"][1]) for s in full_depth] == [0.0]  # full depth never leaves before layer 3
    (up,) = _query(prometheus, 'up{job="beem"}')
    assert up["value"][1] == "1"
