"""The shadow agreement monitor and online threshold control through the real app and engine: early-exited rows
re-run at full depth and compared with full depth's own answers, and the controller raising BEEM's alpha when
drifted inputs make early exits disagree, until agreement is back at its target."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.settings import ServerSettings
from tests.api.conftest import ready_client
from tests.api.test_model_store import metric
from tests.engine.engine_driver import TEXTS

MODEL = "tiny-sentiment"


@pytest.fixture(scope="module")
def shadowing(tiny_bundle_dir: Path) -> Iterator[TestClient]:
    yield from ready_client(ServerSettings(bundle=tiny_bundle_dir, shadow_fraction=1.0, poll_interval_s=0))


def shadow_entry(client: TestClient) -> dict[str, object]:
    (entry,) = client.get("/v1/models").json()["data"]
    return dict(entry)


def wait_for_comparisons(client: TestClient, count: float) -> str:
    deadline = time.monotonic() + 30
    while True:
        metrics = client.get("/metrics").text
        if metric(metrics, "beem_shadow_rows_total", outcome="compared") >= count:
            return metrics
        assert time.monotonic() < deadline, "shadow rows were not run"
        time.sleep(0.02)


def test_every_sampled_early_exit_is_compared_with_full_depth(shadowing: TestClient) -> None:
    answered = shadowing.post("/v1/classify", json={"inputs": TEXTS}).json()["results"]
    full = shadowing.post("/v1/classify", json={"inputs": TEXTS, "policy": {"name": "full"}}).json()["results"]
    early = [(a, f) for a, f in zip(answered, full, strict=True) if a["exit_layer"] < a["num_layers"]]
    assert early, "the tiny bundle's beem-a leaves early on these texts"
    metrics = wait_for_comparisons(shadowing, len(early))
    agree = metric(metrics, "beem_shadow_samples_total", policy="beem-a", result="agree")
    disagree = metric(metrics, "beem_shadow_samples_total", policy="beem-a", result="disagree")
    # The shadow rows ran to full depth: they agree exactly where full depth's own answer has the same label.
    assert agree == sum(a["label"] == f["label"] for a, f in early)
    assert disagree == sum(a["label"] != f["label"] for a, f in early)
    # Shadow rows are no client's rows: only the two requests' rows are counted as answered.
    assert metric(metrics, "beem_rows_total", outcome="answered") == 2 * len(TEXTS)
    # A request with overrides (full depth here) is not monitored: no comparisons for it.
    assert 'policy="full",result=' not in metrics

    shadow = shadow_entry(shadowing)["shadow"]
    assert isinstance(shadow, dict)
    window = shadow["policies"]["beem-a"]
    share_early = len(early) / len(TEXTS)
    assert window["comparisons"] == len(early) and window["early_fraction"] == pytest.approx(share_early)
    assert window["agreement"] == pytest.approx(1 - share_early * (1 - agree / len(early)))
    assert 0 < window["calibrated_agreement"] <= 1
    assert metric(metrics, "beem_shadow_agreement", policy="beem-a") == pytest.approx(window["agreement"])
    assert metric(metrics, "beem_accuracy_budget") == 0.005


def settled_threshold_and_metrics(client: TestClient, attempts: int = 50) -> tuple[float, str]:
    """beem-a's live threshold and a /metrics text read while it did not change (read before and after)."""
    for _ in range(attempts):
        before = shadow_entry(client)["policies"]["beem-a"]["live_threshold"]  # type: ignore[index]
        metrics = client.get("/metrics").text
        after = shadow_entry(client)["policies"]["beem-a"]["live_threshold"]  # type: ignore[index]
        if before == after:
            return float(after), metrics
        time.sleep(0.05)
    raise AssertionError(f"beem-a's threshold kept changing over {attempts} reads")


def drifted_texts(count: int, seed: int = 0) -> list[str]:
    """A shifted input distribution: the movie snippets' words, shuffled across snippets into new sentences."""
    words = " ".join(TEXTS).lower().replace(",", "").replace(".", "").split()
    generator = random.Random(seed)
    return [" ".join(generator.choices(words, k=generator.randint(3, 12))) for _ in range(count)]


