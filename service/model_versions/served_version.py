"""One version of one model as the server holds it: its manifest, engine, request service and shadow monitor, its
status, and how many requests hold it.

Lifecycle: `loading` (engine thread loading and warming up) -> `serving` (takes new requests) -> `draining`
(a newer version serves; the requests that hold this one finish on it) -> `unloaded` (engine closed, weights
released). A version that fails to load is `refused` and never serves.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from beem.bundle.bundle_reader import LoadedBundle
from beem.bundle.manifest import CALIBRATION_CACHE_FILE, Manifest
from beem.calibration.agreement_levels import AgreementLevels, agreement_levels
from beem.calibration.exit_cache import ExitCache
from beem.calibration.learn_then_test import certified_agreement
from beem.calibration.threshold_search import DEFAULT_ACCURACY_BUDGET
from beem.captioning.caption_bundle import LoadedCaptionBundle
from beem.policies.policy_table import threshold_ceiling
from service.captioning import CaptionService, ReadyCaptioner
from service.classification import ClassificationService, ReadyClassifier
from service.engine.admission_queue import AdmissionLimits, AdmissionQueue
from service.engine.drain_rate import DrainRate
from service.engine.row_ledger import RowLedger
from service.engine.step_engine import EngineBudget, StepEngine
from service.metrics import ServiceMetrics
from service.model_versions.model_admission import ModelAdmission, model_admission
from service.monitoring.alpha_controller import ControlSettings
from service.monitoring.live_policies import LivePolicies
from service.monitoring.shadow_monitor import ControlledPolicy, ShadowMonitor
from service.settings import ServerSettings
from service.tasks import EngineParts, TaskService, task_named

log = logging.getLogger(__name__)
HEADROOM = 0.01  # online control loosens only once agreement clears the target by this much (and its noise)


class VersionStatus(StrEnum):
    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"
    UNLOADED = "unloaded"
    REFUSED = "refused"


@dataclass(eq=False)
class ServedVersion:
    name: str
    directory: Path
    manifest: Manifest
    engine: StepEngine[Any, Any]
    service: TaskService
    admission: ModelAdmission  # the settings this model serves with (its own admission values among them)
    status: VersionStatus = VersionStatus.LOADING
    error: str | None = None
    leases: int = 0  # requests holding this version (event loop only)
    monitor: ShadowMonitor | None = None
    live_policies: LivePolicies = field(default_factory=LivePolicies)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def metrics(self) -> ServiceMetrics:
        return self.engine.metrics

    @property
    def ready(self) -> bool:
        """Loaded, warm, and its engine still running (an engine whose loop failed serves nothing)."""
        health = self.engine.health()
        serves = self.status in (VersionStatus.SERVING, VersionStatus.DRAINING)
        return serves and health.warmed_up and not health.closed and health.error is None

    def classifier(self) -> ReadyClassifier:
        """This version as a request of the classification routes uses it; 503 while it loads."""
        assert isinstance(self.service, ClassificationService)
        return self.service.ready()

    def captioner(self) -> ReadyCaptioner:
        assert isinstance(self.service, CaptionService)
        return self.service.ready()

    @property
    def settings(self) -> ServerSettings:
        return self.admission.settings

    def load(self, loading_threads: int | None = None) -> None:
        """Load and warm up (blocking: run it off the event loop), then set up the shadow monitor. Raises when the
        bundle cannot be served; the version is then `refused`. `loading_threads`: torch threads to load with (a
        swap loads beside a serving version, at background priority: one thread leaves it the other cores; the
        warm-up runs as it will serve)."""

        def set_up(bundle: LoadedBundle | LoadedCaptionBundle) -> None:
            # In the engine thread: the monitor's calibration levels run the policies' torch array form, and a
            # parallel torch op in any other thread gives it an OpenMP pool of its own, which slowed every served
            # caption 3x on 2 cores (issue 21; StepEngine.load says why).
            self.live_policies = LivePolicies(bundle.policies)
            self.service.live_policies = self.live_policies.view
            self.monitor = self.service.monitor = build_monitor(self, self.settings)

        try:
            self.engine.loading_threads = loading_threads
            self.engine.load(self.directory, self.settings.torch_threads, manifest=self.manifest, set_up=set_up)
        except Exception as error:
            self.status, self.error = VersionStatus.REFUSED, f"{type(error).__name__}: {error}"
            self.engine.close(timeout_s=5.0)
            raise

    def unload(self) -> None:
        """Close the engine (it finishes what was admitted) and let the weights go (blocking)."""
        self.engine.close()
        self.status = VersionStatus.UNLOADED
        self.engine.release()  # the last references to the weights: freed here, by reference counting
        self.monitor = self.service.monitor = None


def start_version(settings: ServerSettings, manifest: Manifest, models_served: int = 1) -> ServedVersion:
    """A version whose manifest has been read and verified, with its engine built but not loaded, on its model's
    own admission settings (`model_admission.py`: read from the model directory, the version's parent; its share
    of the cores among `models_served`)."""
    task = task_named(manifest.task)
    admission = model_admission(settings, task.name, manifest.path.parent.parent, models_served)
    engine = build_engine(admission.settings, task.name, manifest.num_layers)
    service = task.make_service(engine, admission.settings)
    return ServedVersion(manifest.name, manifest.path.parent, manifest, engine, service, admission)


def build_engine(settings: ServerSettings, task_name: str, num_layers: int) -> StepEngine[Any, Any]:
    """The engine of a bundle's task, with its admission queue, ledger and drain rate, from the settings."""
    task = task_named(task_name)
    metrics = ServiceMetrics(num_layers)
    ledger = RowLedger(metrics, task.name, num_layers)
    drain = DrainRate()
    limits = AdmissionLimits(max_queue=settings.max_queue, max_queue_wait_ms=settings.max_queue_wait_ms,
                             max_batch_wait_ms=settings.max_batch_wait_ms,
                             shadow_max_rows_in_engine=settings.shadow_max_rows_in_engine)  # fmt: skip
    budget = EngineBudget(max_batch_size=settings.max_batch_size, max_batch_tokens=settings.max_batch_tokens,
                          group_selection=settings.group_selection)  # fmt: skip
    queue: AdmissionQueue[Any] = AdmissionQueue(limits, ledger, drain, metrics)
    parts = EngineParts(task=task.name, queue=queue, ledger=ledger, drain=drain, metrics=metrics, budget=budget)
    return task.make_engine(parts, settings)


