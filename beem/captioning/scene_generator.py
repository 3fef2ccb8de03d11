"""A deterministic captioning data set built from real images: scenes of 1-4 Fashion-MNIST items.

No captioning data set can be fetched here, so scenes are composed from the real 28x28 Fashion-MNIST photographs
(Debian `dataset-fashion-mnist`, MIT): each item gets a grid cell (which fixes its position words), a size and a
tint, and the caption names every item with its attributes in reading order. Captions therefore vary in length
(1-4 clauses) and difficulty (small items, similar classes). The output is in COCO caption format (an annotations
JSON plus an image folder), so the same loader reads it and real COCO data.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
TINTS = {"red": (230, 60, 50), "green": (60, 190, 80), "blue": (60, 100, 230), "yellow": (235, 210, 50),
         "white": (240, 240, 240)}  # fmt: skip
CELLS = ("top left", "top right", "bottom left", "bottom right")  # reading order
SIZES = {"small": 30, "large": 52}
CANVAS = 112  # pixels; a 2 x 2 grid of 56-pixel cells


@dataclass(frozen=True)
class SceneItem:
    class_index: int
    tint: str
    size: str
    cell: int  # index into CELLS


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a numpy array: (N, 28, 28) uint8 images or (N,) uint8 labels."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dimensions = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dimensions).reshape(shape)


def caption_for(items: list[SceneItem]) -> str:
    """'a small red dress at the top left and a large blue bag at the bottom right' (items in reading order)."""
    clauses = [
        f"a {item.size} {item.tint} {CLASS_NAMES[item.class_index]} at the {CELLS[item.cell]}"
        for item in sorted(items, key=lambda i: i.cell)
    ]
    if len(clauses) == 1:
        return clauses[0]
    return ", ".join(clauses[:-1]) + " and " + clauses[-1]


def render(items: list[SceneItem], pictures: list[np.ndarray]) -> Image.Image:
    """Paste each tinted, resized 28x28 picture centred in its cell of a black canvas."""
    canvas = np.zeros((CANVAS, CANVAS, 3), dtype=np.float32)
    half = CANVAS // 2
    for item, picture in zip(items, pictures, strict=True):
        side = SIZES[item.size]
        resized = np.asarray(Image.fromarray(picture).resize((side, side), Image.Resampling.BILINEAR), np.float32)
        coloured = resized[:, :, None] / 255.0 * np.asarray(TINTS[item.tint], np.float32)[None, None, :]
        top = (item.cell // 2) * half + (half - side) // 2
        left = (item.cell % 2) * half + (half - side) // 2
        canvas[top : top + side, left : left + side] = np.maximum(
            canvas[top : top + side, left : left + side], coloured
        )
    return Image.fromarray(canvas.clip(0, 255).astype(np.uint8))


def random_scene(rng: np.random.Generator) -> list[SceneItem]:
    count = int(rng.integers(1, len(CELLS) + 1))
    cells = sorted(rng.choice(len(CELLS), size=count, replace=False).tolist())
    return [
        SceneItem(int(rng.integers(len(CLASS_NAMES))), str(rng.choice(list(TINTS))), str(rng.choice(list(SIZES))), c)
        for c in cells
    ]


def generate_coco_scenes(output_dir: Path, num_images: int, seed: int, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write `num_images` scenes as PNGs plus `captions.json` in COCO format; returns the annotations path."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == index) for index in range(len(CLASS_NAMES))]
    image_dir = output_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    coco: dict[str, list[dict[str, object]]] = {"images": [], "annotations": []}
    for image_id in range(num_images):
        items = random_scene(rng)
        pictures = [images[int(rng.choice(by_class[item.class_index]))] for item in items]
        file_name = f"{image_id:06d}.png"
        render(items, pictures).save(image_dir / file_name)
        coco["images"].append({"id": image_id, "file_name": file_name, "width": CANVAS, "height": CANVAS})
        coco["annotations"].append({"id": image_id, "image_id": image_id, "caption": caption_for(items)})
    annotations = output_dir / "captions.json"
    annotations.write_text(json.dumps(coco))
    return annotations
