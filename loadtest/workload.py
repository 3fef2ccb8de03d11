"""What the load generator sends, cycled in a fixed order: labelled texts from a data split (to /v1/classify) or
the images of a folder (to /v1/caption, as base64 JSON)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beem.data.examples import read_dataset
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import DEFAULT_FRACTIONS, DEFAULT_SPLIT_SEED, split_dataset

CLASSIFY_ROUTE = "/v1/classify"
CAPTION_ROUTE = "/v1/caption"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Workload:
    texts: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None  # label names, when the data has them: accuracy is then reported
    pairs: tuple[str | None, ...] | None = None  # second sentences of a sentence-pair task
    images: tuple[str, ...] = ()  # base64 PNG / JPEG files: a captioning workload

    @property
    def route(self) -> str:
        return CAPTION_ROUTE if self.images else CLASSIFY_ROUTE

    def request(self, index: int, policy: str) -> tuple[dict[str, Any], str | None]:
        """(the JSON body for item `index` under `policy`, the expected label if known)."""
        if self.images:
            return {"image": self.images[index % len(self.images)], "policy": {"name": policy}}, None
        position = index % len(self.texts)
        pair = None if self.pairs is None else self.pairs[position]
        inputs: str | list[list[str]] = self.texts[position] if pair is None else [[self.texts[position], pair]]
        # truncate: a load test measures serving, so an over-long text is cut rather than refused (and miscounted)
        body = {"inputs": inputs, "policy": {"name": policy}, "truncate": True}
        return body, None if self.labels is None else self.labels[position]


def text_workload(
    data_file: Path = REPO_DATA_FILE,
    split: str = "test",
    split_seed: int = DEFAULT_SPLIT_SEED,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> Workload:
    """A split of a labelled .jsonl / GLUE .tsv file (the bundle's own split by default), or `all` of it."""
    dataset = read_dataset(data_file)
    chosen = dataset if split == "all" else split_dataset(dataset, fractions, split_seed).by_name(split)
    names = dataset.label_names
    has_pairs = any(example.text_pair is not None for example in chosen.examples)
    return Workload(
        texts=tuple(example.text for example in chosen.examples),
        labels=tuple(names[example.label] for example in chosen.examples),
        pairs=tuple(example.text_pair for example in chosen.examples) if has_pairs else None,
    )


def image_workload(folder: Path) -> Workload:
    """Every PNG / JPEG in `folder` (sorted by name), sent to /v1/caption."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise ValueError(f"{folder}: no .png / .jpg / .jpeg images to send")
    return Workload(images=tuple(base64.b64encode(p.read_bytes()).decode("ascii") for p in files))
