"""Where a caption build's images and captions come from, how they split, and the record of it in the manifest.

Two sources: generated Fashion-MNIST scenes (deterministic from a seed, written once into the run directory) or a
COCO-format annotations file with its image folder (the path for real captioning data). Images split 70/15/15 by
a seeded permutation of the images, so every caption of an image lands in the same split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from beem.captioning.coco_captions import CaptionedImage, read_coco_captions
from beem.captioning.scene_generator import FASHION_MNIST_DIR, generate_coco_scenes, read_idx
from beem.data.examples import DataFormatError

FASHION_MNIST_IMAGES = "train-images-idx3-ubyte.gz"
FASHION_MNIST_LABELS = "train-labels-idx1-ubyte.gz"
SPLITS = ("train", "calibration", "test")


@dataclass(frozen=True)
class CaptionDataSource:
    num_scenes: int = 2000
    scene_seed: int = 11
    fashion_mnist_dir: str = str(FASHION_MNIST_DIR)
    coco_annotations: str | None = None  # set both to train on COCO-format data instead of generated scenes
    coco_images: str | None = None
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 20240611

    @property
    def uses_coco(self) -> bool:
        return self.coco_annotations is not None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_caption_items(source: CaptionDataSource, work_dir: Path) -> list[CaptionedImage]:
    """The data set's images with their captions; generated scenes are written under `work_dir` on first use."""
    if source.uses_coco:
        if source.coco_images is None:
            raise ValueError("COCO-format data needs both the annotations file and the image folder")
        return read_coco_captions(Path(source.coco_annotations or ""), Path(source.coco_images))
    scenes_dir = work_dir / f"scenes-{source.num_scenes}-seed{source.scene_seed}"
    annotations = scenes_dir / "captions.json"
    if not annotations.is_file():
        fashion = Path(source.fashion_mnist_dir)
        if not (fashion / FASHION_MNIST_IMAGES).is_file():
            raise DataFormatError(
                fashion / FASHION_MNIST_IMAGES, None,
                "Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist (or pass COCO data)",
            )  # fmt: skip
        images, labels = read_idx(fashion / FASHION_MNIST_IMAGES), read_idx(fashion / FASHION_MNIST_LABELS)
        staging = scenes_dir.with_name(scenes_dir.name + ".partial")
        generate_coco_scenes(staging, source.num_scenes, source.scene_seed, images, labels)
        staging.rename(scenes_dir)
    return read_coco_captions(annotations, scenes_dir / "images")


def split_images(count: int, fractions: tuple[float, float, float], seed: int) -> dict[str, list[int]]:
    """Indices of each split, each in ascending order."""
    order = np.random.default_rng(seed).permutation(count)
    train_end = round(fractions[0] * count)
    calibration_end = train_end + round(fractions[1] * count)
    parts = (order[:train_end], order[train_end:calibration_end], order[calibration_end:])
    return {name: sorted(int(i) for i in part) for name, part in zip(SPLITS, parts, strict=True)}


def data_provenance(
    source: CaptionDataSource, items: list[CaptionedImage], splits: dict[str, list[int]]
) -> dict[str, Any]:
    provenance: dict[str, Any] = {
        "split_seed": source.split_seed,
        "split_fractions": list(source.split_fractions),
        "split_sizes": {name: len(indices) for name, indices in splits.items()},
        "num_images": len(items),
        "num_captions": sum(len(item.captions) for item in items),
    }
    if source.uses_coco:
        provenance |= {"kind": "coco", "annotations": Path(source.coco_annotations or "").name,
                       "sha256": _sha256(Path(source.coco_annotations or ""))}  # fmt: skip
    else:
        fashion = Path(source.fashion_mnist_dir)
        provenance |= {
            "kind": "fashion-mnist-scenes",
            "description": "1-4 Fashion-MNIST training pictures (Zalando, MIT) per 112x112 scene, each with a "
            "size, tint and grid cell; captions name them in reading order (beem.captioning.scene_generator)",
            "num_scenes": source.num_scenes,
            "scene_seed": source.scene_seed,
            "fashion_mnist_images_sha256": _sha256(fashion / FASHION_MNIST_IMAGES),
        }
    return provenance


def source_from_provenance(provenance: dict[str, Any], coco_annotations: str | None, coco_images: str | None,
                           fashion_mnist_dir: str | None) -> CaptionDataSource:  # fmt: skip
    """The data source a bundle was built on, to evaluate it on the same split; COCO data must be passed again."""
    common = {"split_fractions": tuple(provenance["split_fractions"]), "split_seed": int(provenance["split_seed"])}
    if provenance.get("kind") == "coco" or coco_annotations is not None:
        if coco_annotations is None or coco_images is None:
            raise ValueError("this bundle was built on COCO-format data: pass --coco-annotations and --coco-images")
        if provenance.get("kind") == "coco" and provenance.get("sha256") != _sha256(Path(coco_annotations)):
            raise ValueError(f"{coco_annotations} is not the annotations file this bundle was built on (sha256)")
        return CaptionDataSource(coco_annotations=coco_annotations, coco_images=coco_images, **common)  # type: ignore[arg-type]
    return CaptionDataSource(
        num_scenes=int(provenance["num_scenes"]),
        scene_seed=int(provenance["scene_seed"]),
        fashion_mnist_dir=fashion_mnist_dir or str(FASHION_MNIST_DIR),
        **common,  # type: ignore[arg-type]
    )
