"""Export a trained, calibrated model as a new numbered version under `model_store/<name>/`.

Files are written into a hidden staging directory that is renamed into place last, so a crash mid-export never
leaves a half-written version that a server could pick up.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

from beem.bundle.manifest import (
    CALIBRATION_FILE,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    bundle_files,
)
from beem.model.multi_exit_model import MultiExitModel


def next_version_dir(store_dir: Path, name: str) -> Path:
    model_dir = store_dir / name
    existing = (
        [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    )
    return model_dir / str(max(existing, default=0) + 1)


def model_state_for_storage(model: torch.nn.Module, storage_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {key: tensor.detach().to(storage_dtype).contiguous() for key, tensor in model.state_dict().items()}


def _clean_tokenizer_json(path: Path) -> None:
    """Drop the padding and truncation state the last `tokenizer(...)` call left in the fast tokenizer (it is
    saved with it and would depend on what the builder tokenized last), and write the JSON without indentation
    (transformers pretty-prints it: 700 KB instead of 470 KB)."""
    if path.is_file():
        content = json.loads(path.read_text(encoding="utf-8"))
        content["padding"] = None
        content["truncation"] = None
        path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")


def export_bundle(
    store_dir: Path,
    name: str,
    model: MultiExitModel,
    tokenizer: PreTrainedTokenizerBase,
    storage_dtype: torch.dtype,
    calibration: dict[str, Any],
    manifest_fields: dict[str, Any],
    write_extras: Callable[[Path], None],
) -> Path:
    """A classification bundle; `write_extras(staging_dir)` adds the report and caches before checksums."""

    def write_files(staging: Path) -> None:
        save_file(model_state_for_storage(model, storage_dtype), staging / WEIGHTS_FILE, metadata={"format": "pt"})
        tokenizer.save_pretrained(staging / TOKENIZER_DIR)
        _clean_tokenizer_json(staging / TOKENIZER_DIR / "tokenizer.json")
        (staging / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=1))
        write_extras(staging)

    return write_bundle(store_dir, name, manifest_fields, write_files)


def write_bundle(
    store_dir: Path, name: str, manifest_fields: dict[str, Any], write_files: Callable[[Path], None]
) -> Path:
    """Any task's bundle: `write_files(staging_dir)` writes its files, then the manifest lists them with their
    sha256 and the staging directory is renamed into place."""
    final_dir = next_version_dir(store_dir, name)
    staging = final_dir.parent / f".staging-{final_dir.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_files(staging)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": final_dir.name,
        **manifest_fields,
        "files": bundle_files(staging),
    }
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    staging.rename(final_dir)
    return final_dir
