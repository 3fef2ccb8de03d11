"""The learned exit gate (issue 23): a two-layer MLP that reads what is known after exit i and says how likely
exit i's answer is to be the final layer's; a row leaves once the gate's log-odds reach the threshold.

Features after exit i (`GATE_FEATURES`): the exit's confidence, margin (top-1 minus top-2 probability) and
entropy; BEEM's running score under BEEM-A's weights and under BEEM-C's (i / L); the agreeing run; the depth i / L.
The gate is trained on one part of the calibration split to predict agreement with the final layer (no labels
needed) and its threshold certified by Learn then Test on the other part
(`beem/calibration/exit_gate_calibration.py`).

This is the readable reference, torch-free like every policy here; the array form (`array_policies.py`,
`gate_log_odds`) computes the same in float64 tensor ops, equal to it within rounding (its matrix products sum in
another order), which the property test allows for. The score is the log-odds, not the probability: a sigmoid's
exp differs between libm and torch in the last bit, a comparison of log-odds does not need one.

The weights travel in the manifest as JSON with the sha256 of their canonical form, checked when the policy is
built: a bundle whose gate was edited by hand is refused, like a bundle whose weights file was.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from beem.policies.exit_policies import ExitObservation, ExitPolicy, PolicyState

GATE_FEATURES = ("confidence", "margin", "entropy", "beem_a_score", "beem_c_score", "agreeing_run", "depth")
NUM_FEATURES = len(GATE_FEATURES)
HIDDEN_UNITS = 16
# The per-row parameter vector of the array form: [L, hidden weights (H x F, row-major), hidden bias (H), output
# weights (H), output bias], the standardization folded into the hidden layer (`GateWeights.vector`).
GATE_VECTOR_SIZE = 1 + HIDDEN_UNITS * NUM_FEATURES + 2 * HIDDEN_UNITS + 1


def _floats(raw: object, size: int, what: str) -> tuple[float, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != size:
        raise ValueError(f"the gate's {what} must be {size} numbers")
    values = tuple(float(v) for v in raw if isinstance(v, int | float) and not isinstance(v, bool))
    if len(values) != size or not all(math.isfinite(v) for v in values):
        raise ValueError(f"the gate's {what} must be {size} finite numbers")
    return values


@dataclass(frozen=True)
class GateWeights:
    """A trained gate: feature standardization and the MLP, for a model of `num_layers` exits."""

    num_layers: int
    beem_a_weights: tuple[float, ...]  # (L,) BEEM-A's w_i, for the running-score feature
    feature_mean: tuple[float, ...]  # (F,)
    feature_scale: tuple[float, ...]  # (F,) 1 / standard deviation
    hidden_weights: tuple[float, ...]  # (H * F,) row-major (H, F)
    hidden_bias: tuple[float, ...]  # (H,)
    output_weights: tuple[float, ...]  # (H,)
    output_bias: float

    def log_odds(self, features: Sequence[float]) -> float:
        """The gate's log-odds that this exit agrees with the final layer, from the (F,) features."""
        x = [(value - mean) * scale for value, mean, scale in
             zip(features, self.feature_mean, self.feature_scale, strict=True)]  # fmt: skip
        total = self.output_bias
        for unit in range(HIDDEN_UNITS):
            row = self.hidden_weights[unit * NUM_FEATURES : (unit + 1) * NUM_FEATURES]
            hidden = self.hidden_bias[unit] + sum(w * v for w, v in zip(row, x, strict=True))
            total += self.output_weights[unit] * max(hidden, 0.0)
        return total

    def vector(self) -> tuple[float, ...]:
        """The array form's per-row parameters (`GATE_VECTOR_SIZE` numbers). The standardization is folded into
        the hidden layer, W ((x - m) * s) + b = (W * s) x + (b - (W * s) m), so serving spends no step on it (two
        tensor ops fewer per exit; the sums round in another order, within the property test's tolerance)."""
        folded_weights: list[float] = []
        folded_bias: list[float] = []
        for unit in range(HIDDEN_UNITS):
            row = self.hidden_weights[unit * NUM_FEATURES : (unit + 1) * NUM_FEATURES]
            scaled = [w * scale for w, scale in zip(row, self.feature_scale, strict=True)]
            folded_weights += scaled
            folded_bias.append(self.hidden_bias[unit] - sum(w * m for w, m in zip(scaled, self.feature_mean,
                                                                                    strict=True)))  # fmt: skip
        return (float(self.num_layers), *folded_weights, *folded_bias, *self.output_weights, self.output_bias)

    def _body(self) -> dict[str, Any]:
        return {"features": list(GATE_FEATURES), "hidden_units": HIDDEN_UNITS, "num_layers": self.num_layers,
                "beem_a_weights": list(self.beem_a_weights), "feature_mean": list(self.feature_mean),
                "feature_scale": list(self.feature_scale), "hidden_weights": list(self.hidden_weights),
                "hidden_bias": list(self.hidden_bias), "output_weights": list(self.output_weights),
                "output_bias": self.output_bias}  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        body = self._body()
        return {**body, "sha256": _checksum(body)}

    @classmethod
    def from_json(cls, raw: object, num_layers: int) -> GateWeights:
        """Raises ValueError saying what is wrong: shapes, values, a model of another depth, or a checksum that
        does not match the weights."""
        if not isinstance(raw, Mapping):
            raise ValueError("the gate must be an object")
        if raw.get("features") != list(GATE_FEATURES) or raw.get("hidden_units") != HIDDEN_UNITS:
            raise ValueError(f"the gate must read {list(GATE_FEATURES)} with {HIDDEN_UNITS} hidden units")
        if raw.get("num_layers") != num_layers:
            raise ValueError(f"the gate is for {raw.get('num_layers')} layers, the model has {num_layers}")
        gate = cls(
            num_layers=num_layers,
            beem_a_weights=_floats(raw.get("beem_a_weights"), num_layers, "beem_a_weights"),
            feature_mean=_floats(raw.get("feature_mean"), NUM_FEATURES, "feature_mean"),
            feature_scale=_floats(raw.get("feature_scale"), NUM_FEATURES, "feature_scale"),
            hidden_weights=_floats(raw.get("hidden_weights"), HIDDEN_UNITS * NUM_FEATURES, "hidden_weights"),
            hidden_bias=_floats(raw.get("hidden_bias"), HIDDEN_UNITS, "hidden_bias"),
            output_weights=_floats(raw.get("output_weights"), HIDDEN_UNITS, "output_weights"),
            output_bias=_floats([raw.get("output_bias")], 1, "output_bias")[0],
        )
        if raw.get("sha256") != _checksum(gate._body()):
            raise ValueError("the gate's sha256 does not match its weights")
        return gate


