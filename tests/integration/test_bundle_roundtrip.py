"""Train a tiny generated model a few steps, calibrate, export, load: the bundle serves what was calibrated."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from beem.bundle.bundle_reader import load_bundle
from beem.bundle.manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    WEIGHTS_FILE,
    BundleError,
    Manifest,
    read_manifest,
    sha256_of,
)
from beem.calibration.exit_cache import ExitCache, compute_exit_cache
from beem.calibration.threshold_search import exit_layers_at, score_trajectories
from beem.data.examples import read_dataset
from beem.data.splits import split_dataset
from beem.data.tokenized_batch import tokenize_examples
from beem.policies.exit_policies import run_sample


def test_bundle_has_the_documented_layout(tiny_bundle_dir: Path) -> None:
    manifest = json.loads((tiny_bundle_dir / MANIFEST_FILE).read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["num_layers"] == 3
    assert manifest["labels"] == ["negative", "positive"]
    assert set(manifest["policies"]) >= {"beem-a", "beem-c", "max-prob", "entropy", "patience", "static", "full"}
    for relative, digest in manifest["files"].items():
        assert sha256_of(tiny_bundle_dir / relative) == digest
    assert {"calibration.json", "report.md", "report.png", WEIGHTS_FILE} <= set(manifest["files"])
    assert manifest["data"]["split_sizes"] == {"train": 168, "calibration": 36, "test": 36}
    assert not list(tiny_bundle_dir.rglob("*.bin")) and not list(tiny_bundle_dir.rglob("*.pt")), "no pickle files"
    assert all(t.dtype == torch.float16 for t in load_file(tiny_bundle_dir / WEIGHTS_FILE).values())
    tokenizer_json = json.loads((tiny_bundle_dir / "tokenizer" / "tokenizer.json").read_text())
    assert tokenizer_json["padding"] is None and tokenizer_json["truncation"] is None  # no leftover call state


def test_loaded_bundle_reproduces_the_calibration_cache_exactly(tiny_bundle_dir: Path, tiny_data_file: Path) -> None:
    """The calibration exits cached at build time equal what the exported, reloaded weights compute now."""
    bundle = load_bundle(tiny_bundle_dir)
    splits = split_dataset(read_dataset(tiny_data_file))
    recomputed = compute_exit_cache(bundle.model, bundle.tokenizer, splits.calibration, bundle.max_length)
    stored = ExitCache.load(tiny_bundle_dir / "calibration_exits.safetensors")
    np.testing.assert_array_equal(recomputed.exit_labels, stored.exit_labels)
    np.testing.assert_array_equal(recomputed.confidences, stored.confidences)
    np.testing.assert_array_equal(recomputed.entropies, stored.entropies)


def test_layer_by_layer_logits_match_a_batched_forward(tiny_bundle_dir: Path, tiny_data_file: Path) -> None:
    bundle = load_bundle(tiny_bundle_dir)
    examples = read_dataset(tiny_data_file).examples[:8]
    batch = tokenize_examples(bundle.tokenizer, examples, bundle.max_length)
    with torch.inference_mode():
        together = bundle.model.all_exit_logits(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        for row, example in enumerate(examples):
            alone = tokenize_examples(bundle.tokenizer, [example], bundle.max_length)
            logits = bundle.model.all_exit_logits(alone.input_ids, alone.attention_mask, alone.token_type_ids)
            torch.testing.assert_close(logits[:, 0], together[:, row], atol=1e-5, rtol=1e-4)


def test_infinite_alpha_is_full_depth(tiny_bundle_dir: Path) -> None:
    bundle = load_bundle(tiny_bundle_dir)
    cache = ExitCache.load(tiny_bundle_dir / "calibration_exits.safetensors")
    beem = bundle.policies["beem-a"].with_threshold(math.inf)
    layers = exit_layers_at(score_trajectories(beem, cache), math.inf)
    assert (layers == bundle.num_layers).all()
    assert all(run_sample(beem, cache.observations(n)) == bundle.num_layers for n in range(cache.num_samples))


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda d: (d / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes()[:-1] + b"\0"), "checksum mismatch"),
        (lambda d: (d / "calibration.json").unlink(), "missing"),
        (lambda d: (d / MANIFEST_FILE).unlink(), "no manifest.json"),
        (lambda d: _edit_manifest(d, schema_version=99), "unknown schema_version 99"),
        (lambda d: (d / MANIFEST_FILE).write_text("{not json"), "not valid JSON"),
        (lambda d: _edit_manifest(d, files={**_manifest(d)["files"], "../outside": "0"}), "outside the bundle"),
    ],
    ids=["tampered-weights", "missing-file", "no-manifest", "unknown-schema", "broken-json", "path-escape"],
)
def test_a_damaged_bundle_is_refused_with_the_file_named(
    tiny_bundle_dir: Path, tmp_path: Path, tamper: object, expected: str
) -> None:
    import shutil

    from beem.bundle.manifest import BundleError

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, copy)
    tamper(copy)  # type: ignore[operator]
    with pytest.raises(BundleError, match=expected) as raised:
        load_bundle(copy)
    assert str(copy) in str(raised.value)


def _manifest(directory: Path) -> dict[str, object]:
    manifest: dict[str, object] = json.loads((directory / MANIFEST_FILE).read_text())
    return manifest


def _edit_manifest(directory: Path, **changes: object) -> None:
    manifest = _manifest(directory)
    manifest.update(changes)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"num_layers": "3"}, "'num_layers' must be an integer"),
        ({"num_layers": True}, "'num_layers' must be an integer"),
        ({"max_length": 0}, "must be positive"),
        ({"labels": ["negative"]}, "at least two labels"),
        ({"labels": ["negative", 1]}, "list of strings"),
        ({"default_policy": "fastest"}, "default_policy 'fastest' is not among its policies"),
        ({"policies": {"full": {"calibration": {}}}}, "policy 'full' must be an object with a 'params' object"),
        ({"name": None}, "'name' must be a string"),
    ],
)
def test_a_manifest_with_a_wrong_field_is_refused_by_name(
    tiny_bundle_dir: Path, tmp_path: Path, change: dict[str, object], says: str
) -> None:
    """Read once, typed once: a field of the wrong type stops loading with the key named, not a KeyError later."""
    raw = {**json.loads((tiny_bundle_dir / MANIFEST_FILE).read_text()), **change}
    with pytest.raises(BundleError, match=re.escape(says)):
        Manifest.from_json(tiny_bundle_dir / MANIFEST_FILE, raw)


def test_the_typed_manifest_reads_what_the_builder_wrote(tiny_bundle_dir: Path) -> None:
    manifest = read_manifest(tiny_bundle_dir)
    raw = json.loads((tiny_bundle_dir / MANIFEST_FILE).read_text())
    assert (manifest.name, manifest.version, manifest.model_id) == (raw["name"], raw["version"], f"{raw['name']}:1")
    assert (manifest.num_layers, manifest.labels, manifest.weights_dtype) == (3, ("negative", "positive"), "float16")
    assert manifest.default_policy == raw["default_policy"] == "beem-a"
    assert {name: dict(record.params) for name, record in manifest.policies.items()} == {
        name: entry["params"] for name, entry in raw["policies"].items()
    }


def test_an_ltt_bundle_records_each_guarantee_in_calibration_manifest_and_report(tiny_ltt_bundle_dir: Path) -> None:
    calibration = json.loads((tiny_ltt_bundle_dir / "calibration.json").read_text())
    raw = json.loads((tiny_ltt_bundle_dir / MANIFEST_FILE).read_text())
    report = (tiny_ltt_bundle_dir / "report.md").read_text()
    assert (calibration["selection_rule"], calibration["epsilon"], calibration["delta"], calibration["risk"]) == (
        "ltt", 0.25, 0.1, "disagreement"
    )  # fmt: skip
    assert {key: raw["calibration"][key] for key in ("selection_rule", "epsilon", "delta", "risk")} == {
        "selection_rule": "ltt", "epsilon": 0.25, "delta": 0.1, "risk": "disagreement"
    }  # fmt: skip
    manifest = read_manifest(tiny_ltt_bundle_dir)
    searched = ["beem-a", "beem-c", "max-prob", "entropy", "patience", "static"]  # by the rule: on all 36 samples
    assert "guarantee" not in calibration["policies"]["full"]
    assert manifest.policies["full"].guarantee is None
    for name in searched:
        guarantee = calibration["policies"][name]["guarantee"]
        assert set(guarantee) >= {"risk", "epsilon", "delta", "n", "losses", "observed_risk", "p_value", "certified",
                                  "statement"}  # fmt: skip
        assert guarantee["n"] == calibration["num_samples"] == 36
        assert guarantee["threshold"] == calibration["policies"][name]["threshold"]  # the threshold it serves
        assert guarantee["certified"] == (guarantee["p_value"] is not None) == (guarantee["threshold"] != "inf")
        assert guarantee["observed_risk"] == pytest.approx(guarantee["losses"] / 36)
        assert raw["policies"][name]["guarantee"] == guarantee == manifest.policies[name].guarantee
        assert f"- {name}: {guarantee['statement']}" in report
