"""A request's exit policy: the bundle's calibrated default, or a named policy with optional overrides of its
calibrated parameters. Shared by the classify and caption routes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from beem.bundle.manifest import Manifest
from beem.policies.exit_policies import ExitPolicy
from beem.policies.policy_table import build_policy
from service.errors import InputValidationError
from service.schemas import PolicySpec


@dataclass(frozen=True)
class ChosenPolicy:
    policy: ExitPolicy
    name: str


def choose_policy(manifest: Manifest, calibrated: Mapping[str, ExitPolicy], spec: PolicySpec | None) -> ChosenPolicy:
    """The bundle's calibrated policy (built once at load) unless the request overrides a parameter. The wire
    schema has checked the parameters' names and fixed ranges (both from the policy table); `build_policy` checks
    the merged values again, bounds that depend on the bundle included."""
    name = spec.name if spec is not None else manifest.default_policy
    if name not in calibrated:
        raise InputValidationError(f"policy {name!r} is not calibrated in this bundle; it has {', '.join(calibrated)}")
    overrides = spec.overrides() if spec is not None else {}
    if not overrides:
        return ChosenPolicy(calibrated[name], name)
    params = {**manifest.policies[name].params, **overrides}
    return ChosenPolicy(build_policy(name, params, manifest.num_layers, len(manifest.labels)), name)
