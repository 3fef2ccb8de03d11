"""Shared fixtures: a tiny generated backbone and a tiny bundle built through the real builder. Nothing downloads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from beem.captioning.caption_data import CaptionDataSource
from beem.captioning.caption_presets import CaptionPreset, DecoderShape
from beem.captioning.caption_trainer import CaptionTrainingConfig
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.presets import BuildPreset
from beem.training.trainer import TrainingConfig

TINY_EXAMPLES = 240


def make_tiny_backbone(directory: Path, num_layers: int = 3, seed: int = 0) -> Path:
    """A seeded random 3-layer BERT with the real MiniLM (uncased WordPiece) tokenizer, saved like a hub model."""
    from beem.model.pretrained_backbones import resolve_backbone

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(str(resolve_backbone("minilm-l6"))).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_backbone(tmp_path_factory.mktemp("tiny_backbone"))


@pytest.fixture(scope="session")
def tiny_data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TINY_EXAMPLES real Rotten Tomatoes snippets spread over the file (it is sorted: positives first)."""
    path = tmp_path_factory.mktemp("tiny_data") / "snippets.jsonl"
    all_lines = REPO_DATA_FILE.read_text().splitlines(keepends=True)
    lines = all_lines[:: len(all_lines) // TINY_EXAMPLES][:TINY_EXAMPLES]
    path.write_text("".join(lines))
    assert all(json.loads(line)["label"] in ("negative", "positive") for line in lines)
    return path


def tiny_preset(backbone_dir: Path, data_file: Path) -> BuildPreset:
    return BuildPreset(
        name="tiny",
        backbone=str(backbone_dir),
        bundle_name="tiny-sentiment",
        training=TrainingConfig(
            epochs=2, batch_size=16, learning_rate=1e-3, max_length=32, max_steps_per_epoch=4, distillation_weight=1.0
        ),
        data_file=str(data_file),
    )


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_dir: Path, tiny_data_file: Path) -> Path:
    from beem.builder import build

    root = tmp_path_factory.mktemp("tiny_build")
    return build(tiny_preset(tiny_backbone_dir, tiny_data_file), root / "model_store", root / "run")


@pytest.fixture(scope="session")
def tiny_ltt_bundle_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path, tiny_backbone_dir: Path, tiny_data_file: Path
) -> Path:
    """The tiny bundle's model calibrated by Learn then Test instead. It re-runs the tiny build's run directory
    (tiny_bundle_dir is <root>/model_store/<name>/<version>, its run <root>/run), so training and the exit caches
    are reused and only calibration runs. Epsilon is 25% because 36 calibration samples certify nothing at 1%
    (even no loss gives p = 0.99**36 = 0.70)."""
    from beem.builder import build
    from beem.presets import with_calibration

    preset = with_calibration(tiny_preset(tiny_backbone_dir, tiny_data_file), selection_rule="ltt", epsilon=0.25,
                              delta=0.1)  # fmt: skip
    run_dir = tiny_bundle_dir.parents[2] / "run"
    return build(replace(preset, bundle_name="tiny-ltt-sentiment"), tmp_path_factory.mktemp("ltt_store"), run_dir)


def write_fake_fashion_mnist(directory: Path, count: int = 200, seed: int = 0) -> Path:
    """Fashion-MNIST's file format (gzipped IDX) with seeded random 28x28 pictures, one blob shape per class, so
    caption builds run in tests without the Debian package."""
    import gzip

    import numpy as np

    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 10).astype(np.uint8)
    images = (rng.random((count, 28, 28)) * 80).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, 4 + label : 24, 4 : 24 - label] = 255  # a class-shaped bright block
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in (("train-images-idx3-ubyte.gz", images), ("train-labels-idx1-ubyte.gz", labels)):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        with gzip.open(directory / name, "wb") as handle:
            handle.write(header + array.tobytes())
    return directory


def tiny_caption_preset(fashion_dir: Path, num_scenes: int = 40) -> CaptionPreset:
    return CaptionPreset(
        name="tiny",
        bundle_name="tiny-captioner",
        encoder="tiny-cnn",
        data=CaptionDataSource(num_scenes=num_scenes, fashion_mnist_dir=str(fashion_dir)),
        decoder=DecoderShape(num_layers=3, hidden_size=32, num_heads=2, ffn_size=64, max_length=24, dropout=0.0),
        training=CaptionTrainingConfig(backbone_epochs=8, exit_epochs=2, batch_size=8, learning_rate=3e-3),
    )


@pytest.fixture(scope="session")
def fake_fashion_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fashion_mnist"))


@pytest.fixture(scope="session")
def tiny_caption_bundle_dir(tmp_path_factory: pytest.TempPathFactory, fake_fashion_mnist_dir: Path) -> Path:
    """A 3-layer captioner built by the real caption builder (tiny CNN encoder, 40 generated scenes)."""
    from beem.captioning.caption_builder import build_captioner_bundle

    root = tmp_path_factory.mktemp("tiny_caption_build")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is ~10x faster than two when the other core is busy
    try:
        return build_captioner_bundle(tiny_caption_preset(fake_fashion_mnist_dir), root / "model_store", root / "run")
    finally:
        torch.set_num_threads(threads)


__all__ = ["make_tiny_backbone", "replace", "tiny_caption_preset", "tiny_preset", "write_fake_fashion_mnist"]
