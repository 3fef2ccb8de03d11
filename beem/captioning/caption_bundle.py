"""Caption bundles: export and load (the layout in model_store/README.md, task "caption").

Besides the common files (manifest, calibration, report), a caption bundle holds `model.safetensors` with the
image encoder (`encoder.*`, the ImageNet classifier left out) and the multi-exit decoder (`decoder.*`), and
`vocabulary.json`. The manifest names the encoder architecture and states the decoder's `DecoderSpec`, so the
server rebuilds the captioner without any package beyond beem.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from beem.bundle.bundle_reader import ManifestFields, calibrated_policies
from beem.bundle.bundle_writer import write_bundle
from beem.bundle.manifest import (
    CALIBRATION_FILE,
    VOCABULARY_FILE,
    WEIGHTS_FILE,
    BundleError,
    Manifest,
    read_manifest,
    resolve_bundle_dir,
)
from beem.captioning.caption_vocabulary import CaptionVocabulary
from beem.captioning.captioner import MultiExitCaptioner
from beem.captioning.image_encoders import build_encoder, encoder_state_for_bundle
from beem.captioning.multi_exit_decoder import DecoderSpec, MultiExitDecoder
from beem.policies.exit_policies import ExitPolicy


@dataclass(frozen=True)
class LoadedCaptionBundle(ManifestFields):
    directory: Path
    manifest: Manifest
    captioner: MultiExitCaptioner
    vocabulary: CaptionVocabulary
    policies: dict[str, ExitPolicy]  # calibrated, by name


def captioner_state_for_storage(captioner: MultiExitCaptioner, storage_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state = {f"encoder.{key}": value for key, value in encoder_state_for_bundle(captioner.encoder).items()}
    state |= {f"decoder.{key}": value for key, value in captioner.decoder.state_dict().items()}
    # BatchNorm's integer step counters stay integers; every float tensor takes the storage dtype.
    return {
        key: (value.detach().to(storage_dtype) if value.is_floating_point() else value.detach()).contiguous()
        for key, value in state.items()
    }


def round_trip_through_storage(captioner: MultiExitCaptioner, storage_dtype: torch.dtype) -> None:
    """Give the captioner the weights as the bundle will store them, so calibration sees what is served."""
    state = captioner_state_for_storage(captioner, storage_dtype)
    _load_state(captioner, {key: value.float() if value.is_floating_point() else value for key, value in state.items()})


def export_caption_bundle(
    store_dir: Path,
    name: str,
    captioner: MultiExitCaptioner,
    vocabulary: CaptionVocabulary,
    storage_dtype: torch.dtype,
    calibration: dict[str, Any],
    manifest_fields: dict[str, Any],
    write_extras: Callable[[Path], None],
) -> Path:
    def write_files(staging: Path) -> None:
        state = captioner_state_for_storage(captioner, storage_dtype)
        save_file(state, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        vocabulary.save(staging / VOCABULARY_FILE)
        (staging / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=1))
        write_extras(staging)

    return write_bundle(store_dir, name, {"task": "caption", **manifest_fields}, write_files)


def _load_state(captioner: MultiExitCaptioner, state: dict[str, torch.Tensor]) -> list[str]:
    """Load encoder and decoder weights; returns the problems (missing or unexpected keys)."""
    encoder_state = {key[len("encoder.") :]: value for key, value in state.items() if key.startswith("encoder.")}
    decoder_state = {key[len("decoder.") :]: value for key, value in state.items() if key.startswith("decoder.")}
    problems = [key for key in state if not key.startswith(("encoder.", "decoder."))]
    expected_encoder = set(encoder_state_for_bundle(captioner.encoder))
    problems += sorted(expected_encoder ^ set(encoder_state))
    captioner.encoder.load_state_dict(encoder_state, strict=False)
    result = captioner.decoder.load_state_dict(decoder_state, strict=False)
    return problems + list(result.missing_keys) + list(result.unexpected_keys)


def load_caption_bundle(
    path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32, manifest: Manifest | None = None
) -> LoadedCaptionBundle:
    """Verify and load; raises BundleError naming the file and the problem. `manifest`: already read and
    verified by the caller."""
    bundle_dir = resolve_bundle_dir(path)
    manifest = manifest or read_manifest(bundle_dir)
    manifest_path = manifest.path
    if manifest.task != "caption":
        raise BundleError(manifest_path, f"a {manifest.task} bundle, not a captioner")
    try:
        encoder = build_encoder(str(manifest.raw["encoder"]["name"]))
        decoder = MultiExitDecoder(DecoderSpec(**manifest.raw["decoder"]))
    except (TypeError, ValueError, KeyError) as error:
        raise BundleError(manifest_path, f"cannot build the captioner it describes ({error})") from error
    captioner = MultiExitCaptioner(encoder, decoder)
    try:
        state = load_file(bundle_dir / WEIGHTS_FILE)
    except (SafetensorError, OSError) as error:
        raise BundleError(bundle_dir / WEIGHTS_FILE, f"unreadable safetensors ({error})") from error
    problems = _load_state(captioner, {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
    if problems:
        raise BundleError(bundle_dir / WEIGHTS_FILE, f"weights do not match the manifest's captioner ({problems[:3]})")
    captioner.to(device=device, dtype=dtype).eval()
    try:
        vocabulary = CaptionVocabulary.load(bundle_dir / VOCABULARY_FILE)
    except (OSError, ValueError, KeyError) as error:
        raise BundleError(bundle_dir / VOCABULARY_FILE, f"unreadable vocabulary ({error})") from error
    if vocabulary.size != decoder.spec.vocab_size:
        raise BundleError(
            bundle_dir / VOCABULARY_FILE, f"{vocabulary.size} words, the decoder has {decoder.spec.vocab_size}"
        )
    return LoadedCaptionBundle(bundle_dir, manifest, captioner, vocabulary, calibrated_policies(manifest))
