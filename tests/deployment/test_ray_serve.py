"""The app on Ray Serve: a local single-node Ray cluster, two replicas, real requests through Serve's HTTP proxy."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

try:
    import ray
    from ray import serve
except ImportError:
    pytest.skip(
        "Ray Serve is not installed; `pip install 'ray[serve]==2.60.0'` to run the Ray Serve deployment tests",
        allow_module_level=True,
    )

from ray.serve.schema import ServeDeploySchema, ServeInstanceDetails

from service.ray_serve_app import DEPLOYMENT_NAME, REPLICA_HEADER, app_builder

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = REPO_ROOT / "deploy" / "ray" / "serve_config.yaml"
APP_NAME = "beem"
TEXTS = ["a gorgeous, moving film", "dull and far too long", "the plot never comes together", "fine acting"]
REQUESTS = 40


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def serve_url(tiny_bundle_dir: Path) -> Iterator[str]:
    port = _free_port()
    # address="local": always a fresh cluster, never one another process on this machine started.
    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=100 * 1024**2)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # min = max = 2: two replicas from the start, still configured through the autoscaler. A low
        # max_ongoing_requests keeps a burst from piling onto whichever replica the proxy picks first.
        app = app_builder({
            "bundle": str(tiny_bundle_dir), "max_batch_wait_ms": 5,
            "min_replicas": 2, "max_replicas": 2, "target_ongoing_requests": 4, "max_ongoing_requests": 8,
        })  # fmt: skip
        serve.run(app, name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _deployment_details() -> ServeInstanceDetails:
    # What `serve status` and the dashboard's REST API show, read from the controller.
    details = ServeInstanceDetails(**serve.context._get_global_client().get_serve_details())
    return details.applications[APP_NAME].deployments[DEPLOYMENT_NAME]


def test_requests_are_answered_and_spread_across_two_replicas(serve_url: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(f"{serve_url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "no replica became ready"
        time.sleep(0.2)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=serve_url, timeout=60) as client:
            return await asyncio.gather(*(
                client.post("/v1/classify", json={"inputs": TEXTS[i % len(TEXTS)]}) for i in range(REQUESTS)
            ))  # fmt: skip

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * REQUESTS, [r.text for r in responses if r.status_code != 200]
    for response in responses:
        body = response.json()
        assert body["model"].startswith("tiny-sentiment:")
        [result] = body["results"]
        assert result["label"] in ("negative", "positive")
        assert 0 <= result["score"] <= 1
        assert 1 <= result["exit_layer"] <= result["num_layers"] == 3
        assert body["mean_exit_layer"] == result["exit_layer"]

    answered_by = {r.headers[REPLICA_HEADER] for r in responses}
    assert len(answered_by) == 2, answered_by
    live_replicas = {replica.replica_id for replica in _deployment_details().replicas}
    assert {name.split("@")[0] for name in answered_by} == live_replicas


def test_replicas_are_autoscaled_on_ongoing_requests(serve_url: str) -> None:
    deployment = _deployment_details()
    autoscaling = deployment.deployment_config.autoscaling_config
    assert autoscaling is not None
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (2, 2)
    assert autoscaling["target_ongoing_requests"] == 4
    assert deployment.deployment_config.max_ongoing_requests == 8
    assert deployment.target_num_replicas == 2


def test_serve_config_file_is_valid_and_autoscales_on_ongoing_requests() -> None:
    config = ServeDeploySchema(**yaml.safe_load(SERVE_CONFIG.read_text()))
    [application] = config.applications
    assert application.import_path == "service.ray_serve_app:app_builder"
    assert "BEEM_BUNDLE" in application.runtime_env["env_vars"]
    [deployment] = application.deployments
    assert deployment.name == DEPLOYMENT_NAME
    assert deployment.autoscaling_config["target_ongoing_requests"] > 0
    assert deployment.autoscaling_config["min_replicas"] <= deployment.autoscaling_config["max_replicas"]


def test_builder_rejects_an_unknown_argument(tiny_bundle_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_batch_sise"):
        app_builder({"bundle": str(tiny_bundle_dir), "max_batch_sise": 8})


def test_the_plain_server_does_not_import_ray() -> None:
    # A fresh interpreter: this module has imported ray already.
    check = "import sys, service.app, service.cli; assert 'ray' not in sys.modules, 'service.app imports ray'"
    subprocess.run([sys.executable, "-c", check], check=True, cwd=REPO_ROOT, timeout=120)
