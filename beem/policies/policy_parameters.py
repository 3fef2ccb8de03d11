"""A policy parameter: its kind, range and who may set it, and how a raw value (a manifest's JSON, a request's) is
checked against it. The policy table (`policy_table.py`) lists each policy's parameters; this file reads them.

Parameters travel as JSON, where +inf ("never exit early") is written as the string "inf" (and -inf as "-inf").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from beem.policies.exit_gate import GateWeights


class PolicyParameterError(ValueError):
    """A policy name or parameter a user cannot use; the message says which and why."""


ParameterKind = Literal["number", "whole", "flag", "choice", "weights", "gate"]


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


def json_number(value: float) -> float | str:
    """JSON has no infinity; +inf / -inf are written as the strings "inf" / "-inf" (which `float` reads back)."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def parameter_number(parameter: PolicyParameter, raw: object, num_layers: int) -> float:
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


def parameter_value(parameter: PolicyParameter, raw: object, num_layers: int) -> object:
    if parameter.kind in ("number", "whole"):
        return parameter_number(parameter, raw, num_layers)
    if parameter.kind == "flag":
        if not isinstance(raw, bool):
            raise PolicyParameterError(f"parameter {parameter.name!r} must be true or false, got {raw!r}")
        return raw
    if parameter.kind == "choice":
        if raw not in parameter.choices:
            raise PolicyParameterError(f"parameter {parameter.name!r} must be one of {parameter.choices}, got {raw!r}")
        return raw
    if parameter.kind == "gate":
        try:
            return GateWeights.from_json(raw, num_layers)
        except ValueError as error:
            raise PolicyParameterError(f"parameter {parameter.name!r}: {error}") from error
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != num_layers:
        raise PolicyParameterError(f"parameter {parameter.name!r} needs {num_layers} numbers, got {raw!r}")
    weights = tuple(
        parameter_number(PolicyParameter(parameter.name, "number", "", low=0.0), w, num_layers) for w in raw
    )
    if any(math.isinf(w) for w in weights):
        raise PolicyParameterError(f"parameter {parameter.name!r} must be finite, got {raw!r}")
    return weights
