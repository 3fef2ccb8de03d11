"""The load generator against real HTTP servers: the tiny bundle served by uvicorn in a thread, and stub servers
that shed (429) or fail (500) every request; the `beem loadtest` command end to end; plan and percentile rules."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from loadtest.load_report import format_table, percentile_ms, summarize
from loadtest.load_runner import LoadPlan, PhaseResult, run_plan
from loadtest.workload import image_workload, text_workload
from service.app import create_app
from service.settings import ServerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICIES = ("beem-a", "full")
SUMMARY_KEYS = {"requests", "p50_ms", "p95_ms", "p99_ms", "throughput_rps", "errors", "shed", "mean_exit_layer",
                "accuracy"}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve_in_thread(app: Any, ready_path: str | None = None, timeout_s: float = 60) -> Iterator[str]:
    """Serve `app` with a real uvicorn in a background thread; yield its base URL once it answers (and, with
    `ready_path`, once that path is 200); stop the server and join the thread on the way out."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            assert thread.is_alive(), "the server thread died during start-up"
            assert time.monotonic() < deadline, f"server not started in {timeout_s} s"
            time.sleep(0.02)
        while ready_path is not None:
            response = httpx.get(f"{url}{ready_path}", timeout=5)
            if response.status_code == 200:
                break
            assert time.monotonic() < deadline, f"{ready_path} not 200 in {timeout_s} s: {response.text}"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the server thread did not stop"


@pytest.fixture(scope="module")
def server_url(tiny_bundle_dir: Path) -> Iterator[str]:
    with serve_in_thread(create_app(ServerSettings(bundle=tiny_bundle_dir)), ready_path="/readyz") as url:
        yield url


def _stub_app(status: int) -> FastAPI:
    """Answers every POST /v1/classify with `status` (429 carries Retry-After, as a shedding server does)."""
    app = FastAPI()

    @app.post("/v1/classify")
    async def classify() -> JSONResponse:
        headers = {"Retry-After": "1"} if status == 429 else None
        return JSONResponse({"error": {"message": "stub", "code": str(status)}}, status_code=status, headers=headers)

    return app


def _check_counts(summary: dict[str, Any]) -> None:
    assert summary["requests"] == summary["ok"] + summary["errors"] + summary["shed"]


def _check_no_transport_or_server_errors(result: PhaseResult) -> None:
    """Every request got an HTTP answer and none was a 5xx. (Some are 422: see the truncation test below.)"""
    assert all(r.status != 0 and r.status < 500 for r in result.records), [r.status for r in result.records]


def test_closed_loop_against_the_real_server(server_url: str, tiny_data_file: Path) -> None:
    workload = text_workload(tiny_data_file, "all")
    plan = LoadPlan(POLICIES, "closed", concurrency=4, requests=40, rounds=2)
    results = asyncio.run(run_plan(server_url, workload, plan, show_progress=False))
    assert set(results) == set(POLICIES)
    for policy, result in results.items():
        summary = summarize(result)
        _check_counts(summary)
        assert summary["requests"] == 40, policy  # 2 rounds x 20
        assert summary["ok"] > 0 and summary["shed"] == 0, policy
        _check_no_transport_or_server_errors(result)
        assert all(r.policy == policy for r in result.records)
        assert all(r.latency_s > 0 for r in result.records)
        answered = [r for r in result.records if r.status == 200]
        assert all(r.exit_layer is not None and 1 <= r.exit_layer <= 3 for r in answered)
        assert all(r.correct is not None for r in answered)  # the data is labelled
        assert 0.0 <= summary["accuracy"] <= 1.0
        assert summary["throughput_rps"] > 0
        assert 0 < summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"]
        assert 1.0 <= summary["mean_exit_layer"] <= 3.0
    assert summarize(results["full"])["mean_exit_layer"] == 3.0


