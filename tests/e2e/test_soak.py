"""The soak's short form (`bench/soak.py`, issue 25): under a minute of the whole mix on one real `beem serve` over a
model store of two tiny classifiers and the tiny captioner: classify, TEI predict, v2 infer and caption requests,
bad input, clients that hang up mid-request, hot swaps in turn and the shadow monitor on.

What must hold however short the run: every request but the hang-ups answered once, no 5xx, every bad request a
4xx, every version's ledger balanced (the swapped-out ones' from /v1/models), the server's rows equal to the rows
the clients got an answer for plus at most the hung-up ones, every swap loaded and its old version unloaded.
Memory, descriptor and latency growth are the long run's to judge: in under a minute they follow the load's swings."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.soak import run
from bench.soak_traffic import DEFAULT_MIX, ROUTES
from tests.api.test_caption_api import encoded, scene
from tests.model_store_builders import model_store

HARD_CHECKS = (
    "unanswered",
    "status_5xx",
    "bad_requests_not_4xx",
    "ledger_unbalanced_versions",
    "server_rows_minus_client_engine_rows",
    "shed_rows_minus_client_429_rows",
)  # not the growth checks: open descriptors follow the connections in flight, and a minute cannot tell growth


def test_a_short_soak_answers_every_request_once_and_its_ledger_balances(
    tmp_path: Path, tiny_bundle_dir: Path, tiny_caption_bundle_dir: Path
) -> None:
    store = model_store(tmp_path / "store", {"tiny-a": tiny_bundle_dir, "tiny-b": tiny_bundle_dir,
                                             "tiny-captioner": tiny_caption_bundle_dir})  # fmt: skip
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(4):
        (images / f"scene-{seed}.png").write_bytes(encoded(scene(seed)))
    args = argparse.Namespace(minutes=0.75, load_share=0.7, probe_s=5.0, probe_clients=16, swap_every_s=15.0,
                              sample_every_s=10.0, compare_minutes=0.2, shadow_fraction=0.05, timeout_s=30.0, seed=0,
                              store=str(store), images=str(images), work_dir=str(tmp_path / "work"))  # fmt: skip

    results = run(args)

    checks = results["checks"]
    assert {name: checks[name] for name in HARD_CHECKS if not checks[name]["met"]} == {}, results["rows"]
    assert results["status_5xx"] == 0 and results["unanswered"] == 0
    assert results["duration_minutes"] >= 0.75
    assert set(results["requests"]) == set(DEFAULT_MIX)
    for route in ROUTES:  # every route answered, and only with 200 or a 429 refusal
        assert results["requests"][route]["statuses"].get("200", 0) > 0, results["requests"][route]
        assert set(results["requests"][route]["statuses"]) <= {"200", "429"}, results["requests"][route]
    swaps = results["swaps"]
    assert len(swaps) >= 2 and all(s["reload_status"] == 200 and s["swap_s"] is not None for s in swaps), swaps
    unloaded = [name for name, ledger in results["ledgers"].items() if "in_flight" not in ledger]
    assert len(unloaded) == len(swaps)  # each swap's old version left its final ledger in /v1/models
    assert results["rows"]["server"]["answered"] > 0 and results["rows"]["hung_up"] > 0
    assert len(results["samples"]) == 1 + round(0.75 * 60 / 10)
