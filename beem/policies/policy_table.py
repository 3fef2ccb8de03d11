"""The one policy table: every serving policy, its parameters (defaults, ranges, who may set them) and the array
rule that decides it. Nothing else lists the policies.

Everything that needs the set of policies derives it from `POLICY_TABLE`:
- the wire schema (`service/schemas.py`) makes one request model per entry from its per-request parameters;
- validation (`build_policy`, used for bundle manifests and requests alike) checks values against the ranges here;
- calibration (`beem/calibration/policy_calibration.py`) starts every entry from its `starting_point`;
- serving and calibration decide with the entry's `rule` (`beem/policies/array_policies.py`).

Parameters travel as JSON, where +inf ("never exit early") is written as the string "inf" (and -inf as "-inf").
Torch-free, like the per-sample reference it builds (DESIGN 4).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from beem.policies.exit_policies import (
    RESET_MODES,
    BeemPolicy,
    EntropyPolicy,
    ExitPolicy,
    FullDepthPolicy,
    MaxProbPolicy,
    PatiencePolicy,
    StaticPolicy,
    beem_a_weights,
    beem_c_weights,
)


class ArrayRule(IntEnum):
    """Which score the array form computes for a row (`array_policies.fold`); rows of any rule share a call."""

    BEEM = 0  # S_i: weighted confidence while neighbouring exits agree (DESIGN 3.1)
    MAX_PROB = 1  # C_i
    ENTROPY = 2  # -H_i
    PATIENCE = 3  # agreeing exits in a row
    DEPTH = 4  # the layer number: static and full depth


class PolicyParameterError(ValueError):
    """A policy name or parameter a user cannot use; the message says which and why."""


ParameterKind = Literal["number", "whole", "flag", "choice", "weights"]


@dataclass(frozen=True)
class PolicyParameter:
    name: str
    kind: ParameterKind
    description: str
    default: object = None  # None: required (a calibrated value)
    low: float = -math.inf
    high: float = math.inf  # both inclusive
    at_most_num_layers: bool = False  # the upper bound is the model's depth
    never: float | None = None  # a value outside [low, high] that means "never exit early" (what calibration
    # writes when no threshold is feasible)
    choices: tuple[str, ...] = ()
    per_request: bool = False  # a request may override the calibrated value


@dataclass(frozen=True)
class CalibrationStart:
    """What calibration knows before it searches thresholds."""

    num_layers: int
    exit_accuracies: tuple[float, ...]  # per exit, on the calibration split
    count_first_exit: bool = True
    reset: str = "restart"


@dataclass(frozen=True)
class PolicyDefinition:
    name: str
    summary: str
    rule: ArrayRule
    parameters: tuple[PolicyParameter, ...]
    make: Callable[[Mapping[str, object]], ExitPolicy]  # from validated parameter values
    starting_point: Callable[[CalibrationStart], ExitPolicy]  # the uncalibrated policy (threshold a placeholder)
    searched: bool = True  # calibration searches its threshold (full depth has none)

    @property
    def request_parameters(self) -> tuple[PolicyParameter, ...]:
        return tuple(p for p in self.parameters if p.per_request)


def _alpha(description: str) -> PolicyParameter:
    return PolicyParameter("alpha", "number", description, low=0.0, per_request=True)


BEEM_OPTIONS = (
    PolicyParameter("weights", "weights", "w_1..w_L, one non-negative weight per exit (calibrated)"),
    PolicyParameter(
        "count_first_exit", "flag", "the first exit's w_1*C_1 counts (the paper); false: it adds 0", default=True
    ),
    PolicyParameter(
        "reset",
        "choice",
        "a disagreement restarts the score at w_i*C_i (restart) or at 0 (zero)",
        default="restart",
        choices=RESET_MODES,
    ),
)


def _beem(name: str) -> Callable[[Mapping[str, object]], ExitPolicy]:
    def make(values: Mapping[str, object]) -> ExitPolicy:
        weights = values["weights"]
        assert isinstance(weights, tuple)
        return BeemPolicy(name, weights, float(values["alpha"]),  # type: ignore[arg-type]
                          bool(values["count_first_exit"]), str(values["reset"]))  # fmt: skip

    return make


def _beem_start(name: str, weights: Callable[[CalibrationStart], tuple[float, ...]]) -> Callable[..., ExitPolicy]:
    return lambda start: BeemPolicy(name, weights(start), math.inf, start.count_first_exit, start.reset)


POLICY_TABLE: dict[str, PolicyDefinition] = {
    definition.name: definition
    for definition in (
        PolicyDefinition(
            "beem-a", "BEEM with accuracy weights: w_i = exit i's calibration accuracy", ArrayRule.BEEM,
            (_alpha("exit once the BEEM score reaches alpha"), *BEEM_OPTIONS),
            _beem("beem-a"), _beem_start("beem-a", lambda s: beem_a_weights(s.exit_accuracies)),
        ),
        PolicyDefinition(
            "beem-c", "BEEM with cost weights: w_i = i / L", ArrayRule.BEEM,
            (_alpha("exit once the BEEM score reaches alpha"), *BEEM_OPTIONS),
            _beem("beem-c"), _beem_start("beem-c", lambda s: beem_c_weights(s.num_layers)),
        ),
        PolicyDefinition(
            "max-prob", "exit once the exit's max probability reaches the threshold (DeeBERT-style)",
            ArrayRule.MAX_PROB,
            (PolicyParameter("threshold", "number", "minimum max probability", low=0.0, high=1.0, never=math.inf,
                             per_request=True),),
            lambda v: MaxProbPolicy(float(v["threshold"])), lambda s: MaxProbPolicy(math.inf),  # type: ignore[arg-type]
        ),
        PolicyDefinition(
            "entropy", "exit once the exit's entropy falls to the threshold or below (DeeBERT)", ArrayRule.ENTROPY,
            (PolicyParameter("threshold", "number", "maximum entropy, nats", low=0.0, never=-math.inf,
                             per_request=True),),
            lambda v: EntropyPolicy(float(v["threshold"])), lambda s: EntropyPolicy(-math.inf),  # type: ignore[arg-type]
        ),
        PolicyDefinition(
            "patience", "exit after `patience` agreeing exits in a row (PABEE)", ArrayRule.PATIENCE,
            (PolicyParameter("patience", "whole", "agreeing exits in a row", low=0, high=1024, never=math.inf,
                             per_request=True),),
            lambda v: PatiencePolicy(float(v["patience"])), lambda s: PatiencePolicy(math.inf),  # type: ignore[arg-type]
        ),
        PolicyDefinition(
            "static", "every sample exits at the same layer", ArrayRule.DEPTH,
            (PolicyParameter("layer", "whole", "the layer every sample exits at", low=1, at_most_num_layers=True,
                             per_request=True),),
            lambda v: StaticPolicy(float(v["layer"])), lambda s: StaticPolicy(s.num_layers),  # type: ignore[arg-type]
        ),
        PolicyDefinition(
            "full", "every sample runs every layer: the baseline", ArrayRule.DEPTH, (),
            lambda v: FullDepthPolicy(), lambda s: FullDepthPolicy(), searched=False,
        ),
    )
}  # fmt: skip
POLICY_NAMES = tuple(POLICY_TABLE)
RULE_OF_CLASS: dict[type[ExitPolicy], ArrayRule] = {
    BeemPolicy: ArrayRule.BEEM, MaxProbPolicy: ArrayRule.MAX_PROB, EntropyPolicy: ArrayRule.ENTROPY,
    PatiencePolicy: ArrayRule.PATIENCE, StaticPolicy: ArrayRule.DEPTH, FullDepthPolicy: ArrayRule.DEPTH,
}  # fmt: skip


def json_number(value: float) -> float | str:
    """JSON has no infinity; +inf / -inf are written as the strings "inf" / "-inf" (which `float` reads back)."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _number(parameter: PolicyParameter, raw: object, num_layers: int) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise PolicyParameterError(f"parameter {parameter.name!r} must be a number, got {raw!r}")
    try:
        value = float(raw)
    except ValueError as error:
        raise PolicyParameterError(f"parameter {parameter.name!r} must be a number, got {raw!r}") from error
    if parameter.never is not None and value == parameter.never:
        return value
    high = min(parameter.high, num_layers) if parameter.at_most_num_layers else parameter.high
    if math.isnan(value) or not parameter.low <= value <= high:
        raise PolicyParameterError(
            f"parameter {parameter.name!r} must be in [{parameter.low:g}, {high:g}], got {raw!r}"
        )
    if parameter.kind == "whole" and not math.isinf(value) and value != int(value):
        raise PolicyParameterError(f"parameter {parameter.name!r} must be a whole number, got {raw!r}")
    return value


