"""Read captioning data in COCO format: an annotations JSON (`images`, `annotations` with `image_id` and
`caption`) and a folder holding the image files. Real COCO and the generated scenes load the same way."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from beem.data.examples import DataFormatError


@dataclass(frozen=True)
class CaptionedImage:
    image_id: int
    path: Path
    captions: tuple[str, ...]  # every reference caption of the image


def read_coco_captions(annotations_file: Path, image_dir: Path) -> list[CaptionedImage]:
    """Images in id order, each with its captions; a malformed file raises DataFormatError naming the problem."""
    try:
        content = json.loads(annotations_file.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise DataFormatError(annotations_file, None, "no such file") from error
    except json.JSONDecodeError as error:
        raise DataFormatError(annotations_file, error.lineno, f"invalid JSON ({error.msg})") from error
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise DataFormatError(annotations_file, None, "expected an object with 'images' and 'annotations' lists")
    captions: dict[int, list[str]] = {}
    for number, annotation in enumerate(content.get("annotations") or []):
        if not isinstance(annotation, dict) or not isinstance(annotation.get("caption"), str):
            raise DataFormatError(annotations_file, None, f"annotations[{number}] has no string 'caption'")
        captions.setdefault(int(annotation["image_id"]), []).append(annotation["caption"].strip())
    result = []
    for number, image in enumerate(content["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise DataFormatError(annotations_file, None, f"images[{number}] needs 'id' and 'file_name'")
        path = image_dir / str(image["file_name"])
        if not path.is_file():
            raise DataFormatError(path, None, f"image of images[{number}] (id {image['id']}) is missing")
        if int(image["id"]) not in captions:
            raise DataFormatError(annotations_file, None, f"image id {image['id']} has no caption")
        result.append(CaptionedImage(int(image["id"]), path, tuple(captions[int(image["id"])])))
    return sorted(result, key=lambda item: item.image_id)
