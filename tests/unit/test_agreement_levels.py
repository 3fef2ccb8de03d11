"""Unit tests for beem/calibration/agreement_levels.py on hand-made caches and the committed bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from beem.bundle.bundle_reader import calibrated_policies
from beem.bundle.manifest import read_manifest
from beem.calibration.agreement_levels import AgreementLevels, agreement_levels
from beem.calibration.exit_cache import ExitCache
from beem.policies.exit_policies import ExitPolicy, FullDepthPolicy, MaxProbPolicy, StaticPolicy
from tests.unit.exit_cache_builders import make_cache

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "model_store" / "minilm-rt-sentiment" / "1"

HIGH, LOW = 0.95, 0.5

# Five samples, three layers, max-prob 0.9: rows 0, 1, 4 leave at layer 1, row 3 at layer 2, row 2 runs to the end.
MIXED = make_cache(
    labels=[[1, 1, 1], [0, 1, 1], [0, 0, 1], [1, 1, 0], [2, 0, 0]],
    confidences=[[HIGH, LOW, LOW], [HIGH, LOW, LOW], [LOW, LOW, LOW], [LOW, HIGH, LOW], [HIGH, LOW, LOW]],
    targets=[1, 1, 1, 0, 2],
)
# Every exit says the same thing.
STEADY = make_cache(labels=[[1, 1, 1], [0, 0, 0]], targets=[1, 1])
# Layer 1 always disagrees with layer 2 and full depth is always right.
FLIPPING = make_cache(labels=[[0, 1], [0, 1]], targets=[1, 1])
# Disagreements where both answers are wrong (three classes) cost nothing.
BOTH_WRONG = make_cache(labels=[[2, 0], [1, 1]], targets=[1, 1])


@pytest.mark.parametrize(
    ("cache", "policy", "expected"),
    [
        # agree: 0, 2 (last layer); disagree: 1 (b), 3 (b), 4 (c) -> (2 - 1) / 3.
        (MIXED, MaxProbPolicy(0.9), AgreementLevels(0.4, 0.25, 0.8, 1 / 3, 5)),
        # A threshold above every confidence: nothing leaves early, everything agrees trivially.
        (MIXED, MaxProbPolicy(0.99), AgreementLevels(1.0, 1.0, 0.0, 0.0, 5)),
        (MIXED, FullDepthPolicy(), AgreementLevels(1.0, 1.0, 0.0, 0.0, 5)),
        # Static at the last layer is full depth too.
        (MIXED, StaticPolicy(3), AgreementLevels(1.0, 1.0, 0.0, 0.0, 5)),
        # Static layer 2: rows 2 and 3 disagree at layer 2 (row 2: b, row 3: b); row 4 agrees there.
        (MIXED, StaticPolicy(2), AgreementLevels(0.6, 0.6, 1.0, 1.0, 5)),
        (STEADY, StaticPolicy(1), AgreementLevels(1.0, 1.0, 1.0, 0.0, 2)),
        (FLIPPING, StaticPolicy(1), AgreementLevels(0.0, 0.0, 1.0, 1.0, 2)),
        (BOTH_WRONG, StaticPolicy(1), AgreementLevels(0.5, 0.5, 1.0, 0.0, 2)),
    ],
    ids=[
        "mixed-max-prob",
        "mixed-no-early-exit",
        "mixed-full-depth",
        "mixed-static-last-layer",
        "mixed-static-layer-2",
        "all-agree",
        "all-disagree-final-right",
        "disagree-both-wrong",
    ],
)
def test_agreement_levels_on_hand_made_caches(cache: ExitCache, policy: ExitPolicy, expected: AgreementLevels) -> None:
    levels = agreement_levels(cache, policy)
    assert levels.num_samples == expected.num_samples
    assert levels.agreement == pytest.approx(expected.agreement, abs=1e-12)
    assert levels.exited_agreement == pytest.approx(expected.exited_agreement, abs=1e-12)
    assert levels.early_fraction == pytest.approx(expected.early_fraction, abs=1e-12)
    assert levels.loss_per_disagreement == pytest.approx(expected.loss_per_disagreement, abs=1e-12)
    identity = 1.0 - levels.early_fraction * (1.0 - levels.exited_agreement)
    assert levels.agreement == pytest.approx(identity, abs=1e-12)


def test_agreement_levels_on_the_committed_bundle() -> None:
    policy = calibrated_policies(read_manifest(BUNDLE_DIR))["beem-a"]
    cache = ExitCache.load(BUNDLE_DIR / "calibration_exits.safetensors")
    levels = agreement_levels(cache, policy)
    assert levels.num_samples == cache.num_samples > 0
    assert 0.0 < levels.agreement <= 1.0
    assert abs(levels.agreement - (1.0 - levels.early_fraction * (1.0 - levels.exited_agreement))) <= 1e-12