def test_online_control_raises_alpha_under_drift_until_agreement_recovers(tiny_bundle_dir: Path) -> None:
    target = 0.95
    settings = ServerSettings(
        bundle=tiny_bundle_dir, shadow_fraction=1.0, poll_interval_s=0, alpha_control=[MODEL],
        alpha_control_target=target, alpha_control_step=0.5, alpha_control_min_comparisons=24, shadow_window=48,
        max_inputs_per_request=16,
    )  # fmt: skip
    for client in ready_client(settings):
        calibrated = shadow_entry(client)["policies"]["beem-a"]["live_threshold"]  # type: ignore[index]
        texts = drifted_texts(16 * 60)
        # What drift does at the calibrated alpha: full depth's exits on the drifted inputs, and where beem-a leaves.
        at_start = client.post("/v1/classify", json={"inputs": texts[:16], "return_exits": True}).json()["results"]
        full = client.post("/v1/classify", json={"inputs": texts[:16], "policy": {"name": "full"}}).json()["results"]
        disagreeing = sum(a["label"] != f["label"] for a, f in zip(at_start, full, strict=True))
        assert disagreeing / 16 > 1 - target, "the drifted inputs should make early exits disagree"

        thresholds, agreements = [calibrated], []
        for start in range(16, len(texts), 16):
            client.post("/v1/classify", json={"inputs": texts[start : start + 16]})
            entry = shadow_entry(client)
            window = entry["shadow"]["policies"]["beem-a"]  # type: ignore[index]
            thresholds.append(entry["policies"]["beem-a"]["live_threshold"])  # type: ignore[index]
            agreements.append(window["agreement"])
            # Recovered: at a raised alpha, agreement at the target on as much evidence as a decision needs.
            evidence = window["rows"] if window["early_fraction"] == 0 else window["comparisons"]
            if (
                thresholds[-1] > calibrated
                and agreements[-1] is not None
                and agreements[-1] >= target >= 0
                and (evidence >= settings.alpha_control_min_comparisons)
            ):
                break
        assert thresholds[-1] > calibrated, "alpha should rise when agreement falls below the target"
        assert all(later >= earlier for earlier, later in itertools.pairwise(thresholds))
        assert agreements[-1] is not None and agreements[-1] >= target, (thresholds, agreements)
        # Shadow comparisons of the last requests finish after their answers and may step the controller again, so
        # the exported threshold is compared with the live one read on both sides of the same /metrics read.
        live, metrics = settled_threshold_and_metrics(client)
        assert live >= thresholds[-1]
        assert metric(metrics, "beem_policy_threshold", policy="beem-a") == live
        ups = metric(metrics, "beem_policy_threshold_changes_total", policy="beem-a", direction="up",
                     reason="agreement")  # fmt: skip
        assert ups >= len(set([*thresholds, live])) - 1  # two steps between reads show as one change


def test_captions_are_shadowed_and_compared_token_for_token(tiny_caption_bundle_dir: Path) -> None:
    from tests.api.test_caption_api import encoded, scene

    settings = ServerSettings(bundle=tiny_caption_bundle_dir, shadow_fraction=1.0, poll_interval_s=0)
    for client in ready_client(settings):
        early = same = 0
        for seed in range(4):
            image = {"image": ("a.png", encoded(scene(seed)), "image/png")}
            answered = client.post("/v1/caption", files=image).json()
            if any(layer < answered["num_layers"] for layer in answered["token_exit_layers"]):
                early += 1
                full = client.post("/v1/caption", files=image, data={"policy": '{"name": "full"}'}).json()
                same += full["tokens"] == answered["tokens"]
        assert early, "the tiny captioner's beem-a leaves early on some token"
        metrics = wait_for_comparisons(client, early)
        assert metric(metrics, "beem_shadow_samples_total", policy="beem-a", result="agree") == same
        assert metric(metrics, "beem_shadow_samples_total", policy="beem-a", result="disagree") == early - same
        window = shadow_entry(client)["shadow"]["policies"]["beem-a"]  # type: ignore[index]
        assert window["comparisons"] == early and window["early_fraction"] == pytest.approx(early / 4)
