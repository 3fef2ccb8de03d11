"""Labelled text examples and the loaders that read them from disk.

Three layouts are read: the project's processed JSONL (one object a line), GLUE's TSV layout (single sentence such
as SST-2 or sentence pair such as MRPC / RTE / QNLI) and plain JSONL written by a user. A malformed file raises
`DataFormatError` naming the file and the line, never a bare KeyError deep in training.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


class DataFormatError(ValueError):
    """A data file that cannot be read; the message names the file and the line."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    text_pair: str | None = None
    split: str | None = None  # a split the data file assigns (train / calibration / test), else None


@dataclass(frozen=True)
class LabelledDataset:
    """Examples plus the names of their integer labels (label i is `label_names[i]`)."""

    examples: tuple[Example, ...]
    label_names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.examples)

    def labels(self) -> list[int]:
        return [example.label for example in self.examples]

    def subset(self, indices: Iterable[int], source_suffix: str) -> LabelledDataset:
        picked = tuple(self.examples[i] for i in indices)
        return LabelledDataset(picked, self.label_names, f"{self.source}{source_suffix}")


# Header names GLUE uses across its tasks, first match wins.
# QNLI (`question`, `sentence`) is a pair task; SST-2's lone `sentence` is a single-sentence task.
_GLUE_TEXT_COLUMNS = ("question", "question1", "sentence1", "premise", "#1 String", "sentence")
_GLUE_PAIR_COLUMNS = ("sentence2", "question2", "hypothesis", "#2 String", "sentence")
_GLUE_LABEL_COLUMNS = ("label", "gold_label", "Quality")
_JSONL_TEXT_KEYS = ("text", "sentence", "text_a", "sentence1")
_JSONL_PAIR_KEYS = ("text_pair", "text_b", "sentence2")


def _label_index(raw_labels: Sequence[str], label_names: Sequence[str] | None) -> tuple[list[int], tuple[str, ...]]:
    """Map raw label strings to integers; without given names, sorted distinct values define the order
    (numerically when every label is an integer, so label "10" stays after "2")."""
    distinct = set(raw_labels)
    numeric = all(label.lstrip("-").isdigit() for label in distinct)
    ordered = sorted(distinct, key=int) if numeric else sorted(distinct)
    names = tuple(label_names) if label_names is not None else tuple(ordered)
    position = {name: i for i, name in enumerate(names)}
    return [position[label] for label in raw_labels], names


def _clean_text(value: object, path: Path, line: int, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(path, line, f"field {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def _first_present(keys: Sequence[str], available: Iterable[str]) -> str | None:
    present = set(available)
    return next((key for key in keys if key in present), None)


def read_jsonl(path: Path, label_names: Sequence[str] | None = None) -> LabelledDataset:
    """Read JSONL: each line an object with a text field, an optional pair field and a label (int or string)."""
    texts: list[tuple[str, str | None]] = []
    raw_labels: list[str] = []
    assigned: list[str | None] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(path, line_number, f"invalid JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise DataFormatError(path, line_number, "each line must be a JSON object")
            text_key = _first_present(_JSONL_TEXT_KEYS, record)
            if text_key is None:
                raise DataFormatError(path, line_number, f"no text field (one of {', '.join(_JSONL_TEXT_KEYS)})")
            if "label" not in record or isinstance(record["label"], (dict, list)) or record["label"] is None:
                raise DataFormatError(path, line_number, "missing or invalid 'label' (an int or a string)")
            pair_key = _first_present(_JSONL_PAIR_KEYS, record)
            pair = _clean_text(record[pair_key], path, line_number, pair_key) if pair_key else None
            texts.append((_clean_text(record[text_key], path, line_number, text_key), pair))
            raw_labels.append(str(record["label"]))
            split = record.get("split")
            if split is not None and split not in ("train", "calibration", "test"):
                raise DataFormatError(path, line_number, f"'split' must be train, calibration or test, got {split!r}")
            assigned.append(split)
    return _build(path, texts, raw_labels, label_names, assigned)


def read_glue_tsv(path: Path, label_names: Sequence[str] | None = None) -> LabelledDataset:
    """Read a GLUE task file (header row, tab-separated, no quoting), single sentence or sentence pair."""
    texts: list[tuple[str, str | None]] = []
    raw_labels: list[str] = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataFormatError(path, 1, "empty file, expected a GLUE header row")
        text_column = _first_present(_GLUE_TEXT_COLUMNS, header)
        label_column = _first_present(_GLUE_LABEL_COLUMNS, header)
        if text_column is None or label_column is None:
            raise DataFormatError(path, 1, f"header {header} lacks a text column or a label column")
        pair_column = _first_present(_GLUE_PAIR_COLUMNS, [c for c in header if c != text_column])
        text_at, label_at = header.index(text_column), header.index(label_column)
        pair_at = header.index(pair_column) if pair_column else None
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataFormatError(path, line_number, f"expected {len(header)} columns, found {len(row)}")
            pair = _clean_text(row[pair_at], path, line_number, str(pair_column)) if pair_at is not None else None
            texts.append((_clean_text(row[text_at], path, line_number, text_column), pair))
            raw_labels.append(_clean_text(row[label_at], path, line_number, label_column))
    return _build(path, texts, raw_labels, label_names)


def read_dataset(path: Path, label_names: Sequence[str] | None = None) -> LabelledDataset:
    """Dispatch on the file name: `.tsv` is GLUE's layout, `.jsonl` / `.json` is JSON lines."""
    if not path.is_file():
        raise DataFormatError(path, None, "no such file")
    if path.suffix == ".tsv":
        return read_glue_tsv(path, label_names)
    if path.suffix in (".jsonl", ".json"):
        return read_jsonl(path, label_names)
    raise DataFormatError(path, None, "unknown format: expected a .tsv (GLUE) or .jsonl file")


def _build(
    path: Path,
    texts: list[tuple[str, str | None]],
    raw_labels: list[str],
    label_names: Sequence[str] | None,
    splits: Sequence[str | None] | None = None,
) -> LabelledDataset:
    if not texts:
        raise DataFormatError(path, None, "no examples")
    if label_names is not None:
        unknown = sorted(set(raw_labels) - set(label_names))
        if unknown:
            raise DataFormatError(path, None, f"labels {unknown} are not among {list(label_names)}")
    labels, names = _label_index(raw_labels, label_names)
    if len(names) < 2:
        raise DataFormatError(path, None, f"a classifier needs at least two labels, found {list(names)}")
    assigned = splits if splits is not None else [None] * len(texts)
    examples = tuple(Example(text, label, pair, split)
                     for (text, pair), label, split in zip(texts, labels, assigned, strict=True))  # fmt: skip
    return LabelledDataset(examples, names, str(path))
