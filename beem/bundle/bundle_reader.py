"""Load a verified bundle: manifest, model (layer-by-layer), tokenizer and its calibrated policies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from beem.bundle.manifest import (
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    BundleError,
    Manifest,
    read_manifest,
    resolve_bundle_dir,
)
from beem.model.exit_heads import ExitHeadSpec
from beem.model.multi_exit_model import MultiExitModel
from beem.policies.exit_policies import ExitPolicy
from beem.policies.policy_parameters import PolicyParameterError
from beem.policies.policy_table import build_policy


class ManifestFields:
    """What every loaded bundle (any task) reads from its manifest."""

    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def num_layers(self) -> int:
        return self.manifest.num_layers

    @property
    def max_length(self) -> int:
        """Classification: tokens per input. Captioning: most tokens per generated caption, <end> included."""
        return self.manifest.max_length


@dataclass(frozen=True)
class LoadedBundle(ManifestFields):
    directory: Path
    manifest: Manifest
    model: MultiExitModel
    tokenizer: PreTrainedTokenizerBase
    policies: dict[str, ExitPolicy]  # calibrated, by name: built once, at load

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels


def load_bundle(
    path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32, manifest: Manifest | None = None
) -> LoadedBundle:
    """Verify and load; raises BundleError naming the file and the problem. `manifest`: the bundle's, already
    read and verified by the caller (the server reads it once, at start-up)."""
    bundle_dir = resolve_bundle_dir(path)
    manifest = manifest or read_manifest(bundle_dir)
    if manifest.task != "classification":
        raise BundleError(manifest.path, f"a {manifest.task} bundle, not a classifier")
    try:
        head_spec = ExitHeadSpec(**manifest.raw["exit_heads"])
        model = MultiExitModel.from_config(manifest.backbone["config"], head_spec)
    except (TypeError, ValueError, KeyError) as error:
        raise BundleError(bundle_dir / "manifest.json", f"cannot build the model it describes ({error})") from error
    try:
        state = load_file(bundle_dir / WEIGHTS_FILE)
    except (SafetensorError, OSError) as error:
        raise BundleError(bundle_dir / WEIGHTS_FILE, f"unreadable safetensors ({error})") from error
    result = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BundleError(
            bundle_dir / WEIGHTS_FILE,
            f"weights do not match the manifest's model (missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})",
        )
    model.to(device=device, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(bundle_dir / TOKENIZER_DIR), local_files_only=True)
    return LoadedBundle(bundle_dir, manifest, model, tokenizer, calibrated_policies(manifest))


def calibrated_policies(manifest: Manifest) -> dict[str, ExitPolicy]:
    """The manifest's policies with their calibrated parameters (any task)."""
    try:
        return {
            name: build_policy(name, dict(entry.params), manifest.num_layers, len(manifest.labels))
            for name, entry in manifest.policies.items()
        }
    except (PolicyParameterError, KeyError, TypeError) as error:
        raise BundleError(manifest.path, f"invalid calibrated policy ({error})") from error
