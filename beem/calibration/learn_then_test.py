"""Certify a threshold by Learn then Test (Angelopoulos, Bates, Candès, Jordan, Lei 2021; for early exit: CALM,
Schuster et al. 2022) (DESIGN 3.3, "Certified thresholds").

The promise: with probability at least 1 - delta over the draw of the n calibration samples, the chosen
threshold's risk on new samples from the same distribution is at most epsilon. Risk is the expected 0/1 loss of a
sample, of one of two kinds:
- "disagreement": the early answer differs from the final layer's answer. It needs no labels, so unlabeled
  traffic (the shadow monitor's comparisons) can certify and check it;
- "excess-error": the early answer is wrong where the final layer is right (needs labels).

Each candidate threshold t is a hypothesis H0(t): risk(t) > epsilon. With k losses in n samples the exact binomial
tail p = P(Binomial(n, epsilon) <= k) is a valid p-value for it (under H0 the loss count is stochastically larger
than Binomial(n, epsilon)). Fixed-sequence testing walks the candidates from the most conservative to the most
aggressive in an order that depends on the thresholds alone, certifies while p <= delta and stops at the first
failure; that controls the chance of certifying any threshold with risk > epsilon at delta, with no correction for
the number of candidates. The most aggressive certified threshold is served; none certified means no early exit
(+inf), whose risk is zero.

The candidates are the calibration scores themselves, yet the walk is a fixed sequence: a threshold between two
neighbouring scores sends exactly the samples the upper one sends, so walking the distinct scores downwards gives
what walking every float64 value downwards (a sequence fixed in advance) gives, and the threshold served is one of
those certified. That holds only without thinning, so the walk reads every distinct score.

Numpy and math only: the exit layers of a candidate come from the caller (`threshold_search.exit_layers_at`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from beem.calibration.exit_cache import ExitCache

RISKS = ("disagreement", "excess-error")
# Defaults: a 1% risk at 95% confidence is CALM's order of magnitude and needs no more than ~300 calibration samples
# to certify anything (0.99**299 < 0.05); disagreement needs no labels, so recalibration from unlabeled traffic and
# the online controller's agreement target (1 - epsilon) speak of the same risk.
DEFAULT_EPSILON = 0.01
DEFAULT_DELTA = 0.05
DEFAULT_RISK = "disagreement"

# How each risk reads in the one-sentence guarantee: "this policy's answer <...> on at most 1.0% of inputs".
RISK_PHRASES = {
    "disagreement": "differs from the full model's",
    "excess-error": "is wrong where the full model is right",
}


def check_certification_options(risk: str, epsilon: float, delta: float) -> None:
    """Raises ValueError naming the option that is out of range."""
    if risk not in RISKS:
        raise ValueError(f"unknown risk {risk!r}; expected one of {RISKS}")
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def sample_losses(cache: ExitCache, exit_layers: np.ndarray, risk: str) -> np.ndarray:
    """(N,) bool loss of every sample when it leaves at `exit_layers` ((N,), 1-based)."""
    answers = cache.exit_labels[np.arange(cache.num_samples), exit_layers - 1]  # (N,)
    final_answers = cache.exit_labels[:, -1]  # (N,)
    if risk == "disagreement":
        return np.asarray(answers != final_answers)
    if risk == "excess-error":
        return np.asarray((answers != cache.targets) & (final_answers == cache.targets))
    raise ValueError(f"unknown risk {risk!r}; expected one of {RISKS}")


def binomial_tail_p_value(losses: int, num_samples: int, epsilon: float) -> float:
    """P(Binomial(num_samples, epsilon) <= losses): the p-value of H0 "risk > epsilon" after `losses` 0/1 losses
    in `num_samples` samples. Summed in log space (lgamma), so n in the thousands neither overflows nor underflows
    before the sum."""
    if not 0 <= losses <= num_samples:
        raise ValueError(f"losses must be in [0, {num_samples}], got {losses}")
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    if losses == num_samples:
        return 1.0
    log_epsilon, log_rest = math.log(epsilon), math.log1p(-epsilon)
    log_n_factorial = math.lgamma(num_samples + 1)
    log_terms = [
        log_n_factorial
        - math.lgamma(i + 1)
        - math.lgamma(num_samples - i + 1)
        + i * log_epsilon
        + (num_samples - i) * log_rest
        for i in range(losses + 1)
    ]
    peak = max(log_terms)
    return min(1.0, math.exp(peak) * math.fsum(math.exp(term - peak) for term in log_terms))


def fixed_sequence(thresholds: np.ndarray) -> np.ndarray:
    """The fixed sequence: distinct finite candidates from the most conservative (highest: fewest samples leave
    early) to the most aggressive. +inf is left out: it is the fallback, never tested."""
    finite = np.asarray(thresholds, dtype=np.float64)
    return np.unique(finite[np.isfinite(finite)])[::-1]


def _percent(fraction: float) -> str:
    """0.01 -> "1.0%", 0.95 -> "95%", 0.0025 -> "0.25%": as few decimals as say the value exactly."""
    value = fraction * 100
    for decimals in range(4):
        text = f"{value:.{decimals}f}"
        if abs(float(text) - value) < 1e-9 and (decimals or value >= 10):
            return f"{text}%"
    return f"{value:.4g}%"


@dataclass(frozen=True)
class Certification:
    """What Learn then Test certified for one policy on one calibration split."""

    risk: str  # a name of RISKS
    epsilon: float  # the risk promised at most
    delta: float  # the chance the promise fails over the calibration draw
    num_samples: int  # n
    threshold: float  # the most aggressive certified threshold; +inf when none was
    losses: int  # k at that threshold (0 at +inf)
    p_value: float | None  # its binomial tail; None when nothing was certified (+inf is not tested)
    certified: bool  # whether any threshold that exits early was certified
    candidates_certified: int  # how far the walk went before its first failure

    @property
    def observed_risk(self) -> float:
        return self.losses / self.num_samples if self.num_samples else 0.0

    def statement(self) -> str:
        """The guarantee in one plain sentence."""
        phrase = RISK_PHRASES[self.risk]
        confidence, bound = _percent(1 - self.delta), _percent(self.epsilon)
        if not self.certified:
            return (
                f"No early exit could be certified on the {self.num_samples} calibration samples ({self.risk} at "
                f"most {bound} with probability at least {confidence}), so this policy never exits early: its "
                "answer is always the full model's."
            )
        return (
            f"With probability at least {confidence} over the draw of the {self.num_samples} calibration samples, "
            f"this policy's answer {phrase} on at most {bound} of inputs from the same distribution."
        )

    def to_json(self) -> dict[str, Any]:
        """calibration.json's and the manifest's `guarantee` object."""
        return {
            "risk": self.risk,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "n": self.num_samples,
            "threshold": self.threshold if math.isfinite(self.threshold) else str(self.threshold),
            "losses": self.losses,
            "observed_risk": self.observed_risk,
            "p_value": self.p_value,
            "certified": self.certified,
            "candidates_certified": self.candidates_certified,
            "statement": self.statement(),
        }


def certify(
    thresholds: np.ndarray,
    count_losses: Callable[[float], int],
    num_samples: int,
    risk: str = DEFAULT_RISK,
    epsilon: float = DEFAULT_EPSILON,
    delta: float = DEFAULT_DELTA,
) -> Certification:
    """Fixed-sequence testing over `thresholds` (any order; see `fixed_sequence`); `count_losses(t)` is the number
    of calibration samples with a loss at threshold t. Losses are only counted down to the first failure."""
    check_certification_options(risk, epsilon, delta)
    chosen, chosen_losses, chosen_p, passed = math.inf, 0, None, 0
    for threshold in fixed_sequence(thresholds):
        losses = count_losses(float(threshold))
        p_value = binomial_tail_p_value(losses, num_samples, epsilon)
        if p_value > delta:
            break
        chosen, chosen_losses, chosen_p, passed = float(threshold), losses, p_value, passed + 1
    return Certification(risk, epsilon, delta, num_samples, chosen, chosen_losses, chosen_p, passed > 0, passed)


def certified_agreement(guarantee: Mapping[str, Any] | None) -> float | None:
    """The agreement with full depth a manifest's `guarantee` promises (1 - epsilon), when it certified early exit
    on disagreement; None for any other guarantee or none."""
    if not guarantee or guarantee.get("risk") != "disagreement" or guarantee.get("certified") is not True:
        return None
    epsilon = guarantee.get("epsilon")
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0 < epsilon < 1:
        return None
    return 1.0 - float(epsilon)