def _checksum(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class ExitGatePolicy(ExitPolicy):
    """Exit once the gate's log-odds of agreeing with the final layer reach `min_log_odds` (0: even odds; 2.2:
    about 90%; 4.6: about 99%)."""

    gate: GateWeights
    min_log_odds: float
    name: str = "gate"

    @property
    def threshold(self) -> float:
        return self.min_log_odds

    def update(self, state: PolicyState, observation: ExitObservation) -> PolicyState:
        gate, index = self.gate, state.layers_seen  # 0-based: this is exit index + 1
        layer = index + 1
        agree = state.previous_label is not None and observation.label == state.previous_label
        run = state.agreeing_run + 1 if agree else 0
        depth = layer / gate.num_layers  # also BEEM-C's weight w_i = i / L
        a_part = gate.beem_a_weights[index] * observation.confidence
        c_part = depth * observation.confidence
        beem_a = state.beem_a_score + a_part if agree else a_part
        beem_c = state.beem_c_score + c_part if agree else c_part
        features = (observation.confidence, observation.margin, observation.entropy, beem_a, beem_c, float(run),
                    depth)  # fmt: skip
        return PolicyState(layer, observation.label, gate.log_odds(features), run, beem_a, beem_c)

    def next_score(self, state: PolicyState, observation: ExitObservation) -> float:
        return self.update(state, observation).score

    def with_threshold(self, threshold: float) -> ExitGatePolicy:
        return replace(self, min_log_odds=threshold)

    def params(self) -> dict[str, object]:
        return {"threshold": self.min_log_odds, "gate": self.gate.to_json()}
