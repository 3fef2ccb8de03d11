"""The bundle's contract: layout, manifest schema and integrity checks (specified in model_store/README.md).

A bundle is `model_store/<name>/<version>/` holding `manifest.json` plus the files it lists with their sha256.
Safetensors and JSON only: nothing in a bundle is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PolicyRecord:
    """One calibrated policy in the manifest: its parameters (named as the policy table names them), its
    headline numbers (accuracy, mean_exit_layer, layer_speedup) on the calibration and test splits, and, when the
    "ltt" rule chose its threshold, the guarantee it certified (`learn_then_test.Certification.to_json`)."""

    params: Mapping[str, Any]
    calibration: Mapping[str, float]
    test: Mapping[str, float]
    guarantee: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Manifest:
    """manifest.json, read and checked once: what serving reads is typed; what only reports and the builder's
    provenance read (backbone config, exit heads, decoder, training, data) stays as the JSON objects it is."""

    path: Path
    name: str
    version: str
    task: str  # a key of TASK_KEYS
    created_at: str | None
    backbone: Mapping[str, Any]  # name, origin, model_type, config
    num_layers: int
    max_length: int  # classification: tokens per input; captioning: tokens per caption, <end> included
    weights_dtype: str
    default_policy: str
    policies: Mapping[str, PolicyRecord]
    labels: tuple[str, ...]  # classification; () for a captioner
    calibration: Mapping[str, Any]
    training: Mapping[str, Any]
    data: Mapping[str, Any]
    raw: Mapping[str, Any]  # the whole JSON object, for the task's own loader (exit heads, encoder, decoder)

    @property
    def model_id(self) -> str:
        return f"{self.name}:{self.version}"

    @classmethod
    def from_json(cls, path: Path, raw: Mapping[str, Any]) -> Manifest:
        """Raises BundleError naming the key whose value is missing or of the wrong type."""

        def field(key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
            value = raw.get(key, default)
            if value is ... or not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
                raise BundleError(path, f"{key!r} must be {_kind_name(kind)}, got {value!r:.80}")
            return value

        task = field("task", str)
        num_layers, max_length = field("num_layers", int), field("max_length", int)
        if num_layers < 1 or max_length < 1:
            raise BundleError(path, "'num_layers' and 'max_length' must be positive")
        policies = {name: _policy_record(path, name, entry) for name, entry in field("policies", dict).items()}
        default_policy = field("default_policy", str)
        if default_policy not in policies:
            raise BundleError(path, f"default_policy {default_policy!r} is not among its policies {list(policies)}")
        labels = tuple(field("labels", list, []))
        if not all(isinstance(label, str) for label in labels):
            raise BundleError(path, "'labels' must be a list of strings")
        if task == "classification" and len(labels) < 2:
            raise BundleError(path, "a classifier needs at least two labels")
        weights = field("weights", dict)
        return cls(
            path=path,
            name=field("name", str),
            version=str(field("version", (str, int))),
            task=task,
            created_at=field("created_at", (str, type(None)), None),
            backbone=field("backbone", dict),
            num_layers=num_layers,
            max_length=max_length,
            weights_dtype=str(weights.get("dtype", "float32")),
            default_policy=default_policy,
            policies=policies,
            labels=labels,
            calibration=field("calibration", dict, {}),
            training=field("training", dict, {}),
            data=field("data", dict, {}),
            raw=raw,
        )


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", dict: "an object", list: "a list", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))


def _policy_record(path: Path, name: str, entry: Any) -> PolicyRecord:
    if not isinstance(entry, dict) or not isinstance(entry.get("params"), dict):
        raise BundleError(path, f"policy {name!r} must be an object with a 'params' object")
    guarantee = entry.get("guarantee")
    if guarantee is not None and not isinstance(guarantee, dict):
        raise BundleError(path, f"policy {name!r}: 'guarantee' must be an object, got {guarantee!r:.80}")
    return PolicyRecord(entry["params"], entry.get("calibration") or {}, entry.get("test") or {}, guarantee)


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse and check the manifest, then every listed file's checksum. Raises BundleError."""
    return Manifest.from_json(bundle_dir / MANIFEST_FILE, verified_manifest_json(bundle_dir))


def verified_manifest_json(bundle_dir: Path) -> dict[str, Any]:
    """The manifest's JSON object once its schema version, task, keys and every file's checksum are checked."""
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
