"""The bundle's contract: layout, manifest schema and integrity checks (specified in model_store/README.md).

A bundle is `model_store/<name>/<version>/` holding `manifest.json` plus the files it lists with their sha256.
Safetensors and JSON only: nothing in a bundle is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
CALIBRATION_FILE = "calibration.json"
CALIBRATION_CACHE_FILE = "calibration_exits.safetensors"
REPORT_FILE = "report.md"
REPORT_PLOT_FILE = "report.png"
VOCABULARY_FILE = "vocabulary.json"
REQUIRED_KEYS = (
    "schema_version",
    "name",
    "version",
    "task",
    "backbone",
    "num_layers",
    "max_length",
    "weights",
    "policies",
    "default_policy",
    "files",
)
# What each task adds: a classifier's labels and exit heads; a captioner's image encoder and decoder.
TASK_KEYS = {"classification": ("labels", "exit_heads"), "caption": ("encoder", "decoder")}


class BundleError(RuntimeError):
    """A bundle that must not be served; the message names the file and the problem."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(bundle_dir: Path) -> dict[str, str]:
    """sha256 of every file in the bundle except the manifest, keyed by POSIX path relative to the bundle."""
    return {
        path.relative_to(bundle_dir).as_posix(): sha256_of(path)
        for path in sorted(bundle_dir.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    """Parse and check the manifest, then every listed file's checksum. Raises BundleError."""
    manifest_path = bundle_dir / MANIFEST_FILE
    if not bundle_dir.is_dir():
        raise BundleError(bundle_dir, "no such bundle directory")
    if not manifest_path.is_file():
        raise BundleError(manifest_path, "missing: not a bundle (no manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(manifest_path, f"not valid JSON ({error})") from error
    if not isinstance(manifest, dict):
        raise BundleError(manifest_path, "must hold a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            manifest_path, f"unknown schema_version {version!r}; this build of beem reads version {SCHEMA_VERSION}"
        )
    task = manifest.get("task")
    if task not in TASK_KEYS:
        raise BundleError(manifest_path, f"unknown task {task!r}; this build of beem serves {sorted(TASK_KEYS)}")
    missing = [key for key in (*REQUIRED_KEYS, *TASK_KEYS[task]) if key not in manifest]
    if missing:
        raise BundleError(manifest_path, f"missing keys {missing}")
    listed = manifest["files"]
    if not isinstance(listed, dict) or WEIGHTS_FILE not in listed:
        raise BundleError(manifest_path, f"'files' must map every bundle file (including {WEIGHTS_FILE}) to sha256")
    for relative, expected in listed.items():
        path = bundle_dir / relative
        if not path.resolve().is_relative_to(bundle_dir.resolve()):
            raise BundleError(manifest_path, f"file entry {relative!r} points outside the bundle")
        if not path.is_file():
            raise BundleError(path, "missing: listed in manifest.json but not in the bundle")
        actual = sha256_of(path)
        if actual != expected:
            raise BundleError(
                path,
                f"checksum mismatch (manifest {expected[:12]}..., file {actual[:12]}...): "
                "the file was changed after export",
            )
    return manifest


def latest_version(model_dir: Path) -> Path:
    """`model_store/<name>/` -> its highest numbered version directory."""
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    if not versions:
        raise BundleError(model_dir, "no numbered version directories (expected <name>/<version>/manifest.json)")
    return max(versions, key=lambda p: int(p.name))


def resolve_bundle_dir(path: Path) -> Path:
    """Accept either a version directory or a model directory (then its latest version)."""
    if (path / MANIFEST_FILE).is_file():
        return path
    if not path.is_dir():
        raise BundleError(path, "no such bundle directory")
    if not any(p.is_dir() and p.name.isdigit() for p in path.iterdir()):
        raise BundleError(path / MANIFEST_FILE, "missing: not a bundle (no manifest.json, no numbered versions below)")
    return latest_version(path)
