"""Named caption build recipes (`beem build --task caption --preset NAME`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from beem.calibration.policy_calibration import CalibrationOptions
from beem.captioning.caption_data import CaptionDataSource
from beem.captioning.caption_trainer import CaptionTrainingConfig


@dataclass(frozen=True)
class DecoderShape:
    """The decoder's size; the vocabulary and the encoder's channels come from the data and the encoder."""

    num_layers: int = 6
    hidden_size: int = 256
    num_heads: int = 4
    ffn_size: int = 1024
    max_length: int = 40  # most generated tokens per caption, the end token included
    dropout: float = 0.1


@dataclass(frozen=True)
class CaptionPreset:
    name: str
    bundle_name: str
    encoder: str = "efficientnet-lite0"
    data: CaptionDataSource = field(default_factory=CaptionDataSource)
    decoder: DecoderShape = field(default_factory=DecoderShape)
    training: CaptionTrainingConfig = field(default_factory=CaptionTrainingConfig)
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    storage_dtype: str = "float16"
    decoder_seed: int = 0


CAPTION_PRESETS: dict[str, CaptionPreset] = {
    # The frozen pretrained encoder, a 6-layer decoder: backbone 12 epochs, then the exit heads alone 6 epochs.
    "default": CaptionPreset(
        name="default",
        bundle_name="lite0-fashion-scenes-captioner",
        training=CaptionTrainingConfig(backbone_epochs=12, exit_epochs=6),
    ),
}


def get_caption_preset(name: str) -> CaptionPreset:
    if name not in CAPTION_PRESETS:
        raise ValueError(f"unknown caption preset {name!r}; expected one of {', '.join(CAPTION_PRESETS)}")
    return CAPTION_PRESETS[name]
