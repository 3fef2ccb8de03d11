"""Every model the server serves, by name, and which of its versions takes new requests.

Models come from the settings: each bundle named (`--bundle`, repeatable) and every model directory under
`--model-store`. A model directory (versions below it) is watched for new versions (`hot_swap.py`); a version
directory named directly is pinned. A request names its model as "name" or "name:version", or none: then the
default model of its task answers (the `default_model` setting when it is of that task, else the first such model
by name).

A request holds the version it resolved (`lease`) until it has its answer, so a swap never pulls a version from
under a request: the old version drains while new requests go to the new one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from beem.bundle.manifest import MANIFEST_FILE, BundleError, read_manifest, resolve_bundle_dir
from service.errors import ModelNotFoundError, NotReadyError
from service.model_versions.served_version import ServedVersion, VersionStatus, start_version
from service.settings import ServerSettings


@dataclass(eq=False)
class VersionRecord:
    """What the server knows of one version directory: where it is in its lifecycle, and why it was refused."""

    version: str
    status: VersionStatus
    error: str | None = None
    rows: dict[str, object] | None = None  # an unloaded version's final row ledger (`RowLedger.totals`)


@dataclass(eq=False)
class ServedModel:
    name: str
    task: str
    watched: Path | None  # the model directory whose new versions are picked up; None: a pinned version
    active: ServedVersion  # takes new requests (once ready)
    draining: list[ServedVersion] = field(default_factory=list)  # older versions finishing their requests
    history: dict[str, VersionRecord] = field(default_factory=dict)  # every version seen, by version

    def record(
        self, version: str, status: VersionStatus, error: str | None = None, rows: dict[str, object] | None = None
    ) -> None:
        self.history[version] = VersionRecord(version, status, error, rows)

    def live_versions(self) -> list[ServedVersion]:
        return [self.active, *self.draining]


class ModelRegistry:
    def __init__(self, settings: ServerSettings) -> None:
        """Reads and verifies every served model's starting version (a bad bundle stops start-up here, with the
        file and the problem); nothing is loaded yet."""
        self.settings = settings
        self.models: dict[str, ServedModel] = {}
        bundle_model = None  # the model of the `bundle` setting, when it is served: the default unless one is named
        served = _served_directories(settings)
        for directory, watched in served:
            manifest = read_manifest(resolve_bundle_dir(directory))
            if directory.resolve() == settings.bundle.resolve():
                bundle_model = manifest.name
            if manifest.name in self.models:
                raise BundleError(directory, f"a second bundle of model {manifest.name!r}: serve one directory each")
            version = start_version(settings, manifest, models_served=len(served))
            model = ServedModel(manifest.name, manifest.task, watched, version)
            model.record(version.version, VersionStatus.LOADING)
            self.models[manifest.name] = model
        if not self.models:
            raise BundleError(settings.model_store or settings.bundle, "no bundles to serve")
        named = settings.default_model
        if named is not None and named not in self.models:
            raise BundleError(settings.model_store or settings.bundle, f"default model {named!r} is not served")
        self.default_name = named or bundle_model or sorted(self.models)[0]

    @property
    def tasks(self) -> frozenset[str]:
        return frozenset(model.task for model in self.models.values())

    def default_for(self, task: str) -> ServedModel:
        """The model answering a request of `task` that names none."""
        default = self.models[self.default_name]
        if default.task == task:
            return default
        for name in sorted(self.models):
            if self.models[name].task == task:
                return self.models[name]
        raise ModelNotFoundError(f"no {task} model is served")

    def resolve(self, reference: str | None, task: str) -> ServedVersion:
        """The version a request of `task` runs on: "name", "name:version" (that version must be the one serving)
        or None (the task's default). 404 for a model not served or of another task, 503 while it loads."""
        if reference is None:
            model = self.default_for(task)
            version = None
        else:
            name, _, version = reference.partition(":")
            if name not in self.models:
                raise ModelNotFoundError(
                    f"model {name!r} is not served; this server has {', '.join(sorted(self.models))}"
                )
            model = self.models[name]
            if model.task != task:
                raise ModelNotFoundError(f"model {name!r} is a {model.task} model, not a {task} one")
        served = model.active
        if version and version != served.version:
            raise ModelNotFoundError(
                f"version {version} of {model.name!r} does not take requests; version {served.version} does"
            )
        if not served.ready:
            reason = served.error or served.engine.health().error
            if reason:
                raise NotReadyError(f"model {model.name!r} is not serving: {reason}")
            raise NotReadyError(f"model {model.name!r} is still loading; retry shortly")
        return served

    @contextmanager
    def lease(self, reference: str | None, task: str) -> Iterator[ServedVersion]:
        """The version to run a request on, held until the request is done (event loop only)."""
        served = self.resolve(reference, task)
        served.leases += 1
        try:
            yield served
        finally:
            served.leases -= 1

    def live_versions(self) -> list[ServedVersion]:
        """Every version with an engine: the serving ones and those draining."""
        return [version for model in self.models.values() for version in model.live_versions()]

    def all_ready(self) -> bool:
        return all(model.active.ready for model in self.models.values())


def _served_directories(settings: ServerSettings) -> list[tuple[Path, Path | None]]:
    """(bundle directory, the model directory to watch or None when a version is pinned), for every bundle named
    and every model directory under the model store."""
    served = [(path, None if (path / MANIFEST_FILE).is_file() else path) for path in settings.bundle_paths()]
    named = {path.resolve() for path, _ in served}
    if settings.model_store is not None:
        for child in sorted(settings.model_store.iterdir()):
            model_dir = child.is_dir() and any(p.is_dir() and p.name.isdigit() for p in child.iterdir())
            if model_dir and child.resolve() not in named:  # a model named with --bundle too is served once
                served.append((child, child))
    return served
