"""The load generator against a real caption server (the tiny caption bundle, uvicorn in a thread): a folder of
rendered scenes is sent to /v1/caption under two policies, through the library and through `beem loadtest`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from beem.bundle.manifest import read_manifest
from beem.captioning.scene_generator import generate_coco_scenes, read_idx
from loadtest.load_report import summarize
from loadtest.load_runner import LoadPlan, run_plan
from loadtest.workload import image_workload
from service.app import create_app
from service.settings import ServerSettings
from tests.loadtest.test_load_generator import REPO_ROOT, SUMMARY_KEYS, serve_in_thread

POLICIES = ("full", "beem-a")
REQUESTS = 6  # per policy


@pytest.fixture(scope="module")
def num_layers(tiny_caption_bundle_dir: Path) -> int:
    manifest = read_manifest(tiny_caption_bundle_dir)
    assert manifest.task == "caption"
    return manifest.num_layers


@pytest.fixture(scope="module")
def caption_url(tiny_caption_bundle_dir: Path) -> Iterator[str]:
    # These tests read the load generator's report, not shedding: a wait budget no busy test machine reaches (at the
    # default 500 ms a slow drain measured under the full suite's load shed every request of one run).
    settings = ServerSettings(bundle=tiny_caption_bundle_dir, max_batch_wait_ms=5, max_queue_wait_ms=60_000)
    with serve_in_thread(create_app(settings), ready_path="/readyz") as url:
        yield url


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory, fake_fashion_mnist_dir: Path) -> Path:
    """Three rendered scenes (PNG), plus a file the workload must skip."""
    root = tmp_path_factory.mktemp("caption_load")
    images = read_idx(fake_fashion_mnist_dir / "train-images-idx3-ubyte.gz")
    labels = read_idx(fake_fashion_mnist_dir / "train-labels-idx1-ubyte.gz")
    generate_coco_scenes(root, 3, seed=4, images=images, labels=labels)
    folder = root / "images"
    (folder / "README.txt").write_text("not an image")
    return folder


def _requests_total(url: str, policy: str, status: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    line = f'beem_requests_total{{model="tiny-captioner",policy="{policy}",route="/v1/caption",status="{status}"}} '
    return next((float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)), 0.0)


def _check_summary(summary: dict[str, Any], policy: str, num_layers: int) -> None:
    assert set(summary) >= SUMMARY_KEYS, policy
    assert summary["requests"] == summary["ok"] == REQUESTS, (policy, summary)
    assert summary["errors"] == summary["shed"] == 0, (policy, summary)
    assert 0 < summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"], (policy, summary)
    assert summary["throughput_rps"] > 0, policy
    assert 1.0 <= summary["mean_exit_layer"] <= num_layers, (policy, summary)
    assert summary["accuracy"] is None, policy  # images carry no label to judge


def test_an_image_folder_load_tests_the_caption_server(caption_url: str, image_folder: Path, num_layers: int) -> None:
    workload = image_workload(image_folder)
    assert len(workload.images) == 3 and workload.route == "/v1/caption"
    before = {policy: _requests_total(caption_url, policy, "200") for policy in POLICIES}
    plan = LoadPlan(POLICIES, "closed", concurrency=3, requests=REQUESTS, rounds=2)
    results = asyncio.run(run_plan(caption_url, workload, plan, show_progress=False))
    assert set(results) == set(POLICIES)
    for policy, result in results.items():
        assert all(record.policy == policy and record.status == 200 for record in result.records), policy
        assert all(1.0 <= (record.exit_layer or 0) <= num_layers for record in result.records), policy
        _check_summary(summarize(result), policy, num_layers)
        # The server saw every request under the policy the report files it under.
        assert _requests_total(caption_url, policy, "200") - before[policy] == REQUESTS, policy
    assert summarize(results["full"])["mean_exit_layer"] == num_layers
    assert summarize(results["beem-a"])["mean_exit_layer"] <= num_layers


def test_the_loadtest_command_reports_captions_per_policy(
    caption_url: str, image_folder: Path, num_layers: int
) -> None:
    command = [sys.executable, "-m", "service.cli", "loadtest", "--url", caption_url, "--images", str(image_folder),
               "--policies", ",".join(POLICIES), "--concurrency", "3", "--requests", str(REQUESTS), "--rounds", "2",
               "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False)
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    assert output["mode"] == "closed"
    assert output["num_layers"] == num_layers  # read from the caption server's /v1/models
    assert list(output["policies"]) == list(POLICIES)
    for policy, summary in output["policies"].items():
        _check_summary(summary, policy, num_layers)
    assert output["policies"]["full"]["mean_exit_layer"] == num_layers


def test_a_corrupt_image_in_the_folder_is_reported_as_errors(caption_url: str, tmp_path: Path) -> None:
    """The load generator counts 4xx answers as errors rather than failing or dropping them."""
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(64))
    plan = LoadPlan(("full",), "closed", concurrency=2, requests=2, rounds=1)
    results = asyncio.run(run_plan(caption_url, image_workload(tmp_path), plan, show_progress=False))
    summary = summarize(results["full"])
    assert summary["requests"] == summary["errors"] == 2 and summary["ok"] == 0, summary
    assert all(400 <= record.status < 500 for record in results["full"].records)
    assert summary["p50_ms"] is None and summary["mean_exit_layer"] is None