def build_monitor(version: ServedVersion, settings: ServerSettings) -> ShadowMonitor | None:
    """The version's shadow monitor, with the calibration split's agreement levels of every policy that can leave
    early, and online control of its default policy when the settings ask for it. None for a bundle without its
    calibration exit cache (written by every build since the format's first version; the manifest's checksums
    cover it when it is there): it serves, unmonitored."""
    cache_file = version.directory / CALIBRATION_CACHE_FILE
    if not cache_file.is_file():
        log.warning("model %s version %s has no %s: served without the shadow monitor", version.name,
                    version.version, CALIBRATION_CACHE_FILE)  # fmt: skip
        return None
    cache = ExitCache.load(cache_file)
    live = version.live_policies
    levels = {name: agreement_levels(cache, policy) for name, policy in live.view.items() if name != "full"}
    budget = float(version.manifest.calibration.get("accuracy_budget", DEFAULT_ACCURACY_BUDGET))
    control = None
    if version.name in settings.alpha_control or "all" in settings.alpha_control:
        control = controlled_policy(version, levels, budget, settings)
    return ShadowMonitor(
        version.metrics, levels, budget, live, settings.shadow_fraction, settings.shadow_window,
        control=control, model=version.name,
    )  # fmt: skip


def controlled_policy(
    version: ServedVersion, levels: dict[str, AgreementLevels], budget: float, settings: ServerSettings
) -> ControlledPolicy | None:
    """Online control of the default policy's threshold, within [lowest share x calibrated, the threshold past
    which nothing leaves early]. Only policies whose table entry has a threshold ceiling are controlled (BEEM's
    alpha, max-prob's threshold: positive scores, so shares of them mean something). The agreement target: the
    settings' when given, else 1 - epsilon when Learn then Test certified the policy's disagreement with full
    depth (the promise the controller then holds online), else the calibration split's agreement."""
    name = version.manifest.default_policy
    policy = version.live_policies.view[name]
    ceiling = threshold_ceiling(policy)
    if ceiling is None:
        log.warning("model %s: online control needs a default policy with a threshold ceiling (BEEM, max-prob), "
                    "not %s", version.name, name)  # fmt: skip
        return None
    calibrated = policy.threshold
    if not math.isfinite(calibrated) or calibrated <= 0:
        log.warning("model %s: %s's calibrated threshold %s cannot be controlled", version.name, name, calibrated)
        return None
    certified = certified_agreement(version.manifest.policies[name].guarantee)
    target = settings.alpha_control_target or certified or levels[name].agreement
    lowest = calibrated * settings.alpha_control_lowest
    control = ControlSettings(
        target_agreement=target, lowest=lowest, highest=max(ceiling, calibrated),
        step=settings.alpha_control_step * calibrated, min_comparisons=settings.alpha_control_min_comparisons,
        headroom=min(HEADROOM, (1 - target) / 2),  # a target near 1 leaves little room above it
        latency_slo_s=None if settings.latency_slo_ms is None else settings.latency_slo_ms / 1000,
        accuracy_budget=budget,
    )  # fmt: skip
    log.info("model %s: online control of %s's threshold from %.4f in [%.4f, %.4f], agreement target %.4f",
             version.name, name, calibrated, control.lowest, control.highest, target)  # fmt: skip
    return ControlledPolicy(name, control)
