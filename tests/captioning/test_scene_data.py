"""The generated captioning data (real Fashion-MNIST pictures in composed scenes) and the COCO-format loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beem.captioning.coco_captions import read_coco_captions
from beem.captioning.scene_generator import (
    CANVAS,
    FASHION_MNIST_DIR,
    SceneItem,
    caption_for,
    generate_coco_scenes,
    read_idx,
)
from beem.data.examples import DataFormatError


def _pictures(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in pictures for the generator's logic; the real set is checked separately below when installed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), np.arange(40, dtype=np.uint8) % 10


@pytest.mark.parametrize(
    ("items", "caption"),
    [
        ([SceneItem(3, "red", "small", 0)], "a small red dress at the top left"),
        ([SceneItem(8, "blue", "large", 3), SceneItem(0, "white", "small", 1)],
         "a small white t-shirt at the top right and a large blue bag at the bottom right"),
        ([SceneItem(9, "green", "small", 2), SceneItem(7, "red", "large", 0), SceneItem(1, "yellow", "small", 1)],
         "a large red sneaker at the top left, a small yellow trouser at the top right and a small green ankle boot "
         "at the bottom left"),
    ],
)  # fmt: skip
def test_captions_name_every_item_in_reading_order(items: list[SceneItem], caption: str) -> None:
    assert caption_for(items) == caption


def test_generation_is_deterministic_and_loads_as_coco(tmp_path: Path) -> None:
    images, labels = _pictures()
    first = generate_coco_scenes(tmp_path / "a", 12, seed=5, images=images, labels=labels)
    second = generate_coco_scenes(tmp_path / "b", 12, seed=5, images=images, labels=labels)
    assert first.read_text() == second.read_text()
    assert (tmp_path / "a/images/000007.png").read_bytes() == (tmp_path / "b/images/000007.png").read_bytes()
    loaded = read_coco_captions(first, tmp_path / "a" / "images")
    assert [item.image_id for item in loaded] == list(range(12))
    assert Image.open(loaded[0].path).size == (CANVAS, CANVAS)
    item_counts = {item.captions[0].count(" at the ") for item in loaded}
    assert len(item_counts) > 1 and item_counts <= {1, 2, 3, 4}, "scenes hold 1-4 items, not all the same number"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "invalid JSON"),
        ('{"annotations": []}', "expected an object"),
        ('{"images": [{"id": 1}], "annotations": []}', "needs 'id' and 'file_name'"),
        ('{"images": [{"id": 1, "file_name": "nope.png"}], "annotations": [{"image_id": 1, "caption": "x"}]}',
         "missing"),
        ('{"images": [], "annotations": [{"image_id": 1}]}', "no string 'caption'"),
    ],
)  # fmt: skip
def test_malformed_coco_files_are_refused_with_the_reason(tmp_path: Path, content: str, problem: str) -> None:
    annotations = tmp_path / "captions.json"
    annotations.write_text(content)
    with pytest.raises(DataFormatError, match=problem):
        read_coco_captions(annotations, tmp_path)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_the_real_fashion_mnist_files_read() -> None:
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert set(np.unique(labels).tolist()) == set(range(10))
    assert images.dtype == np.uint8 and 0 < images.mean() < 255
