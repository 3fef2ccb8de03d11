"""The `beem` command: build bundles, evaluate them, regenerate the processed data."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

from beem.builder import build, file_sha256
from beem.bundle.bundle_reader import load_bundle
from beem.bundle.manifest import BundleError, read_manifest, resolve_bundle_dir
from beem.calibration.exit_cache import compute_exit_cache
from beem.data.examples import DataFormatError, read_dataset
from beem.data.rotten_tomatoes import REPO_DATA_FILE, write_processed
from beem.data.splits import SPLIT_NAMES, split_dataset
from beem.evaluation import evaluate_policies
from beem.model.pretrained_backbones import BackboneNotFoundError
from beem.presets import PRESETS, get_preset, with_training

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORE = REPO_ROOT / "model_store"


def _build(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset)
    training_overrides = {
        key: value
        for key, value in (
            ("epochs", args.epochs),
            ("seed", args.seed),
            ("max_steps_per_epoch", args.max_steps_per_epoch),
            ("max_length", args.max_length),
        )
        if value is not None
    }
    if training_overrides:
        preset = with_training(preset, **training_overrides)
    preset_overrides = {
        key: value
        for key, value in (("backbone", args.backbone), ("data_file", args.data), ("bundle_name", args.name))
        if value is not None
    }
    if preset_overrides:
        preset = replace(preset, **preset_overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir) if args.run_dir else REPO_ROOT / "runs" / preset.name
    bundle_dir = build(preset, Path(args.store), run_dir)
    print(bundle_dir)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    bundle_dir = resolve_bundle_dir(Path(args.bundle))
    manifest = read_manifest(bundle_dir)
    data_file = Path(args.data) if args.data else REPO_DATA_FILE
    dataset = read_dataset(data_file, manifest["labels"])
    provenance = manifest.get("data", {})
    if args.split == "all":
        examples = dataset
    else:
        if provenance.get("sha256") != file_sha256(data_file):
            raise ValueError(
                f"{data_file} is not the file this bundle was built on (sha256 differs from the manifest's), so "
                f"its {args.split} split would not be the same samples; pass --data with that file, or --split all"
            )
        splits = split_dataset(
            dataset,
            tuple(provenance.get("split_fractions", (0.7, 0.15, 0.15))),
            int(provenance.get("split_seed", 0)),
        )
        examples = splits.by_name(args.split)
    bundle = load_bundle(bundle_dir)
    cache = compute_exit_cache(bundle.model, bundle.tokenizer, examples, bundle.max_length)
    result = evaluate_policies(cache, bundle.policies)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{bundle.name} v{bundle.version} on {args.split} ({cache.num_samples} samples), "
            f"final layer {result['final_layer_accuracy'] * 100:.2f}%, oracle {result['oracle_layer_speedup']:.2f}x"
        )
        for name, entry in result["policies"].items():
            paired = entry["paired_vs_full"]
            print(
                f"  {name:9s} acc {entry['accuracy'] * 100:6.2f}%  mean exit {entry['mean_exit_layer']:.3f}  "
                f"speed-up {entry['layer_speedup']:.2f}x  vs full {paired['accuracy_difference'] * 100:+.2f} "
                f"[{paired['ci_low'] * 100:+.2f}, {paired['ci_high'] * 100:+.2f}] p={paired['mcnemar_p_value']:.3f}"
            )
    return 0


def _prepare_data(args: argparse.Namespace) -> int:
    kept, dropped = write_processed(Path(args.sdist), Path(args.output))
    print(f"wrote {kept} snippets to {args.output} (dropped {dropped} scored exactly 0)")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="beem", description="BEEM early-exit models: build and evaluate bundles")
    commands = root.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="train, calibrate and export a bundle into the model store")
    build.add_argument("--preset", default="default", choices=sorted(PRESETS))
    build.add_argument("--store", default=str(DEFAULT_STORE), help="model store directory (default: %(default)s)")
    build.add_argument("--run-dir", help="checkpoints and caches; re-running resumes (default: runs/<preset>)")
    build.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    build.add_argument("--seed", type=int, help="override the preset's training seed")
    build.add_argument("--threads", type=int, help="torch CPU threads")
    build.add_argument("--backbone", help="override the backbone: minilm-l6, mpnet-base or a local model directory")
    build.add_argument("--data", help="override the data: one labelled .jsonl or GLUE .tsv file, split 70/15/15")
    build.add_argument("--name", help="override the bundle name")
    build.add_argument("--max-length", type=int, help="override the maximum tokens per input")
    build.add_argument("--max-steps-per-epoch", type=int, help="cap each epoch (quick trials)")
    build.set_defaults(handler=_build)

    evaluate = commands.add_parser("evaluate", help="run a bundle's calibrated policies on a data split")
    evaluate.add_argument("--bundle", required=True, help="bundle directory (a version, or a model for its latest)")
    evaluate.add_argument("--split", default="test", choices=[*SPLIT_NAMES, "all"])
    evaluate.add_argument("--data", help="data file (.jsonl or GLUE .tsv); default: the bundled Rotten Tomatoes set")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=_evaluate)

    prepare = commands.add_parser("prepare-data", help="regenerate data/rotten_tomatoes from the vaderSentiment sdist")
    prepare.add_argument("--sdist", required=True, help="vaderSentiment-3.3.2.tar.gz")
    prepare.add_argument("--output", default=str(REPO_DATA_FILE))
    prepare.set_defaults(handler=_prepare_data)
    return root


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser(), argv)


def run(command_parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse and dispatch; expected failures print one line and exit 2, never a traceback."""
    args = command_parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except (BundleError, DataFormatError, BackboneNotFoundError, ValueError) as error:
        print(f"beem: error: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