def test_open_loop_with_a_request_count(server_url: str, tiny_data_file: Path) -> None:
    workload = text_workload(tiny_data_file, "all")
    plan = LoadPlan(POLICIES, "open", rate=200.0, requests=20, rounds=1, duration_s=None)
    results = asyncio.run(run_plan(server_url, workload, plan, show_progress=False))
    for policy, result in results.items():
        summary = summarize(result)
        _check_counts(summary)
        assert summary["requests"] == 20 and summary["ok"] > 0 and summary["shed"] == 0, policy
        _check_no_transport_or_server_errors(result)  # every request got an answer
        assert summary["throughput_rps"] > 0
        assert all(r.latency_s > 0 for r in result.records)


def test_a_server_answering_429_is_reported_as_shed_load(tiny_data_file: Path) -> None:
    workload = text_workload(tiny_data_file, "all")
    plan = LoadPlan(POLICIES, "closed", concurrency=4, requests=12, rounds=2)
    with serve_in_thread(_stub_app(429)) as url:
        results = asyncio.run(run_plan(url, workload, plan, show_progress=False))
    for policy, result in results.items():
        summary = summarize(result)
        assert summary["requests"] == 12, policy
        assert summary["shed"] == 12 and summary["errors"] == 0 and summary["ok"] == 0
        assert summary["p50_ms"] is None and summary["p95_ms"] is None and summary["p99_ms"] is None
        assert summary["throughput_rps"] == 0
        assert summary["mean_exit_layer"] is None and summary["accuracy"] is None


def test_a_server_answering_500_is_reported_as_errors(tiny_data_file: Path) -> None:
    workload = text_workload(tiny_data_file, "all")
    plan = LoadPlan(POLICIES, "closed", concurrency=4, requests=12, rounds=2)
    with serve_in_thread(_stub_app(500)) as url:
        results = asyncio.run(run_plan(url, workload, plan, show_progress=False))
    for policy, result in results.items():
        summary = summarize(result)
        assert summary["requests"] == 12, policy
        assert summary["errors"] == 12 and summary["shed"] == 0 and summary["ok"] == 0
        assert summary["p50_ms"] is None and summary["throughput_rps"] == 0


def test_an_unreachable_server_is_reported_as_errors(tiny_data_file: Path) -> None:
    workload = text_workload(tiny_data_file, "all")
    plan = LoadPlan(("full",), "closed", concurrency=2, requests=4, rounds=1, timeout_s=5)
    results = asyncio.run(run_plan(f"http://127.0.0.1:{_free_port()}", workload, plan, show_progress=False))
    summary = summarize(results["full"])
    assert summary["requests"] == summary["errors"] == 4
    assert all(r.status == 0 for r in results["full"].records)


def _loadtest_cli(url: str, data_file: Path, *flags: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "service.cli", "loadtest", "--url", url, "--policies", ",".join(POLICIES),
               "--data", str(data_file), "--split", "all", "--json", *flags]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False)
    assert done.returncode == 0, done.stderr
    output: dict[str, Any] = json.loads(done.stdout)
    return output


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_closed_loop_prints_json_and_plots(server_url: str, tiny_data_file: Path, tmp_path: Path) -> None:
    output = _loadtest_cli(
        server_url, tiny_data_file, "--concurrency", "4", "--requests", "20", "--rounds", "2",
        "--plot-dir", str(tmp_path),
    )  # fmt: skip
    assert output["num_layers"] == 3
    assert output["mode"] == "closed"
    assert set(output["policies"]) == set(POLICIES)
    for policy, summary in output["policies"].items():
        assert set(summary) >= SUMMARY_KEYS, policy
        assert summary["requests"] == 20 and summary["shed"] == 0, policy
    assert output["policies"]["full"]["mean_exit_layer"] == 3.0
    assert _is_png(tmp_path / "latency_cdf.png")


