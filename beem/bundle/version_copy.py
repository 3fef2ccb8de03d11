"""Another version of a model from an existing bundle: copied beside the model's versions and renamed into place,
as `beem build` writes a version, so a server watching the model directory never sees half of it. Its manifest
says the new version (and name): the server refuses a version whose manifest names another one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from beem.bundle.manifest import MANIFEST_FILE


def copy_as_version(bundle_dir: Path, model_dir: Path, version: int, name: str | None = None) -> Path:
    """`bundle_dir` copied to `model_dir/<version>`, its manifest saying that version (and `name`, when given).
    The manifest is not among the checksummed files, so the copy verifies as the original does."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".staging-{version}"
    shutil.copytree(bundle_dir, staging)
    manifest_path = staging / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = str(version)
    if name is not None:
        manifest["name"] = name
    manifest_path.write_text(json.dumps(manifest, indent=1))
    target = model_dir / str(version)
    staging.rename(target)
    return target
