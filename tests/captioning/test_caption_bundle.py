"""The caption builder and bundle, end to end on the tiny captioner built by the real builder (tests/conftest.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from beem.bundle.bundle_reader import load_bundle
from beem.bundle.manifest import BundleError, read_manifest
from beem.calibration.exit_cache import ExitCache
from beem.captioning.caption_builder import split_token_cache
from beem.captioning.caption_bundle import load_caption_bundle
from beem.captioning.caption_data import load_caption_items, source_from_provenance, split_images
from beem.captioning.captioner import encode_image_files
from beem.captioning.early_exit_decoding import decode_greedy
from beem.policies.exit_policies import BeemPolicy, FullDepthPolicy

ALL_POLICIES = {"beem-a", "beem-c", "max-prob", "entropy", "patience", "static", "full"}


def test_the_builder_writes_a_verified_caption_bundle(tiny_caption_bundle_dir: Path) -> None:
    manifest = read_manifest(tiny_caption_bundle_dir)  # checks every file's sha256
    assert manifest.task == "caption"
    assert manifest.raw["encoder"]["name"] == "tiny-cnn"
    assert manifest.raw["decoder"]["num_layers"] == manifest.num_layers == 3
    assert set(manifest.policies) == ALL_POLICIES
    assert manifest.default_policy == "beem-a"
    assert {"model.safetensors", "vocabulary.json", "calibration.json", "calibration_exits.safetensors",
            "test_evaluation.json", "report.md", "report.png"} <= set(manifest.raw["files"])  # fmt: skip
    assert manifest.data["kind"] == "fashion-mnist-scenes"
    assert sum(manifest.data["split_sizes"].values()) == manifest.data["num_images"] == 40
    test = json.loads((tiny_caption_bundle_dir / "test_evaluation.json").read_text())
    for name, entry in test["policies"].items():
        assert 0 <= entry["bleu4"] <= 100 and entry["cider"] >= 0, name
        assert 1 <= entry["mean_exit_layer"] <= 3 and entry["layer_speedup"] == pytest.approx(
            3 / entry["mean_exit_layer"]
        )
        assert entry["decoder_ms_per_caption"] > 0
        assert manifest.policies[name].test["bleu4"] == entry["bleu4"]
    assert test["policies"]["full"]["mean_exit_layer"] == 3
    assert "BLEU-4" in (tiny_caption_bundle_dir / "report.md").read_text()


def test_loaded_bundle_reproduces_the_calibration_cache(tiny_caption_bundle_dir: Path, fake_fashion_mnist_dir: Path,
                                                        tmp_path: Path) -> None:  # fmt: skip
    """Calibration ran on the weights as stored: the loaded bundle gives the same teacher-forced exits."""
    bundle = load_caption_bundle(tiny_caption_bundle_dir)
    source = source_from_provenance(dict(bundle.manifest.data), None, None, str(fake_fashion_mnist_dir))
    items = load_caption_items(source, tmp_path)
    calibration = [items[i] for i in split_images(len(items), source.split_fractions, source.split_seed)["calibration"]]
    features = encode_image_files(bundle.captioner, [item.path for item in calibration])
    cache = split_token_cache(bundle.captioner.decoder, features, calibration, bundle.vocabulary)
    stored = ExitCache.load(tiny_caption_bundle_dir / "calibration_exits.safetensors")
    assert cache.exit_labels.tolist() == stored.exit_labels.tolist()
    assert cache.targets.tolist() == stored.targets.tolist()
    assert cache.confidences == pytest.approx(stored.confidences, abs=1e-5)


def test_infinite_alpha_through_the_loaded_bundle_equals_full_depth(tiny_caption_bundle_dir: Path) -> None:
    bundle = load_caption_bundle(tiny_caption_bundle_dir)
    weights = bundle.policies["beem-a"]
    assert isinstance(weights, BeemPolicy)
    never = BeemPolicy("beem-a", weights.weights, math.inf)
    vocabulary, decoder = bundle.vocabulary, bundle.captioner.decoder
    for seed in range(3):
        image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        features = bundle.captioner.image_features(image)
        beem = decode_greedy(decoder, features, never, vocabulary.start_id, vocabulary.end_id, bundle.max_length)
        full = decode_greedy(decoder, features, FullDepthPolicy(), vocabulary.start_id, vocabulary.end_id,
                             bundle.max_length)  # fmt: skip
        assert beem == full and set(full.exit_layers) == {3}


def test_a_caption_bundle_is_not_loaded_as_a_classifier_and_vice_versa(tiny_caption_bundle_dir: Path,
                                                                      tiny_bundle_dir: Path) -> None:  # fmt: skip
    with pytest.raises(BundleError, match="caption bundle, not a classifier"):
        load_bundle(tiny_caption_bundle_dir)
    with pytest.raises(BundleError, match="classification bundle, not a captioner"):
        load_caption_bundle(tiny_bundle_dir)


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle" / "1"
    shutil.copytree(bundle_dir, copy)
    return copy


def test_a_changed_vocabulary_is_refused(tiny_caption_bundle_dir: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_caption_bundle_dir, tmp_path)
    (copy / "vocabulary.json").write_text(json.dumps({"words": ["<pad>", "<start>", "<end>", "<unk>", "x"]}))
    with pytest.raises(BundleError, match=r"vocabulary\.json: checksum mismatch"):
        load_caption_bundle(copy)


def test_a_manifest_without_the_decoder_is_refused(tiny_caption_bundle_dir: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_caption_bundle_dir, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["decoder"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"missing keys \['decoder'\]"):
        load_caption_bundle(copy)


def test_an_unknown_task_is_refused(tiny_caption_bundle_dir: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_caption_bundle_dir, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["task"] = "segmentation"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unknown task 'segmentation'"):
        read_manifest(copy)