def test_cli_rate_sweep_prints_json_and_plots(server_url: str, tiny_data_file: Path, tmp_path: Path) -> None:
    output = _loadtest_cli(
        server_url, tiny_data_file, "--rates", "50,100", "--requests", "10", "--rounds", "1",
        "--plot-dir", str(tmp_path),
    )  # fmt: skip
    assert output["num_layers"] == 3
    assert output["mode"] == "open-sweep"
    assert set(output["sweep"]) == set(POLICIES)
    for policy, points in output["sweep"].items():
        assert [p["rate"] for p in points] == [50.0, 100.0], policy
        assert all(set(p) >= SUMMARY_KEYS and p["requests"] == 10 for p in points), policy
    assert set(output["sustained_rate_p95_under_100ms"]) == set(POLICIES)
    assert all(rate in (None, 50.0, 100.0) for rate in output["sustained_rate_p95_under_100ms"].values())
    assert _is_png(tmp_path / "rate_sweep.png")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "sideways", "requests": 10, "duration_s": None},
        {"mode": "closed", "requests": 10, "duration_s": 5.0},  # both
        {"mode": "open", "requests": 10, "duration_s": 5.0},  # both
        {"mode": "closed", "requests": None, "duration_s": None},  # neither
        {"mode": "open", "requests": None, "duration_s": None},  # neither
    ],
    ids=["bad-mode", "closed-both", "open-both", "closed-neither", "open-neither"],
)
def test_load_plan_rejects_bad_plans(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LoadPlan(POLICIES, **kwargs)


def test_load_plan_accepts_either_a_duration_or_a_count() -> None:
    assert LoadPlan(POLICIES, "closed", duration_s=5.0).duration_s == 5.0
    assert LoadPlan(POLICIES, "open", requests=10, duration_s=None).requests == 10


@pytest.mark.parametrize(
    ("latencies_s", "q", "expected_ms"),
    [
        ([], 50, None),
        ([0.001, 0.002, 0.003, 0.004], 50, 2.0),
        ([0.001, 0.002, 0.003, 0.004], 95, 4.0),
        ([0.004, 0.001, 0.003, 0.002], 50, 2.0),  # unordered input
        ([0.01], 99, 10.0),
    ],
)
def test_percentile_ms(latencies_s: list[float], q: float, expected_ms: float | None) -> None:
    result = percentile_ms(latencies_s, q)
    if expected_ms is None:
        assert result is None
    else:
        assert result == pytest.approx(expected_ms)


def test_summary_of_no_records() -> None:
    summary = summarize(PhaseResult())
    assert summary["requests"] == summary["ok"] == 0
    assert summary["throughput_rps"] == 0.0
    assert summary["p50_ms"] is None and summary["mean_exit_layer"] is None and summary["accuracy"] is None


# Defects found in loadtest/ while writing these tests: each test states the intended behaviour.


def test_every_text_of_the_bundles_own_data_is_answered(server_url: str, tiny_data_file: Path) -> None:
    workload = text_workload(tiny_data_file, "all")
    plan = LoadPlan(("full",), "closed", concurrency=4, requests=20, rounds=1)
    results = asyncio.run(run_plan(server_url, workload, plan, show_progress=False))
    summary = summarize(results["full"])
    assert summary["ok"] == summary["requests"] == 20, [r.status for r in results["full"].records]


def _recording_app(bodies: list[dict[str, Any]]) -> FastAPI:
    """Records every POST /v1/classify body and answers like the real route, one result per input."""
    app = FastAPI()

    @app.post("/v1/classify")
    async def classify(request: Request) -> dict[str, Any]:
        body = await request.json()
        bodies.append(body)
        inputs = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
        result = {"label": "yes", "score": 0.9, "exit_layer": 1, "num_layers": 3, "policy": "full", "exits": None}
        return {"model": "stub:1", "results": [result] * len(inputs), "mean_exit_layer": 1.0}

    return app


def test_sentence_pairs_are_sent_as_pairs(tmp_path: Path) -> None:
    data = tmp_path / "pairs.tsv"
    data.write_text("sentence1\tsentence2\tlabel\nthe cat sat\ta cat was sitting\tyes\nit rained\tthe sun shone\tno\n")
    bodies: list[dict[str, Any]] = []
    plan = LoadPlan(("full",), "closed", concurrency=1, requests=2, rounds=1)
    with serve_in_thread(_recording_app(bodies)) as url:
        asyncio.run(run_plan(url, text_workload(data, "all"), plan, show_progress=False))
    assert sorted(json.dumps(body["inputs"]) for body in bodies) == [
        json.dumps([["it rained", "the sun shone"]]),
        json.dumps([["the cat sat", "a cat was sitting"]]),
    ]


@pytest.mark.parametrize(("requests", "rounds"), [(5, 2), (1, 3)])
def test_a_request_count_is_sent_exactly_whatever_the_rounds(requests: int, rounds: int, tiny_data_file: Path) -> None:
    plan = LoadPlan(("full",), "closed", concurrency=2, requests=requests, rounds=rounds)
    with serve_in_thread(_stub_app(429)) as url:
        results = asyncio.run(run_plan(url, text_workload(tiny_data_file, "all"), plan, show_progress=False))
    assert summarize(results["full"])["requests"] == requests


def test_the_comparison_table_lists_every_policy_side_by_side() -> None:
    summaries = {
        "beem-a": {"requests": 10, "ok": 9, "p50_ms": 8.0, "p95_ms": 12.5, "p99_ms": 13.0, "throughput_rps": 120.0,
                   "errors": 0, "shed": 1, "mean_exit_layer": 3.7, "accuracy": 0.851},
        "full": {"requests": 10, "ok": 10, "p50_ms": 12.0, "p95_ms": 15.0, "p99_ms": 16.0, "throughput_rps": 90.0,
                 "errors": 0, "shed": 0, "mean_exit_layer": 6.0, "accuracy": None},
    }  # fmt: skip
    lines = format_table(summaries, 6).splitlines()
    assert lines[0].split() == ["policy", "requests", "ok", "p50", "ms", "p95", "ms", "p99", "ms", "req/s", "errors",
                                "shed", "exit", "acc", "%"]  # fmt: skip
    assert lines[1].split() == ["beem-a", "10", "9", "8.0", "12.5", "13.0", "120.0", "0", "1", "3.70", "85.10"]
    assert lines[2].split()[-1] == "-"  # no labels, no accuracy
    assert lines[-1] == "(model depth 6 layers)"


def _caption_stub(received: list[dict[str, Any]]) -> FastAPI:
    """Stands in for issue 5's POST /v1/caption: base64 image and policy in, caption and exit depths out."""
    app = FastAPI()

    @app.post("/v1/caption")
    async def caption(body: dict[str, Any]) -> dict[str, Any]:
        received.append(body)
        return {"caption": "a shirt on the left", "token_exit_layers": [2, 3, 4], "mean_exit_layer": 3.0}

    return app


def test_an_image_folder_is_load_tested_against_the_caption_route(tmp_path: Path) -> None:
    import base64

    import numpy as np
    from matplotlib import pyplot

    for index in range(3):
        pyplot.imsave(tmp_path / f"scene_{index}.png", np.full((8, 8, 3), index / 3))
    (tmp_path / "notes.txt").write_text("not an image")
    workload = image_workload(tmp_path)
    assert len(workload.images) == 3 and workload.route == "/v1/caption"
    received: list[dict[str, Any]] = []
    plan = LoadPlan(POLICIES, "closed", concurrency=2, requests=6, rounds=2)
    with serve_in_thread(_caption_stub(received)) as url:
        results = asyncio.run(run_plan(url, workload, plan, show_progress=False))
    for policy, result in results.items():
        summary = summarize(result)
        assert summary["ok"] == 6 and summary["mean_exit_layer"] == 3.0 and summary["accuracy"] is None, policy
    assert {body["policy"]["name"] for body in received} == set(POLICIES)
    assert base64.b64decode(received[0]["image"]).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match=r"no \.png"):
        image_workload(tmp_path / "empty-or-missing")