def _value(parameter: PolicyParameter, raw: object, num_layers: int) -> object:
    if parameter.kind in ("number", "whole"):
        return _number(parameter, raw, num_layers)
    if parameter.kind == "flag":
        if not isinstance(raw, bool):
            raise PolicyParameterError(f"parameter {parameter.name!r} must be true or false, got {raw!r}")
        return raw
    if parameter.kind == "choice":
        if raw not in parameter.choices:
            raise PolicyParameterError(f"parameter {parameter.name!r} must be one of {parameter.choices}, got {raw!r}")
        return raw
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != num_layers:
        raise PolicyParameterError(f"parameter {parameter.name!r} needs {num_layers} numbers, got {raw!r}")
    weights = tuple(_number(PolicyParameter(parameter.name, "number", "", low=0.0), w, num_layers) for w in raw)
    if any(math.isinf(w) for w in weights):
        raise PolicyParameterError(f"parameter {parameter.name!r} must be finite, got {raw!r}")
    return weights


def definition_of(name: str) -> PolicyDefinition:
    definition = POLICY_TABLE.get(name)
    if definition is None:
        raise PolicyParameterError(f"unknown policy {name!r}; expected one of {', '.join(POLICY_NAMES)}")
    return definition


def build_policy(name: str, params: Mapping[str, object], num_layers: int) -> ExitPolicy:
    """A policy from its name and parameters (a manifest's, or a request's merged over them), validated against
    the table; raises PolicyParameterError with a readable message."""
    definition = definition_of(name)
    known = {parameter.name for parameter in definition.parameters}
    unknown = sorted(set(params) - known)
    if unknown:
        raise PolicyParameterError(f"parameter {unknown[0]!r} does not apply to policy {name!r}")
    values: dict[str, object] = {}
    for parameter in definition.parameters:
        raw = params.get(parameter.name, parameter.default)
        if raw is None:
            raise PolicyParameterError(f"parameter {parameter.name!r} is required")
        values[parameter.name] = _value(parameter, raw, num_layers)
    return definition.make(values)


def policy_params_json(policy: ExitPolicy) -> dict[str, object]:
    return {key: json_number(value) if isinstance(value, float) else value for key, value in policy.params().items()}
