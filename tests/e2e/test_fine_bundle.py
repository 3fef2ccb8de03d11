"""The committed five-class bundle, served by a real `beem serve --bundle` process."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from beem.bundle.manifest import read_manifest, resolve_bundle_dir
from beem.data.fine_grained import FINE_LABEL_NAMES
from tests.e2e.test_real_server import ServerProcess

FINE_BUNDLE = Path(__file__).resolve().parents[2] / "model_store" / "minilm-rt-fine-sentiment"


@pytest.mark.skipif(not FINE_BUNDLE.is_dir(), reason="no five-class bundle in model_store/ (beem build --preset fine)")
def test_the_five_class_bundle_is_served_with_its_labels_in_rating_order() -> None:
    server = ServerProcess(FINE_BUNDLE)
    try:
        server.wait_ready()
        model = httpx.get(f"{server.url}/v1/models").json()["data"][0]
        assert model["labels"] == list(FINE_LABEL_NAMES) and model["num_layers"] == 6
        texts = ["a masterpiece: moving, funny and beautifully made, the best film of the year",
                 "an unbearable, incompetent mess, the worst film i have ever sat through"]  # fmt: skip
        body = httpx.post(f"{server.url}/v1/classify", json={"inputs": texts}).json()
        labels = [result["label"] for result in body["results"]]
        assert labels[0] in ("positive", "very positive") and labels[1] in ("negative", "very negative"), body
        default = read_manifest(resolve_bundle_dir(FINE_BUNDLE)).default_policy
        assert all(result["policy"] == default for result in body["results"]), body
        scores = httpx.post(f"{server.url}/predict", json={"inputs": texts[0]}).json()  # TEI: every label's score
        assert sorted(entry["label"] for entry in scores) == sorted(FINE_LABEL_NAMES), scores
    finally:
        server.stop()
