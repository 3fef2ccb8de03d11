"""The full-depth peers of bench/runtime_peers (issue 24) on the tiny bundle: each one's logits are the bundle's
own full-depth logits (the int8 peer's labels mostly), and the peer endpoint answers what `beem loadtest` reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from beem.bundle.bundle_reader import load_bundle
from bench.runtime_peers.in_process import accuracy, engine_system, peer_system, time_in_process
from bench.runtime_peers.peer_models import build_peer
from bench.runtime_peers.peer_server import create_peer_app
from bench.runtime_peers.report import cpu_description
from tests.engine.engine_driver import TEXTS

pytest.importorskip("onnxruntime", reason="the bench extra (pip install -e '.[bench]') runs these")


def full_depth_logits(bundle_dir: Path, texts: list[str]) -> torch.Tensor:
    """(B, C) the bundle's final exit through our layer-by-layer walk: what every peer must reproduce."""
    bundle = load_bundle(bundle_dir)
    encoded = bundle.tokenizer(texts, padding=True, truncation=True, max_length=bundle.max_length,
                               return_tensors="pt")  # fmt: skip
    with torch.inference_mode():
        return bundle.model.all_exit_logits(encoded["input_ids"], encoded["attention_mask"],
                                            encoded.get("token_type_ids"))[-1]  # fmt: skip


@pytest.mark.parametrize(("name", "tolerance"), [("plain", 1e-5), ("onnx-fp32", 1e-4), ("torch-compile", 1e-4)])
def test_every_full_precision_peer_gives_the_bundles_final_exit(
    tiny_bundle_dir: Path, tmp_path: Path, name: str, tolerance: float
) -> None:
    texts = list(TEXTS[:6])
    peer = build_peer(name, load_bundle(tiny_bundle_dir), tmp_path, threads=1)
    torch.testing.assert_close(peer.logits(texts), full_depth_logits(tiny_bundle_dir, texts), atol=tolerance, rtol=0)
    assert "warm_up" in peer.preparation_s


def test_the_int8_peer_is_close_and_its_files_are_made_once(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    bundle, texts = load_bundle(tiny_bundle_dir), list(TEXTS[:8])
    fp32 = build_peer("onnx-fp32", bundle, tmp_path, threads=1)
    assert {"export", "fuse", "quantize"} <= fp32.preparation_s.keys()
    int8 = build_peer("onnx-int8", bundle, tmp_path, threads=1)
    assert "export" not in int8.preparation_s, "the second ONNX peer reuses the files the first made"
    reference, quantized = full_depth_logits(tiny_bundle_dir, texts), int8.logits(texts)
    assert not torch.equal(quantized, fp32.logits(texts)), "int8 weights change the numbers"
    assert (quantized - reference).abs().max() < 0.5 * reference.abs().max()


def test_the_peer_endpoint_answers_what_the_load_generator_reads(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle_dir)
    peer = build_peer("plain", bundle, tmp_path, threads=1)
    with TestClient(create_peer_app(bundle, peer)) as client:
        assert client.get("/readyz").status_code == 200
        body = {"inputs": TEXTS[0], "policy": {"name": "plain"}, "truncate": True}
        (result,) = client.post("/v1/classify", json=body).json()["results"]
        probabilities = torch.softmax(full_depth_logits(tiny_bundle_dir, [TEXTS[0]])[0], dim=-1)
        assert result["label"] == bundle.labels[int(probabilities.argmax())]
        assert result["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)
        assert result["exit_layer"] == result["num_layers"] == bundle.num_layers
        assert client.post("/v1/classify", json={"text": "no inputs"}).status_code == 422


def test_in_process_systems_agree_at_full_depth_and_are_timed(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    from beem.policies.exit_policies import FullDepthPolicy
    from bench.engine_in_thread import engine_in_thread

    bundle = load_bundle(tiny_bundle_dir)
    texts = list(TEXTS[:12])
    plain = peer_system(build_peer("plain", bundle, tmp_path, threads=1))
    ours = engine_system("full", engine_in_thread(tiny_bundle_dir), bundle, FullDepthPolicy())
    labels = plain.classify(texts)
    assert ours.classify(texts) == labels
    assert accuracy(ours, texts, labels) == {"accuracy": 1.0, "mean_exit_layer": float(bundle.num_layers)}
    timed = time_in_process([plain, ours], texts, rounds=2, batch1_texts=3, batch16_groups=1)
    assert set(timed) == {"plain", "full"}
    assert all(v["batch1_p50_ms"] > 0 and v["batch16_texts_per_s"] > 0 for v in timed.values())


def test_the_cpu_description_reads_model_name_and_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu avx avx2 fma\n\n"
                       "processor\t: 1\nmodel name\t: Some CPU 9000\nflags\t\t: fpu avx avx2 fma\n")  # fmt: skip
    described = cpu_description(cpuinfo)
    assert described["model_name"] == "Some CPU 9000"
    assert described["flags"]["avx2"] and not described["flags"]["avx512_vnni"]
