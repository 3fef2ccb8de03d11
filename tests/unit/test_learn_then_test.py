"""Learn then Test (beem/calibration/learn_then_test.py): the binomial p-value, fixed-sequence testing on hand-made
caches, the guarantee holding over many calibration draws, and the "ltt" rule through search and calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from beem.calibration.exit_cache import ExitCache
from beem.calibration.learn_then_test import (
    Certification,
    binomial_tail_p_value,
    certified_agreement,
    certify,
    fixed_sequence,
    sample_losses,
)
from beem.calibration.policy_calibration import CalibrationOptions, calibrate_policies, calibration_json
from beem.calibration.threshold_search import certify_on_cache, search_threshold
from beem.policies.exit_policies import MaxProbPolicy
from tests.unit.exit_cache_builders import make_cache, random_cache

# --- the p-value ---------------------------------------------------------------------------------------------------


def direct_binomial_cdf(losses: int, num_samples: int, epsilon: float) -> float:
    return sum(math.comb(num_samples, i) * epsilon**i * (1 - epsilon) ** (num_samples - i) for i in range(losses + 1))


def test_no_loss_in_ten_at_ten_percent_is_point_nine_to_the_tenth() -> None:
    assert binomial_tail_p_value(0, 10, 0.1) == pytest.approx(0.9**10, rel=1e-12)


@pytest.mark.parametrize(
    ("losses", "num_samples", "epsilon"),
    [(0, 1, 0.5), (3, 20, 0.2), (5, 100, 0.05), (4, 1000, 0.01), (12, 1000, 0.02), (6, 7, 0.5), (30, 200, 0.1),
     (0, 300, 0.01), (9, 1585, 0.01)],
)  # fmt: skip
def test_p_value_is_the_exact_binomial_tail(losses: int, num_samples: int, epsilon: float) -> None:
    assert binomial_tail_p_value(losses, num_samples, epsilon) == pytest.approx(
        direct_binomial_cdf(losses, num_samples, epsilon), rel=1e-9
    )


def test_p_value_edges_and_large_samples() -> None:
    assert binomial_tail_p_value(50, 50, 0.3) == 1.0  # every sample lost: nothing is evidence against H0
    tiny = binomial_tail_p_value(0, 100_000, 0.01)  # 0.99**100000 underflows to 0, never to an error or a NaN
    assert 0.0 <= tiny < 1e-300
    large = [binomial_tail_p_value(k, 100_000, 0.01) for k in (900, 950, 1000, 1050)]
    assert large == sorted(large) and 0 < large[0] < 0.001 and 0.4 < large[2] < 0.6  # mean 1000


@pytest.mark.parametrize(("losses", "num_samples", "epsilon"), [(-1, 10, 0.1), (11, 10, 0.1), (1, 10, 0.0),
                                                                (1, 10, 1.0)])  # fmt: skip
def test_p_value_refuses_impossible_counts_and_epsilons(losses: int, num_samples: int, epsilon: float) -> None:
    with pytest.raises(ValueError):
        binomial_tail_p_value(losses, num_samples, epsilon)


@pytest.mark.parametrize(("epsilon", "allowed"), [(0.01, 4), (0.02, 12)])
def test_the_design_documents_sizing(epsilon: float, allowed: int) -> None:
    """DESIGN 3.3: with n = 1,000 and delta = 0.05, epsilon = 1% allows at most 4 losses, 2% at most 12."""
    assert binomial_tail_p_value(allowed, 1000, epsilon) <= 0.05 < binomial_tail_p_value(allowed + 1, 1000, epsilon)


# --- per-sample losses ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("risk", "expected"),
    [
        # samples: early agrees and right; early disagrees, final right; early disagrees, both wrong; at full depth
        ("disagreement", [False, True, True, False]),
        ("excess-error", [False, True, False, False]),
    ],
)
def test_sample_losses(risk: str, expected: list[bool]) -> None:
    cache = make_cache([[0, 0], [1, 0], [2, 1], [1, 0]], targets=[0, 0, 0, 0])
    exit_layers = np.array([1, 1, 1, 2])
    assert sample_losses(cache, exit_layers, risk).tolist() == expected


def test_an_unknown_risk_is_refused() -> None:
    with pytest.raises(ValueError, match="bogus"):
        sample_losses(make_cache([[0, 0]]), np.array([1]), "bogus")


# --- fixed-sequence testing ----------------------------------------------------------------------------------------
# 12 samples, 3 layers, max-prob (a sample's score at an exit is that exit's confidence). Every answer agrees with the
# final layer except sample A's at layer 2. At epsilon 0.2 no loss in 12 passes (0.8**12 = 0.069 <= delta 0.1) and
# one loss fails (p = 0.275). Descending, the candidates are 0.95 (B leaves at layer 1: no loss, certified), 0.9
# (A leaves at layer 2 and disagrees: the first failure), then 0.6, 0.5, 0.3, 0.2, which would have no loss again.
SAMPLE_A = ([1, 0, 1], [0.6, 0.9, 0.5])
SAMPLE_B = ([1, 1, 1], [0.95, 0.2, 0.5])
OTHER = ([1, 1, 1], [0.3, 0.3, 0.5])
EPSILON, DELTA = 0.2, 0.1


def sequence_cache(*samples: tuple[list[int], list[float]], targets: list[int] | None = None) -> ExitCache:
    return make_cache([labels for labels, _ in samples], [conf for _, conf in samples], targets=targets)


def certified_on(cache: ExitCache, risk: str = "disagreement") -> Certification:
    result = search_threshold(MaxProbPolicy(math.inf), cache, "ltt", epsilon=EPSILON, delta=DELTA, risk=risk)
    assert result.certification is not None
    assert result.chosen.threshold == result.certification.threshold
    return result.certification


@pytest.mark.parametrize(
    ("risk", "targets", "threshold", "losses"),
    [
        ("disagreement", [1] * 12, 0.95, 0),
        ("excess-error", [1] * 12, 0.95, 0),  # A's layer-2 answer is wrong where the final one is right
        ("excess-error", [0] * 12, 0.2, 0),  # the final layer is never right: no early answer can be worse
    ],
)
def test_the_walk_certifies_down_to_its_first_failure(
    risk: str, targets: list[int], threshold: float, losses: int
) -> None:
    cache = sequence_cache(SAMPLE_A, SAMPLE_B, *[OTHER] * 10, targets=targets)
    certification = certified_on(cache, risk)
    assert (certification.threshold, certification.losses, certification.certified) == (threshold, losses, True)
    assert certification.p_value == pytest.approx(0.8**12)
    assert certification.num_samples == 12 and certification.observed_risk == 0.0


def test_the_search_marks_the_certified_prefix_of_its_curve_feasible() -> None:
    result = search_threshold(
        MaxProbPolicy(math.inf), sequence_cache(SAMPLE_A, SAMPLE_B, *[OTHER] * 10), "ltt", epsilon=EPSILON, delta=DELTA
    )
    assert [o.threshold for o in result.curve] == [0.2, 0.3, 0.5, 0.6, 0.9, 0.95, math.inf]
    assert result.feasible == [False] * 5 + [True, True]
    assert result.chosen.exit_layers.tolist() == [3, 1] + [3] * 10


def test_nothing_certified_means_no_early_exit() -> None:
    # 5 samples that always agree: even no loss gives p = 0.8**5 = 0.33 > delta
    certification = certified_on(sequence_cache(SAMPLE_B, *[OTHER] * 4))
    assert certification.threshold == math.inf and not certification.certified
    assert (certification.losses, certification.p_value, certification.candidates_certified) == (0, None, 0)
    assert "never exits early" in certification.statement()


def test_a_later_candidate_is_never_chosen_after_a_failure() -> None:
    """Without B the first candidate (0.9) fails; 0.6 and everything below would pass, yet nothing is certified."""
    cache = sequence_cache(SAMPLE_A, *[OTHER] * 11)
    assert certified_on(cache).threshold == math.inf
    would_pass = certify(np.array([0.6]), lambda t: 0, 12, epsilon=EPSILON, delta=DELTA)
    assert would_pass.certified and would_pass.threshold == 0.6


def test_the_order_depends_on_the_thresholds_alone() -> None:
    asked: list[float] = []

    def count_losses(threshold: float) -> int:
        asked.append(threshold)
        return {0.9: 0, 0.7: 0, 0.5: 3, 0.3: 0}[threshold]

    certification = certify(np.array([0.5, math.inf, 0.9, 0.3, 0.7, 0.9]), count_losses, 12, "disagreement", 0.2, 0.1)
    assert asked == [0.9, 0.7, 0.5]  # descending, +inf never tested, nothing counted past the first failure
    assert (certification.threshold, certification.candidates_certified) == (0.7, 2)
    assert fixed_sequence(np.array([0.5, math.inf, -math.inf, 0.9, 0.5])).tolist() == [0.9, 0.5]


# --- the guarantee over many calibration draws ---------------------------------------------------------------------
# Two layers; the first exit's confidence is one of 25 levels, equally likely, and the first exit disagrees with the
# final one with a probability falling linearly from 0.3 (least confident) to 0 (most). A threshold t then has the
# true disagreement risk R(t) = sum over levels c >= t of P(c) P(disagree | c).
LEVELS = np.linspace(0.52, 1.0, 25)
DISAGREEMENT = 0.3 * (1.0 - LEVELS) / 0.48


def true_risk(threshold: float) -> float:
    return float(np.sum(DISAGREEMENT[threshold <= LEVELS]) / len(LEVELS))


def draw_calibration(rng: np.random.Generator, num_samples: int) -> ExitCache:
    level = rng.integers(0, len(LEVELS), num_samples)
    final = rng.integers(0, 2, num_samples)
    first = np.where(rng.random(num_samples) < DISAGREEMENT[level], 1 - final, final)
    confidences = np.stack([LEVELS[level], np.full(num_samples, 0.5)], axis=1)  # (N, 2); max-prob's scores
    return ExitCache(np.stack([first, final], axis=1), confidences, np.full((num_samples, 2), 0.5), final)


def test_the_certified_risk_holds_in_at_least_one_minus_delta_of_draws() -> None:
    epsilon, delta, num_samples, trials = 0.05, 0.1, 300, 300
    rng = np.random.default_rng(20210603)
    certified_risks, naive_risks = [], []
    for _ in range(trials):
        cache = draw_calibration(rng, num_samples)
        certified_risks.append(true_risk(certify_on_cache(cache, cache.confidences, "disagreement", epsilon, delta)
                                         .threshold))  # fmt: skip
        # The rule without the test: the lowest threshold whose observed risk is within epsilon.
        disagrees = cache.exit_labels[:, 0] != cache.exit_labels[:, 1]
        within = [t for t in LEVELS if np.sum(disagrees & (cache.confidences[:, 0] >= t)) <= epsilon * num_samples]
        naive_risks.append(true_risk(min(within, default=math.inf)))
    violations = np.mean(np.array(certified_risks) > epsilon)
    assert violations <= delta + 0.04, violations
    assert np.mean(np.array(certified_risks) > 0) > 0.9  # it does let samples out early, mostly
    assert np.mean(np.array(naive_risks) > epsilon) > 2 * delta  # and the test is what keeps the promise


# --- the sentence, the controller's target, the options ------------------------------------------------------------


@pytest.mark.parametrize(
    ("risk", "sentence"),
    [
        ("disagreement", "With probability at least 95% over the draw of the 1585 calibration samples, this policy's "
         "answer differs from the full model's on at most 1.0% of inputs from the same distribution."),
        ("excess-error", "With probability at least 95% over the draw of the 1585 calibration samples, this policy's "
         "answer is wrong where the full model is right on at most 1.0% of inputs from the same distribution."),
    ],
)  # fmt: skip
def test_the_statement(risk: str, sentence: str) -> None:
    certification = Certification(risk, 0.01, 0.05, 1585, 0.9, 7, 0.02, True, 40)
    assert certification.statement() == sentence
    described = certification.to_json()
    assert described["statement"] == sentence and described["observed_risk"] == pytest.approx(7 / 1585)
    assert {"risk", "epsilon", "delta", "n", "losses", "observed_risk", "p_value", "certified"} <= set(described)


@pytest.mark.parametrize(
    ("guarantee", "agreement"),
    [
        ({"risk": "disagreement", "epsilon": 0.02, "certified": True}, 0.98),
        ({"risk": "disagreement", "epsilon": 0.02, "certified": False}, None),
        ({"risk": "excess-error", "epsilon": 0.02, "certified": True}, None),
        ({"risk": "disagreement", "epsilon": "0.02", "certified": True}, None),
        (None, None),
    ],
)
def test_certified_agreement(guarantee: dict[str, object] | None, agreement: float | None) -> None:
    assert certified_agreement(guarantee) == (None if agreement is None else pytest.approx(agreement))


@pytest.mark.parametrize(
    "changes",
    [{"selection_rule": "bogus"}, {"risk": "accuracy"}, {"epsilon": 0.0}, {"epsilon": 1.5}, {"delta": 1.0}],
)
def test_calibration_options_refuse_what_cannot_be_certified(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CalibrationOptions(**changes)  # type: ignore[arg-type]


# --- calibration.json ----------------------------------------------------------------------------------------------

BUILT_IN = ("beem-a", "beem-c", "max-prob", "entropy", "patience", "static", "full")  # searched by the rule, but full


def test_calibration_json_records_every_searched_policys_guarantee() -> None:
    cache = random_cache(5, num_samples=200)
    options = CalibrationOptions(selection_rule="ltt", epsilon=0.2, delta=0.1, risk="excess-error")
    calibrated = calibrate_policies(cache, options)
    described = calibration_json(cache, options, calibrated)
    assert (described["epsilon"], described["delta"], described["risk"]) == (0.2, 0.1, "excess-error")
    policies = described["policies"]
    assert isinstance(policies, dict)
    assert "guarantee" not in policies["full"]
    for name in BUILT_IN[:-1]:
        entry = calibrated[name]
        guarantee = policies[name]["guarantee"]
        assert entry.search.certification is not None
        assert guarantee == entry.search.certification.to_json()
        assert (guarantee["risk"], guarantee["epsilon"], guarantee["delta"], guarantee["n"]) == (
            "excess-error", 0.2, 0.1, 200
        )  # fmt: skip
        assert entry.policy.threshold == entry.search.certification.threshold
    assert any(policies[name]["guarantee"]["certified"] for name in policies if name != "full")


def test_other_rules_record_no_guarantee_for_the_policies_they_choose() -> None:
    cache = random_cache(5, num_samples=60)
    options = CalibrationOptions()
    calibrated = calibrate_policies(cache, options)
    described = calibration_json(cache, options, calibrated)
    policies = described["policies"]
    assert isinstance(policies, dict)
    assert not any("guarantee" in policies[name] for name in BUILT_IN)
    # Only a policy certified whatever the rule (none of the built-in ones) records one, and then its options.
    certified = [name for name, e in calibrated.items() if e.search is not None and e.search.certification is not None]
    assert [name for name, entry in policies.items() if "guarantee" in entry] == certified
    assert ("epsilon" in described) == bool(certified)
