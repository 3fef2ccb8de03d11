"""Unit tests for service/monitoring/agreement_window.py: the estimate, the sliding windows, reset, the margin."""

from __future__ import annotations

import math

import pytest

from service.monitoring.agreement_window import AgreementEstimate, AgreementWindow


def filled_window(
    rows: list[bool], comparisons: list[bool], max_comparisons: int = 400, max_rows: int = 20000
) -> AgreementWindow:
    window = AgreementWindow(max_comparisons=max_comparisons, max_rows=max_rows)
    for exited_early in rows:
        window.record_row(exited_early)
    for agreed in comparisons:
        window.record_comparison(agreed)
    return window


@pytest.mark.parametrize(
    ("rows", "comparisons", "z", "expected"),
    [
        # p = 3/4, early 1/2: agreement 1 - 0.5 * 0.25; noise 0.5 * 2 * sqrt(0.75 * 0.25 / 4).
        (
            [True, True, False, False],
            [True, True, True, False],
            2.0,
            AgreementEstimate(0.875, 0.75, 0.5, 4, 0.5 * 2.0 * math.sqrt(0.1875 / 4)),
        ),
        # z scales the margin linearly.
        (
            [True, True, False, False],
            [True, True, True, False],
            1.0,
            AgreementEstimate(0.875, 0.75, 0.5, 4, 0.5 * 1.0 * math.sqrt(0.1875 / 4)),
        ),
        # All agree: p clamps to 1 - 1/5, noise 1 * 2 * sqrt(0.8 * 0.2 / 4) = 0.4.
        ([True] * 4, [True] * 4, 2.0, AgreementEstimate(1.0, 1.0, 1.0, 4, 0.4)),
        # All disagree: p clamps to 1/5, the same margin.
        ([True] * 4, [False] * 4, 2.0, AgreementEstimate(0.0, 0.0, 1.0, 4, 0.4)),
        # No early row answered: agreement 1 whatever old comparisons said; the noise is what 3 rows cannot rule
        # out, an early share up to z^2 / (3 + z^2) (Wilson's bound with none seen).
        ([False] * 3, [False, True], 2.0, AgreementEstimate(1.0, 0.5, 0.0, 2, 4 / 7, rows=3)),
    ],
    ids=["mixed", "mixed-z1", "all-agree", "all-disagree", "no-early-rows"],
)
def test_estimate_formula(rows: list[bool], comparisons: list[bool], z: float, expected: AgreementEstimate) -> None:
    estimate = filled_window(rows, comparisons).estimate(z=z)
    assert estimate is not None
    assert estimate.comparisons == expected.comparisons
    for field in ("agreement", "exited_agreement", "early_fraction", "noise"):
        assert getattr(estimate, field) == pytest.approx(getattr(expected, field), abs=1e-12), field


@pytest.mark.parametrize(
    ("rows", "comparisons", "min_comparisons"),
    [
        ([], [], 1),
        ([True], [], 1),  # an early row and nothing to compare it with yet
        ([], [True], 1),
        ([True], [True, True], 3),
        ([True], [], 0),  # at least one comparison, whatever the caller asks
    ],
    ids=["empty", "no-comparisons", "no-rows", "too-few-comparisons", "min-zero-still-needs-one"],
)
def test_estimate_is_none(rows: list[bool], comparisons: list[bool], min_comparisons: int) -> None:
    assert filled_window(rows, comparisons).estimate(min_comparisons=min_comparisons) is None


def test_a_window_with_no_early_row_needs_no_comparison() -> None:
    estimate = filled_window([False] * 12, []).estimate(z=2.0, min_comparisons=50)
    assert estimate == AgreementEstimate(1.0, 1.0, 0.0, 0, 4 / 16, rows=12)
    assert estimate.exact


def test_estimate_at_exactly_min_comparisons() -> None:
    assert filled_window([True], [True, False, True]).estimate(min_comparisons=3) is not None


@pytest.mark.parametrize(
    ("rows", "comparisons", "max_rows", "max_comparisons", "expected_early", "expected_exited"),
    [
        # The oldest entries leave: rows keep [F, F], comparisons keep [T, F, F].
        ([True, False, False], [True, True, False, False], 2, 3, 0.0, 1 / 3),
        ([False, True, True], [False, True, True], 2, 2, 1.0, 1.0),
        ([True, False], [True, False], 5, 5, 0.5, 0.5),  # not yet full: nothing leaves
    ],
    ids=["evicts-oldest", "evicts-to-all-early", "not-full"],
)
def test_sliding_eviction(
    rows: list[bool],
    comparisons: list[bool],
    max_rows: int,
    max_comparisons: int,
    expected_early: float,
    expected_exited: float,
) -> None:
    window = filled_window(rows, comparisons, max_comparisons=max_comparisons, max_rows=max_rows)
    estimate = window.estimate()
    assert estimate is not None
    assert window.rows == min(len(rows), max_rows)
    assert window.comparisons == min(len(comparisons), max_comparisons)
    assert estimate.early_fraction == pytest.approx(expected_early)
    assert estimate.exited_agreement == pytest.approx(expected_exited)


def test_running_sums_match_a_recount_of_the_newest_entries() -> None:
    pattern = [(i * 7) % 5 < 2 for i in range(257)]
    window = AgreementWindow(max_comparisons=13, max_rows=31)
    for step, flag in enumerate(pattern, start=1):
        window.record_row(flag)
        window.record_comparison(not flag)
        estimate = window.estimate()
        assert estimate is not None
        newest_rows, newest_comparisons = pattern[:step][-31:], [not f for f in pattern[:step][-13:]]
        assert estimate.early_fraction == pytest.approx(sum(newest_rows) / len(newest_rows))
        assert estimate.exited_agreement == pytest.approx(sum(newest_comparisons) / len(newest_comparisons))


def test_reset_empties_both_windows() -> None:
    window = filled_window([True, True], [False, False])
    window.reset()
    assert (window.rows, window.comparisons) == (0, 0)
    assert window.estimate() is None
    window.record_row(True)
    window.record_comparison(True)
    estimate = window.estimate()
    assert estimate is not None
    assert (estimate.agreement, estimate.early_fraction, estimate.exited_agreement) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("comparisons", [1, 2, 10, 50, 400], ids=lambda n: f"n={n}")
def test_noise_is_never_zero_for_an_all_agree_window(comparisons: int) -> None:
    estimate = filled_window([True, False], [True] * comparisons).estimate()
    assert estimate is not None
    assert estimate.agreement == 1.0
    assert estimate.noise > 0.0


def test_all_agree_noise_shrinks_with_more_comparisons() -> None:
    noises = []
    for comparisons in (5, 50, 400):
        estimate = filled_window([True], [True] * comparisons).estimate()
        assert estimate is not None
        noises.append(estimate.noise)
    assert noises == sorted(noises, reverse=True)


@pytest.mark.parametrize(("max_comparisons", "max_rows"), [(0, 10), (10, 0)], ids=["no-comparisons", "no-rows"])
def test_window_sizes_must_be_positive(max_comparisons: int, max_rows: int) -> None:
    with pytest.raises(ValueError, match="window sizes"):
        AgreementWindow(max_comparisons=max_comparisons, max_rows=max_rows)
