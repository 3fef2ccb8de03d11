"""`beem recalibrate` on the tiny bundle: texts without labels certify disagreement and write version 2 with its
provenance; the bundle's own calibration split re-cut from its data file gives back the same exits; the served
policies of the new version agree with their certificates; bad input is refused with a message saying why."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from beem.bundle.bundle_reader import load_bundle
from beem.bundle.manifest import CALIBRATION_CACHE_FILE, WEIGHTS_FILE, read_manifest
from beem.calibration.exit_cache import ExitCache
from beem.calibration.exit_gate_calibration import split_in_two
from beem.calibration.policy_calibration import CalibrationOptions
from beem.evaluation import evaluate_policies
from beem.recalibration import TEST_EVALUATION_FILE, recalibrate
from tests.model_store_builders import add_version

# 36 calibration samples or a few hundred texts certify nothing at 1% (see tiny_ltt_bundle_dir): a loose promise.
LOOSE = CalibrationOptions(selection_rule="ltt", epsilon=0.25, delta=0.1, risk="disagreement")
NUM_TEXTS = 200


@pytest.fixture
def model_dir(tmp_path: Path, tiny_bundle_dir: Path) -> Path:
    """A model directory holding the tiny bundle as version 1."""
    directory = tmp_path / "store" / "tiny-sentiment"
    add_version(directory, tiny_bundle_dir, 1)
    return directory


@pytest.fixture
def texts_file(tmp_path: Path, tiny_data_file: Path) -> Path:
    """In-domain texts without labels, one per line, as a sample of requests would be logged."""
    texts = [json.loads(line)["text"] for line in tiny_data_file.read_text().splitlines()][:NUM_TEXTS]
    path = tmp_path / "requests.txt"
    path.write_text("\n".join(texts) + "\n")
    return path


def test_texts_without_labels_certify_disagreement_in_a_new_version(model_dir: Path, texts_file: Path) -> None:
    new_dir = recalibrate(model_dir / "1", LOOSE, texts_file)

    assert new_dir == model_dir / "2"
    old, new = read_manifest(model_dir / "1"), read_manifest(new_dir)
    assert (new_dir / WEIGHTS_FILE).read_bytes() == (model_dir / "1" / WEIGHTS_FILE).read_bytes()
    assert new.raw["recalibration"] == {
        "from": "tiny-sentiment:1", "source": "texts", "file": "requests.txt", "num_texts": NUM_TEXTS,
        "labels": False, "sha256": new.raw["recalibration"]["sha256"],
    }  # fmt: skip
    assert len(new.raw["recalibration"]["sha256"]) == 64
    assert new.calibration["selection_rule"] == "ltt" and new.calibration["epsilon"] == 0.25
    assert new.labels == old.labels and new.data == old.data
    assert not (new_dir / TEST_EVALUATION_FILE).exists()  # no labels, no test numbers
    for name, record in new.policies.items():
        assert not record.test, name
        if name != "full":
            assert record.guarantee is not None and record.guarantee["risk"] == "disagreement", name
            assert record.guarantee["n"] in (NUM_TEXTS, NUM_TEXTS // 2), name  # the gate certifies on a half

    # The cache's targets are full depth's answers: "accuracy" on it is agreement with the final layer.
    cache = ExitCache.load(new_dir / CALIBRATION_CACHE_FILE)
    assert cache.num_samples == NUM_TEXTS
    np.testing.assert_array_equal(cache.targets, cache.exit_labels[:, -1])
    _assert_served_policies_match_their_certificates(new_dir, cache)


def test_the_calibration_split_recut_from_the_data_file_gives_the_builds_exits(
    model_dir: Path, tiny_data_file: Path
) -> None:
    new_dir = recalibrate(model_dir / "1", LOOSE, data_file=tiny_data_file, default_policy="best")

    built = ExitCache.load(model_dir / "1" / CALIBRATION_CACHE_FILE)
    recut = ExitCache.load(new_dir / CALIBRATION_CACHE_FILE)
    np.testing.assert_array_equal(recut.targets, built.targets)  # the same samples, with their labels
    np.testing.assert_array_equal(recut.exit_labels, built.exit_labels)
    np.testing.assert_allclose(recut.confidences, built.confidences, atol=1e-5)

    manifest = read_manifest(new_dir)
    assert manifest.raw["recalibration"]["source"] == "calibration split"
    assert manifest.raw["recalibration"]["num_texts"] == manifest.data["split_sizes"]["calibration"]
    assert manifest.default_policy in manifest.policies
    tested = json.loads((new_dir / TEST_EVALUATION_FILE).read_text())
    for name, record in manifest.policies.items():
        assert record.test["accuracy"] == pytest.approx(tested["policies"][name]["accuracy"]), name
    _assert_served_policies_match_their_certificates(new_dir, recut)


def _assert_served_policies_match_their_certificates(bundle_dir: Path, cache: ExitCache) -> None:
    """The policies a server builds from the new manifest, run over the certifying samples, lose exactly what the
    certificate counted (disagreement with full depth), and a certified one loses at most what it may."""
    bundle = load_bundle(bundle_dir)  # verifies every file's sha256
    agreement = replace(cache, targets=cache.exit_labels[:, -1].copy())
    # The gate is fitted on one half of the samples and certified on the other (exit_gate_calibration).
    certifying_half = split_in_two(agreement)[1]
    samples_of = {cache.num_samples: agreement, certifying_half.num_samples: certifying_half}
    certified = 0
    for name, record in read_manifest(bundle_dir).policies.items():
        if record.guarantee is None:
            continue
        samples = samples_of[record.guarantee["n"]]
        evaluated = evaluate_policies(samples, {name: bundle.policies[name]})["policies"][name]
        losses = round((1.0 - evaluated["accuracy"]) * samples.num_samples)
        assert losses == record.guarantee["losses"], name
        certified += record.guarantee["certified"]
    assert certified >= 1  # at epsilon 25% something exits early, or this test checks nothing


def test_a_data_file_other_than_the_bundles_is_refused(model_dir: Path, tmp_path: Path, tiny_data_file: Path) -> None:
    other = tmp_path / "other.jsonl"
    other.write_text("".join(tiny_data_file.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(ValueError, match="not the file this bundle was built from"):
        recalibrate(model_dir / "1", LOOSE, data_file=other)
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]  # nothing half-written


@pytest.mark.parametrize(
    ("options", "content", "message"),
    [
        (LOOSE, "\n\n", "holds no texts"),
        (CalibrationOptions(selection_rule="ltt", epsilon=0.25, risk="excess-error"), "a text\n", "disagreement"),
        (CalibrationOptions(selection_rule="paired-bound"), "a text\n", "selection-rule ltt"),
    ],
)
def test_texts_that_cannot_be_certified_on_are_refused(
    model_dir: Path, tmp_path: Path, options: CalibrationOptions, content: str, message: str
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text(content)
    with pytest.raises(ValueError, match=message):
        recalibrate(model_dir / "1", options, texts)
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]


def test_a_caption_bundle_is_refused(tiny_caption_bundle_dir: Path, texts_file: Path) -> None:
    with pytest.raises(ValueError, match="caption"):
        recalibrate(tiny_caption_bundle_dir, LOOSE, texts_file)


def test_the_command_prints_the_new_version_or_says_what_is_wrong(model_dir: Path, texts_file: Path) -> None:
    beem = [sys.executable, "-m", "beem.cli", "recalibrate", "--bundle", str(model_dir)]
    done = subprocess.run([*beem, "--texts", str(texts_file), "--epsilon", "0.25", "--delta", "0.1"],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip().splitlines()[-1]) == model_dir / "2"
    assert read_manifest(model_dir / "2").calibration["delta"] == 0.1

    refused = subprocess.run([*beem, "--texts", str(texts_file), "--risk", "excess-error"],
                             capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert refused.returncode != 0 and "disagreement" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2"]
