"""Build exit policies from names and user-facing parameters (the bundle's calibration, an HTTP request).

Parameters travel as JSON, where +inf ("never exit early") is written as the string "inf" (and -inf as "-inf").
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from beem.policies.exit_policies import (
    BeemPolicy,
    EntropyPolicy,
    ExitPolicy,
    FullDepthPolicy,
    MaxProbPolicy,
    PatiencePolicy,
    StaticPolicy,
)

POLICY_NAMES = ("beem-a", "beem-c", "max-prob", "entropy", "patience", "static", "full")
BEEM_NAMES = ("beem-a", "beem-c")


class PolicyParameterError(ValueError):
    """A policy name or parameter a user cannot use; the message says which and why."""


def json_number(value: float) -> float | str:
    """JSON has no infinity; +inf / -inf are written as the strings "inf" / "-inf" (which `float` reads back)."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _number(params: Mapping[str, object], key: str, low: float, high: float) -> float:
    raw = params.get(key)
    if raw is None:
        raise PolicyParameterError(f"parameter {key!r} is required")
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise PolicyParameterError(f"parameter {key!r} must be a number, got {raw!r}")
    try:
        value = float(raw)
    except ValueError as error:
        raise PolicyParameterError(f"parameter {key!r} must be a number, got {raw!r}") from error
    if math.isnan(value) or not low <= value <= high:
        raise PolicyParameterError(f"parameter {key!r} must be in [{low}, {high}], got {raw!r}")
    return value


def build_policy(name: str, params: Mapping[str, object], num_layers: int) -> ExitPolicy:
    """A policy from its name and parameters; raises PolicyParameterError with a readable message."""
    if name in BEEM_NAMES:
        weights = params.get("weights")
        if not isinstance(weights, (list, tuple)) or len(weights) != num_layers:
            raise PolicyParameterError(f"{name} needs {num_layers} weights, got {weights!r}")
        return BeemPolicy(
            name=name,
            weights=tuple(float(w) for w in weights),
            alpha=_number(params, "alpha", 0.0, math.inf),
            count_first_exit=bool(params.get("count_first_exit", True)),
            reset=str(params.get("reset", "restart")),
        )
    if name == "max-prob":
        return MaxProbPolicy(_number(params, "threshold", 0.0, math.inf))
    if name == "entropy":
        return EntropyPolicy(_number(params, "threshold", -math.inf, math.inf))
    if name == "patience":
        patience = _number(params, "patience", 0, math.inf)
        if not math.isinf(patience) and patience != int(patience):
            raise PolicyParameterError(f"parameter 'patience' must be a whole number, got {patience}")
        return PatiencePolicy(patience)
    if name == "static":
        layer = _number(params, "layer", 1, num_layers)
        if layer != int(layer):
            raise PolicyParameterError(f"parameter 'layer' must be a whole number, got {layer}")
        return StaticPolicy(layer)
    if name == "full":
        return FullDepthPolicy()
    raise PolicyParameterError(f"unknown policy {name!r}; expected one of {', '.join(POLICY_NAMES)}")


def policy_params_json(policy: ExitPolicy) -> dict[str, object]:
    return {key: json_number(value) if isinstance(value, float) else value for key, value in policy.params().items()}
