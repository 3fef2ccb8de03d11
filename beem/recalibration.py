"""`beem recalibrate`: the same weights, new thresholds, written as the model's next version.

Two sources of calibration samples:
- in-domain texts without labels (`--texts FILE`, for example a sample of real requests): the bundle's exits are
  run over them and every policy's threshold is certified by Learn then Test on *disagreement* with the final
  layer, which needs no labels (the cache's targets are the final layer's answers, so "accuracy" there reads as
  agreement with full depth, and BEEM-A's weights become each exit's agreement);
- the bundle's own calibration split, re-run from its data file (labels known): how a committed bundle is
  re-exported with new rules without retraining.

The new version copies the weights and tokenizer byte for byte, writes its own calibration, exit cache, report and
(for the calibration split) test evaluation, lists every file's sha256 like `beem build`, and records where it
came from (`recalibration` in the manifest). A server watching the model directory swaps it in (hot swap).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from beem.bundle.bundle_reader import load_bundle
from beem.bundle.bundle_writer import write_bundle
from beem.bundle.manifest import (
    CALIBRATION_CACHE_FILE,
    CALIBRATION_FILE,
    REPORT_FILE,
    REPORT_PLOT_FILE,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    read_manifest,
    resolve_bundle_dir,
)
from beem.bundle.report import write_report
from beem.calibration.exit_cache import ExitCache, compute_exit_cache
from beem.calibration.policy_calibration import CalibrationOptions, calibrate_policies, calibration_json
from beem.data.examples import Example, LabelledDataset, read_dataset
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import split_dataset
from beem.evaluation import evaluate_policies

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
COPIED = (WEIGHTS_FILE, TOKENIZER_DIR)  # what the new version takes from the old one unchanged
TEST_EVALUATION_FILE = "test_evaluation.json"


def read_texts(path: Path) -> list[str]:
    """One text per line (blank lines skipped), or a .jsonl file of objects with a "text" field."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        return [str(json.loads(line)["text"]) for line in lines]
    return lines


def _unlabelled(texts: list[str], label_names: tuple[str, ...]) -> LabelledDataset:
    """Texts as a dataset whose labels are placeholders: only the exits are read, never these labels."""
    return LabelledDataset(tuple(Example(text, 0) for text in texts), tuple(label_names), "unlabelled texts")


def _bundle_splits(
    manifest_data: dict[str, Any], label_names: tuple[str, ...], data_file: Path | None
) -> tuple[Path, Any]:
    """The bundle's own splits, re-cut from its data file: `data_file` when given, else where the manifest says
    (its repo_path, or the default data set). The file must be the one the bundle was built from (its sha256), or
    its "calibration split" would be other samples, possibly ones it was trained on."""
    if data_file is None:
        data_file = REPO_ROOT / manifest_data["repo_path"] if "repo_path" in manifest_data else REPO_DATA_FILE
    if not data_file.is_file():
        raise ValueError(f"the bundle's data file {data_file} is not there; pass it with --data")
    expected = manifest_data.get("sha256")
    if expected is not None and hashlib.sha256(data_file.read_bytes()).hexdigest() != expected:
        recorded = manifest_data.get("file")
        raise ValueError(f"{data_file} is not the file this bundle was built from (its manifest records "
                         f"{recorded} with sha256 {expected}); pass that file with --data")  # fmt: skip
    dataset = read_dataset(data_file, list(label_names))
    splits = split_dataset(dataset, tuple(manifest_data.get("split_fractions", (0.7, 0.15, 0.15))),
                           int(manifest_data.get("split_seed", 0)), manifest_data.get("calibration_share"))  # fmt: skip
    return data_file, splits


def recalibrate(
    bundle_path: Path,
    options: CalibrationOptions,
    texts_file: Path | None = None,
    default_policy: str | None = None,
    data_file: Path | None = None,
) -> Path:
    """The bundle at `bundle_path` recalibrated (from `texts_file`, or from its calibration split when None, cut
    from `data_file` or the file its manifest names) and written as its model's next version; returns the new
    version's directory."""
    from beem.builder import default_policy_name, policy_entry  # the builder's manifest records, not its training

    bundle_dir = resolve_bundle_dir(bundle_path)
    manifest = read_manifest(bundle_dir)
    if manifest.task != "classification":
        raise ValueError(f"{bundle_dir} is a {manifest.task} bundle; recalibration reads classification exits")
    bundle = load_bundle(bundle_dir)
    labels = tuple(manifest.labels)
    test_cache: ExitCache | None = None
    if texts_file is not None:
        texts = read_texts(texts_file)
        if not texts:
            raise ValueError(f"{texts_file} holds no texts")
        if options.risk != "disagreement" or options.selection_rule != "ltt":
            raise ValueError("texts without labels certify disagreement by Learn then Test: --risk disagreement, "
                             "--selection-rule ltt")  # fmt: skip
        cache = compute_exit_cache(bundle.model, bundle.tokenizer, _unlabelled(texts, labels), bundle.max_length)
        cache = replace(cache, targets=cache.exit_labels[:, -1].copy())  # agreement with full depth plays accuracy
        source = {"source": "texts", "file": texts_file.name, "num_texts": len(texts), "labels": False,
                  "sha256": hashlib.sha256(texts_file.read_bytes()).hexdigest()}  # fmt: skip
    else:
        data_file, splits = _bundle_splits(dict(manifest.data), labels, data_file)
        cache = compute_exit_cache(bundle.model, bundle.tokenizer, splits.calibration, bundle.max_length)
        test_cache = compute_exit_cache(bundle.model, bundle.tokenizer, splits.test, bundle.max_length)
        source = {"source": "calibration split", "file": str(data_file.relative_to(REPO_ROOT))
                  if data_file.is_relative_to(REPO_ROOT) else data_file.name, "num_texts": cache.num_samples,
                  "labels": True}  # fmt: skip
    calibrated = calibrate_policies(cache, options, num_labels=len(labels))
    calibration = calibration_json(cache, options, calibrated)
    policies = {name: entry.policy for name, entry in calibrated.items()}
    test_result = evaluate_policies(test_cache, policies) if test_cache is not None else None
    default = default_policy or manifest.default_policy
    if default == "best" or default not in calibrated:
        default = default_policy_name("best" if default == "best" else manifest.default_policy, calibration, options)
    raw = {key: value for key, value in manifest.raw.items()
           if key not in ("schema_version", "name", "version", "files")}  # fmt: skip
    records = {
        name: policy_entry(
            calibration["policies"][name],  # type: ignore[index]
            test_result["policies"][name] if test_result else None,
        )
        for name in calibrated
    }
    fields = {
        **raw,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "default_policy": default,
        "policies": records,
        "calibration": asdict(options),
        "recalibration": {"from": manifest.model_id, **source},
    }

    def write_files(staging: Path) -> None:
        for name in COPIED:
            source_path = bundle_dir / name
            if source_path.is_dir():
                shutil.copytree(source_path, staging / name)
            else:
                shutil.copy2(source_path, staging / name)
        (staging / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=1))
        cache.save(staging / CALIBRATION_CACHE_FILE)
        if test_result is not None:
            (staging / TEST_EVALUATION_FILE).write_text(json.dumps(test_result, indent=1))
        title = f"{manifest.name} recalibrated from version {manifest.version} ({source['source']})"
        write_report(staging, title, calibration, test_result, REPORT_FILE, REPORT_PLOT_FILE)

    new_dir = write_bundle(bundle_dir.parent.parent, manifest.name, fields, write_files)
    log.info("recalibrated %s into %s", manifest.model_id, new_dir)
    return new_dir
