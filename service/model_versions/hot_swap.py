"""Hot swap: a new version directory of a served model is verified, loaded and warmed beside the serving version,
then takes new requests; the old version finishes what it holds and is unloaded.

A new version is looked for every `poll_interval_s`, on `POST /admin/reload` and on SIGHUP. The newest version
directory of each watched model (a numbered directory with a manifest: the builder renames a finished version into
place, so a half-written one is never seen) is taken when it is newer than the serving one. Its manifest and
checksums are verified and its engine loaded and warmed up in a thread of its own while the old version serves;
only then does it take new requests. A version that fails any of this is refused: a log line, a count in
`beem_model_reloads_total{outcome="refused"}`, its reason in /v1/models, and the old version serves on. Polling
does not retry a refused version (versions are immutable); an explicit reload does.

Draining: requests hold the version they resolved (`ModelRegistry.lease`), so the old version is closed only once
no request holds it and nothing of it is queued or in flight; its engine then stops and its weights are released.
Memory peaks at both versions loaded at once during a swap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from beem.bundle.manifest import BundleError, read_manifest
from service.metrics import ServerMetrics
from service.model_versions.memory_release import release_freed_memory
from service.model_versions.model_registry import ModelRegistry, ServedModel
from service.model_versions.served_version import ServedVersion, VersionStatus, start_version
from service.settings import ServerSettings

log = logging.getLogger(__name__)
DRAIN_POLL_S = 0.02
SWAP_LOADING_THREADS = 1  # a new version loads and warms up on one core, beside the version serving on the others


@dataclass(frozen=True)
class ReloadOutcome:
    model: str
    version: str
    outcome: str  # "loaded" or "refused"
    error: str | None = None


class VersionWatcher:
    def __init__(self, registry: ModelRegistry, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self._lock = asyncio.Lock()  # one reload at a time: a poll and a SIGHUP never load the same version twice
        self._tasks: set[asyncio.Task[None]] = set()  # drains and the poller, kept referenced until done
        for name in registry.models:  # every series from 0, so the first refusal is an increase an alert sees
            for outcome in ("loaded", "refused"):
                metrics.model_reloads.labels(name, outcome)

    async def load_initial(self) -> None:
        """Load every model's starting version, one after another (they share the cores); a failure leaves that
        model not ready (503, the reason in /readyz) and the others serving."""
        for model in self.registry.models.values():
            version = model.active
            try:
                await asyncio.to_thread(version.load)
            except Exception as error:
                model.record(version.version, VersionStatus.REFUSED, version.error)
                log.error("model %s version %s did not load; it stays unready: %s", model.name, version.version, error)
                continue
            self._now_serving(model, version)

    def start_polling(self) -> None:
        if self.settings.poll_interval_s > 0:
            self._keep(asyncio.create_task(self._poll(self.settings.poll_interval_s)))

    async def _poll(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload()
            except Exception:  # a poll must never stop polling
                log.exception("looking for new model versions failed")

    def reload_in_background(self) -> None:
        """`reload(retry_refused=True)` as a task of its own (SIGHUP's handler cannot wait)."""

        async def reload_logging_failures() -> None:
            try:
                await self.reload(retry_refused=True)
            except Exception:
                log.exception("looking for new model versions failed")

        self._keep(asyncio.create_task(reload_logging_failures()))

    async def reload(self, retry_refused: bool = False) -> list[ReloadOutcome]:
        """Swap in the newest version of every watched model that has a newer one; what happened to each."""
        outcomes = []
        async with self._lock:
            for model in self.registry.models.values():
                directory = newest_version_dir(model.watched) if model.watched is not None else None
                # Directory names, not manifests: they are numbers, and a copy's manifest may say otherwise.
                if directory is None or int(directory.name) <= int(model.active.directory.name):
                    continue
                known = model.history.get(directory.name)
                if known is not None and known.status is VersionStatus.REFUSED and not retry_refused:
                    continue
                outcomes.append(await self._swap(model, directory))
        return outcomes

    async def _swap(self, model: ServedModel, directory: Path) -> ReloadOutcome:
        version_name = directory.name
        model.record(version_name, VersionStatus.LOADING)
        new: ServedVersion | None = None
        started = time.perf_counter()
        try:
            manifest = await asyncio.to_thread(read_manifest, directory)  # checksums of every file
            if manifest.version != version_name:  # versions are immutable: a copied directory is not a new one
                raise BundleError(directory, f"its manifest says version {manifest.version}, its directory "
                                             f"{version_name}")  # fmt: skip
            if manifest.name != model.name or manifest.task != model.task:
                raise BundleError(directory, f"a {manifest.task} bundle named {manifest.name!r}, not a version of "
                                             f"the {model.task} model {model.name!r}")  # fmt: skip
            new = start_version(self.settings, manifest, models_served=len(self.registry.models))
            await asyncio.to_thread(new.load, SWAP_LOADING_THREADS)
        except Exception as error:
            reason = new.error if new is not None and new.error else f"{type(error).__name__}: {error}"
            model.record(version_name, VersionStatus.REFUSED, reason)
            self.metrics.model_reloads.labels(model.name, "refused").inc()
            log.error("model %s: version %s refused, version %s serves on: %s", model.name, version_name,
                      model.active.version, reason)  # fmt: skip
            return ReloadOutcome(model.name, version_name, "refused", reason)
        old = model.active
        self._now_serving(model, new)
        self.metrics.model_reloads.labels(model.name, "loaded").inc()
        log.info("model %s: version %s verified, loaded and warmed in %.2f s, serves now; version %s drains",
                 model.name, new.version, time.perf_counter() - started, old.version)  # fmt: skip
        if old.status is not VersionStatus.REFUSED:  # a refused version has no engine left to drain
            old.status = VersionStatus.DRAINING
            model.record(old.version, VersionStatus.DRAINING)
            model.draining.append(old)
            self._keep(asyncio.create_task(self._drain(model, old)))
        return ReloadOutcome(model.name, new.version, "loaded")

    def _now_serving(self, model: ServedModel, version: ServedVersion) -> None:
        version.status = VersionStatus.SERVING
        model.active = version
        model.record(version.version, VersionStatus.SERVING)
        self.metrics.serving_version.labels(model.name).set(int(version.version))

    async def _drain(self, model: ServedModel, old: ServedVersion) -> None:
        """Unload `old` once no request holds it and its engine has nothing queued or in flight."""
        started = time.perf_counter()
        while old.leases or old.engine.queue.depth or old.engine.inflight_rows:
            await asyncio.sleep(DRAIN_POLL_S)
        drained = time.perf_counter()
        await asyncio.to_thread(old.unload)
        await asyncio.to_thread(release_freed_memory)
        model.draining.remove(old)
        model.record(old.version, VersionStatus.UNLOADED, rows=old.engine.ledger.totals())
        log.info("model %s: version %s drained in %.2f s, unloaded in %.2f s", model.name, old.version,
                 drained - started, time.perf_counter() - drained)  # fmt: skip

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop polling and draining; close every engine (each finishes what it admitted)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        closing = [asyncio.to_thread(version.engine.close) for version in self.registry.live_versions()]
        await asyncio.gather(*closing, return_exceptions=True)


def newest_version_dir(model_dir: Path) -> Path | None:
    """The highest numbered version directory that holds a manifest (hidden staging directories never match)."""
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / "manifest.json").is_file()]
    return max(versions, key=lambda p: int(p.name), default=None)
