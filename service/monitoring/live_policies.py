"""The policies a version serves new requests with: the bundle's calibrated ones, until online control moves a
threshold (`shadow_monitor.py`, its one writer). Everyone else (the request services, the monitor's checks, the
status routes) reads them through a read-only view, so nothing but the controller can change what is served."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from beem.policies.exit_policies import ExitPolicy


class LivePolicies:
    def __init__(self, calibrated: Mapping[str, ExitPolicy] | None = None) -> None:
        self._policies: dict[str, ExitPolicy] = dict(calibrated or {})
        self.view: Mapping[str, ExitPolicy] = MappingProxyType(self._policies)  # follows every change

    def serve_threshold(self, name: str, threshold: float) -> ExitPolicy:
        """Serve `name` with `threshold` from the next request on (the controller's one write); the policy now
        served. A policy object is immutable: rows already in flight keep the one they joined with."""
        policy = self._policies[name]
        if policy.threshold != threshold:
            policy = self._policies[name] = policy.with_threshold(threshold)
        return policy
