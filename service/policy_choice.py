"""A request's exit policy: the bundle's calibrated default, or a named policy with optional overrides of its
calibrated parameters. Shared by the classify and caption routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from beem.policies.exit_policies import ExitPolicy
from beem.policies.policy_registry import build_policy
from service.errors import InputValidationError
from service.schemas import PolicySpec

SPEC_FIELDS = ("alpha", "threshold", "patience", "layer")
FIELDS_OF_POLICY = {
    "beem-a": ("alpha",), "beem-c": ("alpha",), "max-prob": ("threshold",), "entropy": ("threshold",),
    "patience": ("patience",), "static": ("layer",), "full": (),
}  # fmt: skip


@dataclass(frozen=True)
class ChosenPolicy:
    policy: ExitPolicy
    name: str


def choose_policy(manifest: dict[str, Any], spec: PolicySpec | None) -> ChosenPolicy:
    name = spec.name if spec is not None else str(manifest["default_policy"])
    params = dict(manifest["policies"][name]["params"])
    if spec is not None:
        for field in SPEC_FIELDS:
            value = getattr(spec, field)
            if value is None:
                continue
            if field not in FIELDS_OF_POLICY[name]:
                raise InputValidationError(f"policy.{field} does not apply to policy {name!r}")
            params[field] = value
        if name == "max-prob" and spec.threshold is not None and spec.threshold > 1:
            raise InputValidationError("policy.threshold for max-prob is a probability: at most 1")
    return ChosenPolicy(build_policy(name, params, int(manifest["num_layers"])), name)
