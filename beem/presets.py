"""Named build recipes: which backbone, which exit heads, how to train, which calibration rule."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from beem.calibration.policy_calibration import CalibrationOptions
from beem.data.fine_grained import FINE_DATA_FILE, FINE_LABEL_NAMES
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import DEFAULT_FRACTIONS, DEFAULT_SPLIT_SEED
from beem.training.trainer import TrainingConfig


@dataclass(frozen=True)
class BuildPreset:
    name: str
    backbone: str  # a name from beem.model.pretrained_backbones or a local directory
    bundle_name: str
    pooling: str = "mean"
    shared_pooler: bool = False
    head_design: str = "pooler"  # beem.model.exit_heads.HEAD_DESIGNS
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data_file: str = str(REPO_DATA_FILE)
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    split_seed: int = DEFAULT_SPLIT_SEED
    # Re-split train / calibration so calibration is this share of the non-test rows; test is untouched
    # (beem.data.splits.reshare_calibration). None: the split as the fractions or the data file give it.
    calibration_share: float | None = None
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    # The bundle's weights are stored in this dtype; calibration runs on the weights as stored.
    storage_dtype: str = "float16"
    label_names: tuple[str, ...] | None = None  # the labels' order (default: the data's labels, sorted)
    default_policy: str = "beem-a"  # the manifest's default: a policy name, or "best" (`builder.default_policy_name`)


PRESETS: dict[str, BuildPreset] = {
    "default": BuildPreset(
        name="default",
        backbone="minilm-l6",
        bundle_name="minilm-rt-sentiment",
        training=TrainingConfig(epochs=3, distillation_weight=1.0),
    ),
    # The paper's head (CLS token, one shared pooler) and loss (no distillation): the baseline to compare against.
    "paper": BuildPreset(
        name="paper",
        backbone="minilm-l6",
        bundle_name="minilm-rt-sentiment-paper-heads",
        pooling="cls",
        shared_pooler=True,
        training=TrainingConfig(epochs=3, distillation_weight=0.0),
    ),
    # Not for serving: the same backbone fine-tuned on its final exit alone, the reference that shows whether
    # training every exit jointly weakened the final layer.
    "single-exit": BuildPreset(
        name="single-exit",
        backbone="minilm-l6",
        bundle_name="minilm-rt-sentiment-single-exit",
        training=TrainingConfig(epochs=3, distillation_weight=0.0, exit_weighting="final-only"),
    ),
    # Five-class sentiment on the same snippets (beem/data/fine_grained.py): the multi-class bundle.
    "fine": BuildPreset(
        name="fine",
        backbone="minilm-l6",
        bundle_name="minilm-rt-fine-sentiment",
        training=TrainingConfig(epochs=3, distillation_weight=1.0),
        data_file=str(FINE_DATA_FILE),
        label_names=FINE_LABEL_NAMES,
    ),
    # The five-class reference: the final exit alone (is the multi-exit bundle's full depth as good as it gets?).
    "fine-single-exit": BuildPreset(
        name="fine-single-exit",
        backbone="minilm-l6",
        bundle_name="minilm-rt-fine-sentiment-single-exit",
        training=TrainingConfig(epochs=3, distillation_weight=0.0, exit_weighting="final-only"),
        data_file=str(FINE_DATA_FILE),
        label_names=FINE_LABEL_NAMES,
    ),
    "large": BuildPreset(
        name="large",
        backbone="mpnet-base",
        bundle_name="mpnet-rt-sentiment",
        training=TrainingConfig(epochs=3, batch_size=16, learning_rate=3e-5, distillation_weight=1.0),
    ),
}


def get_preset(name: str) -> BuildPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def with_training(preset: BuildPreset, **changes: object) -> BuildPreset:
    return replace(preset, training=replace(preset.training, **changes))  # type: ignore[arg-type]


def with_calibration(preset: BuildPreset, **changes: object) -> BuildPreset:
    """Raises ValueError for an unknown rule or risk, or epsilon / delta outside (0, 1)."""
    return replace(preset, calibration=replace(preset.calibration, **changes))  # type: ignore[arg-type]
