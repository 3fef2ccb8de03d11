"""Load a verified bundle: manifest, model (layer-by-layer), tokenizer and its calibrated policies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from beem.bundle.manifest import TOKENIZER_DIR, WEIGHTS_FILE, BundleError, read_manifest, resolve_bundle_dir
from beem.model.exit_heads import ExitHeadSpec
from beem.model.multi_exit_model import MultiExitModel
from beem.policies.exit_policies import ExitPolicy
from beem.policies.policy_table import PolicyParameterError, build_policy


class ManifestFields:
    """What every loaded bundle (any task) reads from its manifest."""

    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def num_layers(self) -> int:
        return int(self.manifest["num_layers"])

    @property
    def max_length(self) -> int:
        """Classification: tokens per input. Captioning: most tokens per generated caption, <end> included."""
        return int(self.manifest["max_length"])


@dataclass(frozen=True)
class LoadedBundle(ManifestFields):
    directory: Path
    manifest: dict[str, Any]
    model: MultiExitModel
    tokenizer: PreTrainedTokenizerBase
    policies: dict[str, ExitPolicy]  # calibrated, by name

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])


def load_bundle(path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedBundle:
    """Verify and load; raises BundleError naming the file and the problem."""
    bundle_dir = resolve_bundle_dir(path)
    manifest = read_manifest(bundle_dir)
    if manifest["task"] != "classification":
        raise BundleError(bundle_dir / "manifest.json", f"a {manifest['task']} bundle, not a classifier")
    try:
        head_spec = ExitHeadSpec(**manifest["exit_heads"])
        model = MultiExitModel.from_config(manifest["backbone"]["config"], head_spec)
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
    return LoadedBundle(bundle_dir, manifest, model, tokenizer, calibrated_policies(bundle_dir, manifest))


def calibrated_policies(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, ExitPolicy]:
    """The manifest's policies with their calibrated parameters (any task)."""
    num_layers = int(manifest["num_layers"])
    try:
        return {name: build_policy(name, entry["params"], num_layers) for name, entry in manifest["policies"].items()}
    except (PolicyParameterError, KeyError, TypeError) as error:
        raise BundleError(bundle_dir / "manifest.json", f"invalid calibrated policy ({error})") from error
