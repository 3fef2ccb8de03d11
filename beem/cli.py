"""The `beem` command: build bundles, evaluate them, regenerate the processed data."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields, replace
from pathlib import Path

import torch

from beem.builder import build, file_sha256
from beem.bundle.bundle_reader import load_bundle
from beem.bundle.manifest import BundleError, Manifest, read_manifest, resolve_bundle_dir
from beem.calibration.exit_cache import compute_exit_cache
from beem.calibration.learn_then_test import RISKS
from beem.calibration.policy_calibration import CalibrationOptions
from beem.calibration.threshold_search import SELECTION_RULES
from beem.captioning.caption_builder import build_captioner_bundle, split_token_cache
from beem.captioning.caption_bundle import load_caption_bundle
from beem.captioning.caption_data import load_caption_items, source_from_provenance, split_images
from beem.captioning.caption_evaluation import encoder_milliseconds, evaluate_captions
from beem.captioning.caption_presets import CAPTION_PRESETS, get_caption_preset
from beem.captioning.captioner import IMAGE_SIZE, encode_image_files
from beem.captioning.image_encoders import ENCODER_NAMES, EncoderUnavailableError
from beem.data.examples import DataFormatError, read_dataset
from beem.data.fine_grained import FINE_DATA_FILE, write_fine_grained
from beem.data.rotten_tomatoes import REPO_DATA_FILE, write_processed
from beem.data.splits import SPLIT_NAMES, split_dataset
from beem.evaluation import evaluate_policies
from beem.model.exit_heads import HEAD_DESIGNS
from beem.model.pretrained_backbones import BackboneNotFoundError
from beem.presets import PRESETS, get_preset, with_calibration, with_training
from beem.recalibration import recalibrate

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORE = REPO_ROOT / "model_store"


# `beem build` flags (argparse names) that override a preset's field of the same or the given name.
TRAINING_FLAGS = {name: name for name in ("epochs", "seed", "max_steps_per_epoch", "max_length", "distillation_weight",
                                          "distillation_temperature", "head_learning_rate_scale")}  # fmt: skip
PRESET_FLAGS = {"backbone": "backbone", "data": "data_file", "name": "bundle_name", "default_policy": "default_policy",
                "head_design": "head_design", "calibration_share": "calibration_share"}  # fmt: skip
CALIBRATION_FLAGS = {name: name for name in ("selection_rule", "epsilon", "delta", "risk", "vote_above_chance")}


def _given(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, object]:
    """The flags the command line set, by the preset field each overrides."""
    return {field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag) is not None}


def _build(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.task == "caption":
        return _build_captioner(args)
    preset = get_preset(args.preset)
    training_overrides = _given(args, TRAINING_FLAGS)
    if training_overrides:
        preset = with_training(preset, **training_overrides)
    calibration_overrides = _given(args, CALIBRATION_FLAGS)
    if calibration_overrides:
        preset = with_calibration(preset, **calibration_overrides)  # checked here, before any training
    preset_overrides = _given(args, PRESET_FLAGS)
    if args.data:
        preset_overrides["label_names"] = None  # another file's labels, in their sorted order
    if preset_overrides:
        preset = replace(preset, **preset_overrides)  # type: ignore[arg-type]
    run_dir = Path(args.run_dir) if args.run_dir else REPO_ROOT / "runs" / preset.name
    bundle_dir = build(preset, Path(args.store), run_dir)
    print(bundle_dir)
    return 0


def _build_captioner(args: argparse.Namespace) -> int:
    preset = get_caption_preset(args.preset)
    data = preset.data
    if args.scenes is not None:
        data = replace(data, num_scenes=args.scenes)
    if args.fashion_mnist_dir:
        data = replace(data, fashion_mnist_dir=args.fashion_mnist_dir)
    if args.coco_annotations or args.coco_images:
        data = replace(data, coco_annotations=args.coco_annotations, coco_images=args.coco_images)
    training = preset.training
    if args.epochs is not None:
        training = replace(training, backbone_epochs=args.epochs)
    if args.exit_epochs is not None:
        training = replace(training, exit_epochs=args.exit_epochs)
    if args.seed is not None:
        training = replace(training, seed=args.seed)
    preset = replace(preset, data=data, training=training)
    if args.encoder:
        preset = replace(preset, encoder=args.encoder)
    if args.name:
        preset = replace(preset, bundle_name=args.name)
    run_dir = Path(args.run_dir) if args.run_dir else REPO_ROOT / "runs" / f"caption-{preset.name}"
    print(build_captioner_bundle(preset, Path(args.store), run_dir))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    bundle_dir = resolve_bundle_dir(Path(args.bundle))
    manifest = read_manifest(bundle_dir)
    if manifest.task == "caption":
        return _evaluate_captioner(args, bundle_dir, manifest)
    provenance = manifest.data
    built_on = REPO_ROOT / provenance["repo_path"] if "repo_path" in provenance else REPO_DATA_FILE
    data_file = Path(args.data) if args.data else built_on
    dataset = read_dataset(data_file, list(manifest.labels))
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
            provenance.get("calibration_share"),
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


def _evaluate_captioner(args: argparse.Namespace, bundle_dir: Path, manifest: Manifest) -> int:
    if args.split == "all":
        raise ValueError("caption bundles are evaluated on one split: train, calibration or test")
    provenance = dict(manifest.data)
    source = source_from_provenance(provenance, args.coco_annotations, args.coco_images, args.fashion_mnist_dir)
    items = load_caption_items(source, Path(args.work_dir))
    indices = split_images(len(items), source.split_fractions, source.split_seed)[args.split]
    subset = [items[i] for i in indices][: args.limit]
    bundle = load_caption_bundle(bundle_dir)
    features = encode_image_files(bundle.captioner, [item.path for item in subset])
    cache = split_token_cache(bundle.captioner.decoder, features, subset, bundle.vocabulary)
    result = evaluate_captions(
        bundle.captioner.decoder, bundle.vocabulary, features, [item.captions for item in subset], cache,
        bundle.policies, bundle.max_length,
        encoder_milliseconds(bundle.captioner.image_features, torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)),
    )  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{bundle.name} v{bundle.version} on {args.split} ({len(subset)} images, {cache.num_samples} reference "
          f"tokens); the encoder takes {result['encoder_ms_per_image']:.1f} ms per image for every policy")  # fmt: skip
    for name, entry in result["policies"].items():
        print(
            f"  {name:9s} BLEU-4 {entry['bleu4']:6.2f}  CIDEr-D {entry['cider']:.3f}  mean exit "
            f"{entry['mean_exit_layer']:.2f}  speed-up {entry['layer_speedup']:.2f}x  "
            f"decoder {entry['decoder_ms_per_caption']:6.1f} ms/caption  token acc {entry['accuracy'] * 100:.2f}%"
        )
    return 0


def _prepare_data(args: argparse.Namespace) -> int:
    kept, dropped = write_processed(Path(args.sdist), Path(args.output))
    print(f"wrote {kept} snippets to {args.output} (dropped {dropped} scored exactly 0)")
    fine = write_fine_grained(Path(args.sdist), Path(args.fine_output))
    print(f"wrote {fine} snippets in five classes to {args.fine_output}")
    return 0


def _recalibrate(args: argparse.Namespace) -> int:
    """Options: the bundle's own calibration options, the flags over them; the rule is Learn then Test unless a
    flag says otherwise."""
    manifest = read_manifest(resolve_bundle_dir(Path(args.bundle)))
    known = {f.name for f in fields(CalibrationOptions)}
    options = CalibrationOptions(**{k: v for k, v in manifest.calibration.items() if k in known})
    options = replace(options, selection_rule="ltt", **_given(args, CALIBRATION_FLAGS))  # type: ignore[arg-type]
    texts = Path(args.texts) if args.texts else None
    data = Path(args.data) if args.data else None
    print(recalibrate(Path(args.bundle), options, texts, args.default_policy, data))
    return 0


def _add_calibration_flags(build: argparse.ArgumentParser) -> None:
    """`beem build`'s CALIBRATION_FLAGS: the selection rule and the Learn-then-Test promise."""
    calibration = build.add_argument_group("calibration (beem/calibration/threshold_search.py)")
    calibration.add_argument("--selection-rule", choices=SELECTION_RULES, help="how thresholds are chosen "
                             "(default: the preset's); ltt certifies a risk (Learn then Test)")  # fmt: skip
    calibration.add_argument("--epsilon", type=float, help="ltt: the risk certified at most (default 0.01)")
    calibration.add_argument("--delta", type=float, help="ltt: the chance the certificate fails (default 0.05)")
    calibration.add_argument("--risk", choices=RISKS, help="ltt: disagreement with full depth (no labels needed; "
                             "default) or excess-error (wrong where full depth is right)")  # fmt: skip
    calibration.add_argument("--vote-above-chance", action="store_true", default=None, help="BEEM's exits vote "
                             "their confidence above chance, (C - 1/K) / (1 - 1/K)")  # fmt: skip


