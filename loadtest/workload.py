"""What the load generator sends: labelled texts from a data split, cycled in a fixed order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from beem.data.examples import read_dataset
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import DEFAULT_FRACTIONS, DEFAULT_SPLIT_SEED, split_dataset


@dataclass(frozen=True)
class Workload:
    texts: tuple[str, ...]
    labels: tuple[str, ...] | None  # label names, when the data has them: accuracy is then reported
    pairs: tuple[str | None, ...] | None = None  # second sentences of a sentence-pair task

    def item(self, index: int) -> tuple[str | list[list[str]], str | None]:
        """(the request's `inputs`, the expected label): a text, or [[text, pair]] for a sentence pair."""
        position = index % len(self.texts)
        pair = None if self.pairs is None else self.pairs[position]
        inputs: str | list[list[str]] = self.texts[position] if pair is None else [[self.texts[position], pair]]
        return inputs, None if self.labels is None else self.labels[position]


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
