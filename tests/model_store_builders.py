"""Model stores for the multi-model and hot-swap tests, made from the tiny bundles the real builders export: another
version of a model is its bundle copied under a new version number (the manifest says which, as the builder
writes it), another model the same bundle under another name, a broken version one whose weights are damaged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from beem.bundle.manifest import MANIFEST_FILE, WEIGHTS_FILE
from beem.bundle.version_copy import copy_as_version


def add_version(model_dir: Path, bundle_dir: Path, version: int, name: str | None = None) -> Path:
    return copy_as_version(bundle_dir, model_dir, version, name)


def add_broken_version(model_dir: Path, bundle_dir: Path, version: int) -> Path:
    """A version whose weights no longer match their checksum (a copy cut short, a bad disk)."""
    staging = model_dir / f".staging-{version}"
    add_version(staging, bundle_dir, version)
    weights = staging / str(version) / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-64])
    target = model_dir / str(version)
    (staging / str(version)).rename(target)
    staging.rmdir()
    return target


def unbuildable_bundle(bundle_dir: Path, directory: Path) -> Path:
    """A copy of `bundle_dir` at `directory` whose exit heads' width no longer fits its weights: it verifies (the
    manifest is not checksummed) but its model cannot be built, so a server on it starts and never becomes ready."""
    shutil.copytree(bundle_dir, directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["exit_heads"]["hidden_size"] = 31
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    return directory


def model_store(root: Path, bundles: dict[str, Path]) -> Path:
    """`root/<name>/1` for each (name, bundle): every model at version 1."""
    for name, bundle_dir in bundles.items():
        (root / name).mkdir(parents=True)
        add_version(root / name, bundle_dir, 1, name=name)
    return root
