"""The caption builder (`beem build --task caption`): data -> encoder grids -> two-stage training -> token exit
caches -> calibration -> decoding evaluation -> caption bundle.

The encoder is frozen, so each image is encoded once and training runs on the cached grids. Weights are rounded
to the storage dtype before the grids and the caches are computed: calibration and the reported numbers are those
of the weights the bundle serves.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from beem.bundle.manifest import CALIBRATION_CACHE_FILE, REPORT_FILE, REPORT_PLOT_FILE
from beem.bundle.report import write_report
from beem.calibration.exit_cache import ExitCache
from beem.calibration.policy_calibration import calibrate_policies, calibration_json
from beem.captioning.caption_bundle import export_caption_bundle, round_trip_through_storage
from beem.captioning.caption_data import data_provenance, load_caption_items, split_images
from beem.captioning.caption_evaluation import encoder_milliseconds, evaluate_captions
from beem.captioning.caption_presets import CaptionPreset
from beem.captioning.caption_trainer import train_captioner
from beem.captioning.caption_vocabulary import CaptionVocabulary
from beem.captioning.captioner import IMAGE_SIZE, MultiExitCaptioner, encode_image_files
from beem.captioning.coco_captions import CaptionedImage
from beem.captioning.image_encoders import FEATURE_CHANNELS, ORIGINS, pretrained_encoder
from beem.captioning.multi_exit_decoder import DecoderSpec, MultiExitDecoder
from beem.captioning.token_exit_cache import token_exit_cache

log = logging.getLogger(__name__)
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def caption_rows(
    items: list[CaptionedImage], vocabulary: CaptionVocabulary, max_length: int
) -> tuple[list[list[int]], list[int]]:
    """Every caption of every image as token ids (<start> and at most `max_length` more: the decoder's positions),
    with the index (into `items`) of its image."""
    rows, images = [], []
    for index, item in enumerate(items):
        for caption in item.captions:
            rows.append(vocabulary.encode(caption)[: max_length + 1])
            images.append(index)
    return rows, images


def split_token_cache(decoder: MultiExitDecoder, features: torch.Tensor, items: list[CaptionedImage],
                      vocabulary: CaptionVocabulary) -> ExitCache:  # fmt: skip
    rows, images = caption_rows(items, vocabulary, decoder.spec.max_length)
    return token_exit_cache(decoder, features, rows, vocabulary.pad_id, images)


def caption_report_lines(test_result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## Test split: greedy decoding with per-token early exit ({test_result['num_images']} images)",
        "",
        "| policy | BLEU-4 | CIDEr-D | mean exit layer | decoder-layer speed-up | tokens/caption "
        "| decoder ms/caption |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in test_result["policies"].items():
        lines.append(
            f"| {name} | {entry['bleu4']:.2f} | {entry['cider']:.3f} | {entry['mean_exit_layer']:.2f} | "
            f"{entry['layer_speedup']:.2f}x | {entry['tokens_per_caption']:.1f} | "
            f"{entry['decoder_ms_per_caption']:.1f} |"
        )
    if test_result.get("encoder_ms_per_image") is not None:
        lines += ["", f"The encoder adds {test_result['encoder_ms_per_image']:.1f} ms per image for every policy."]
    return [*lines, ""]


def build_captioner_bundle(preset: CaptionPreset, store_dir: Path, run_dir: Path) -> Path:
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "preset.json").write_text(json.dumps(asdict(preset), indent=2))
    items = load_caption_items(preset.data, run_dir)
    splits = split_images(len(items), preset.data.split_fractions, preset.data.split_seed)
    subsets = {name: [items[i] for i in indices] for name, indices in splits.items()}
    vocabulary = CaptionVocabulary.from_captions(caption for item in subsets["train"] for caption in item.captions)
    storage_dtype = STORAGE_DTYPES[preset.storage_dtype]

    encoder = pretrained_encoder(preset.encoder)
    shape = preset.decoder
    spec = DecoderSpec(vocab_size=vocabulary.size, num_layers=shape.num_layers, hidden_size=shape.hidden_size,
                       num_heads=shape.num_heads, ffn_size=shape.ffn_size, max_length=shape.max_length,
                       image_feature_size=FEATURE_CHANNELS[preset.encoder], dropout=shape.dropout,
                       suppressed_tokens=(vocabulary.pad_id, vocabulary.start_id))  # fmt: skip
    torch.manual_seed(preset.decoder_seed)
    captioner = MultiExitCaptioner(encoder, MultiExitDecoder(spec))
    round_trip_through_storage(captioner, storage_dtype)  # the frozen encoder as served, before its grids are cached
    log.info("encoding %d images with %s", len(items), preset.encoder)
    features = {name: encode_image_files(captioner, [item.path for item in subset]) for name, subset in subsets.items()}

    rows, images = caption_rows(subsets["train"], vocabulary, spec.max_length)
    losses = train_captioner(captioner.decoder, features["train"], rows, vocabulary.pad_id, preset.training, images)
    round_trip_through_storage(captioner, storage_dtype)
    captioner.eval()
    calibration_cache = split_token_cache(
        captioner.decoder, features["calibration"], subsets["calibration"], vocabulary
    )
    test_cache = split_token_cache(captioner.decoder, features["test"], subsets["test"], vocabulary)
    options = preset.calibration
    calibrated = calibrate_policies(calibration_cache, options)
    calibration = calibration_json(calibration_cache, options, calibrated)
    policies = {name: entry.policy for name, entry in calibrated.items()}
    log.info("decoding %d test images with %d policies", len(subsets["test"]), len(policies))
    sample_image = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    test_result = evaluate_captions(
        captioner.decoder, vocabulary, features["test"], [item.captions for item in subsets["test"]], test_cache,
        policies, spec.max_length, encoder_milliseconds(captioner.image_features, sample_image),
    )  # fmt: skip
    manifest_fields = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backbone": {
            "name": preset.encoder,
            "origin": ORIGINS[preset.encoder],
            "model_type": f"{preset.encoder} + {spec.num_layers}-layer multi-exit decoder",
        },
        "encoder": {
            "name": preset.encoder,
            "image_size": IMAGE_SIZE,
            "feature_channels": spec.image_feature_size,
            "normalisation": "RGB scaled to [-1, 1] (mean = std = 0.5)",
            "frozen": True,
        },
        "decoder": spec.to_json(),
        "num_layers": spec.num_layers,
        "max_length": spec.max_length,
        "vocabulary_size": vocabulary.size,
        "weights": {"dtype": preset.storage_dtype},
        "default_policy": "beem-a",
        "policies": {
            name: {
                "params": calibration["policies"][name]["params"],  # type: ignore[index]
                "calibration": {
                    key: calibration["policies"][name][key]  # type: ignore[index]
                    for key in ("accuracy", "mean_exit_layer", "layer_speedup")
                },
                "test": {
                    key: test_result["policies"][name][key]
                    for key in ("accuracy", "mean_exit_layer", "layer_speedup", "bleu4", "cider")
                },
            }
            for name in calibrated
        },
        "calibration": asdict(options),
        "training": {"preset": preset.name, **preset.training.to_json(), **losses},
        "data": data_provenance(preset.data, items, splits),
        "build_seconds": round(time.perf_counter() - started, 1),
    }

    def write_extras(directory: Path) -> None:
        calibration_cache.save(directory / CALIBRATION_CACHE_FILE)
        (directory / "test_evaluation.json").write_text(json.dumps(test_result, indent=1))
        title = f"{preset.bundle_name} ({preset.encoder} + multi-exit decoder, preset {preset.name})"
        # The token-level report (teacher-forced accuracy against exit layer), then the decoding results.
        write_report(directory, title, calibration, None, REPORT_FILE, REPORT_PLOT_FILE)
        report = directory / REPORT_FILE
        report.write_text(report.read_text() + "\n".join(caption_report_lines(test_result)))

    bundle_dir = export_caption_bundle(store_dir, preset.bundle_name, captioner, vocabulary, storage_dtype,
                                       calibration, manifest_fields, write_extras)  # fmt: skip
    log.info("caption bundle written to %s in %.0f s", bundle_dir, time.perf_counter() - started)
    return bundle_dir