def _add_recalibrate_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    recalibrate = commands.add_parser(
        "recalibrate", help="new thresholds for a bundle's weights, written as its model's next version"
    )
    recalibrate.add_argument("--bundle", required=True, help="bundle directory (a version, or a model for its latest)")
    recalibrate.add_argument("--texts", help="in-domain texts without labels (one per line, or .jsonl with a "
                             "'text' field), e.g. a sample of real requests: every threshold is certified on "
                             "disagreement; default: the bundle's own calibration split, labels and all")  # fmt: skip
    recalibrate.add_argument("--data", help="without --texts: the data file the bundle was built from, when its "
                             "manifest's path does not find it (checked against its sha256)")  # fmt: skip
    recalibrate.add_argument("--default-policy", help="a policy name or 'best' (default: the bundle's)")
    _add_calibration_flags(recalibrate)
    recalibrate.set_defaults(handler=_recalibrate)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="beem", description="BEEM early-exit models: build and evaluate bundles")
    commands = root.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="train, calibrate and export a bundle into the model store")
    build.add_argument("--task", default="classification", choices=["classification", "caption"])
    build.add_argument("--preset", default="default", help=f"classification: {', '.join(PRESETS)}; "
                       f"caption: {', '.join(CAPTION_PRESETS)}")  # fmt: skip
    build.add_argument("--store", default=str(DEFAULT_STORE), help="model store directory (default: %(default)s)")
    build.add_argument("--run-dir", help="checkpoints and caches; re-running resumes (default: runs/<preset>)")
    build.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    build.add_argument("--seed", type=int, help="override the preset's training seed")
    build.add_argument("--threads", type=int, help="torch CPU threads")
    build.add_argument("--backbone", help="override the backbone: minilm-l6, mpnet-base or a local model directory")
    build.add_argument("--data", help="override the data: one labelled .jsonl or GLUE .tsv file, split 70/15/15")
    build.add_argument("--name", help="override the bundle name")
    build.add_argument("--default-policy", help="the bundle's default policy: a policy name, or 'best' (the "
                       "fastest within the accuracy budget on the calibration split); default beem-a")  # fmt: skip
    build.add_argument("--max-length", type=int, help="override the maximum tokens per input")
    build.add_argument("--max-steps-per-epoch", type=int, help="cap each epoch (quick trials)")
    levers = build.add_argument_group("exit-quality levers (bench/training_levers.py)")
    levers.add_argument("--head-design", choices=HEAD_DESIGNS, help="exit heads: a pooler MLP (default) or linear")
    levers.add_argument("--distillation-weight", type=float, help="weight of the final exit's soft labels")
    levers.add_argument("--distillation-temperature", type=float, help="softmax temperature of distillation")
    levers.add_argument("--head-learning-rate-scale", type=float, help="the exit heads' learning rate over the "
                        "backbone's (default 1)")  # fmt: skip
    levers.add_argument("--calibration-share", type=float, help="re-split train / calibration so calibration holds "
                        "this share of the non-test rows; test is untouched")  # fmt: skip
    _add_calibration_flags(build)
    captions = build.add_argument_group("caption builds (--task caption)")
    captions.add_argument("--scenes", type=int, help="number of generated Fashion-MNIST scenes")
    captions.add_argument("--fashion-mnist-dir", help="where Fashion-MNIST is (default: Debian's location)")
    captions.add_argument("--coco-annotations", help="COCO-format captions JSON, instead of generated scenes")
    captions.add_argument("--coco-images", help="the folder holding the COCO-format data's images")
    captions.add_argument("--encoder", choices=ENCODER_NAMES, help="image encoder (default: the preset's)")
    captions.add_argument("--exit-epochs", type=int, help="epochs of the second stage (exit heads)")
    build.set_defaults(handler=_build)

    evaluate = commands.add_parser("evaluate", help="run a bundle's calibrated policies on a data split")
    evaluate.add_argument("--bundle", required=True, help="bundle directory (a version, or a model for its latest)")
    evaluate.add_argument("--split", default="test", choices=[*SPLIT_NAMES, "all"])
    evaluate.add_argument("--data", help="data file (.jsonl or GLUE .tsv); default: the bundled Rotten Tomatoes set")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    caption_data = evaluate.add_argument_group("caption bundles")
    caption_data.add_argument("--coco-annotations", help="the COCO-format captions a bundle was built on")
    caption_data.add_argument("--coco-images", help="their image folder")
    caption_data.add_argument("--fashion-mnist-dir", help="where Fashion-MNIST is (default: Debian's location)")
    caption_data.add_argument("--work-dir", default=str(REPO_ROOT / "runs" / "caption-evaluation"),
                              help="where generated scenes are written (default: %(default)s)")  # fmt: skip
    caption_data.add_argument("--limit", type=int, help="evaluate only the split's first N images")
    evaluate.set_defaults(handler=_evaluate)

    _add_recalibrate_command(commands)

    prepare = commands.add_parser(
        "prepare-data", help="regenerate data/rotten_tomatoes and data/rotten_tomatoes_fine from vaderSentiment's sdist"
    )
    prepare.add_argument("--sdist", required=True, help="vaderSentiment-3.3.2.tar.gz")
    prepare.add_argument("--output", default=str(REPO_DATA_FILE))
    prepare.add_argument("--fine-output", default=str(FINE_DATA_FILE), help="the five-class file")
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
    except (BundleError, DataFormatError, BackboneNotFoundError, EncoderUnavailableError, ValueError) as error:
        print(f"beem: error: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
