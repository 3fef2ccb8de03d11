"""Fine-grained sentiment, five classes, from the same Rotten Tomatoes snippets as the binary set.

The mean rating s (-4..4, 15-29 raters a snippet) is binned with SST-5's cut-offs on (s + 4) / 8 (0.2, 0.4, 0.6,
0.8), that is s = -2.4, -0.8, 0.8, 2.4, upper edges inclusive as in SST:

| label          | mean rating s       |
|----------------|---------------------|
| very negative  | s <= -2.4           |
| negative       | -2.4 < s <= -0.8    |
| neutral        | -0.8 < s <= 0.8     |
| positive       | 0.8 < s <= 2.4      |
| very positive  | s > 2.4             |

The rows are exactly the binary set's (the 37 snippets scored 0 are left out there, so here too), and each row
keeps the split the binary set gives it (stratified by the binary label, seed 20240611): the two tasks share
their train, calibration and test text, so a row never trains one task and tests the other. The file names each
row's split (`split`), which `split_dataset` honours.
"""

from __future__ import annotations

import json
from pathlib import Path

from beem.data.rotten_tomatoes import LABEL_NAMES, REPO_DATA_FILE, parse_ground_truth, read_sdist
from beem.data.splits import DEFAULT_FRACTIONS, DEFAULT_SPLIT_SEED, SPLIT_NAMES, split_indices

FINE_LABEL_NAMES = ("very negative", "negative", "neutral", "positive", "very positive")
CUT_OFFS = (-2.4, -0.8, 0.8, 2.4)  # upper edges (inclusive) of the first four classes
FINE_DATA_FILE = REPO_DATA_FILE.parents[1] / "rotten_tomatoes_fine" / "snippets.jsonl"


def fine_label(score: float) -> str:
    for name, edge in zip(FINE_LABEL_NAMES, CUT_OFFS, strict=False):
        if score <= edge:
            return name
    return FINE_LABEL_NAMES[-1]


def fine_grained_records(binary_records: list[dict[str, object]]) -> list[dict[str, object]]:
    """The binary set's records relabelled, each with the split the binary set puts it in."""
    binary_labels = [LABEL_NAMES.index(str(record["label"])) for record in binary_records]
    split_of = {}
    for name, indices in zip(SPLIT_NAMES, split_indices(binary_labels, DEFAULT_FRACTIONS, DEFAULT_SPLIT_SEED),
                             strict=True):  # fmt: skip
        split_of.update(dict.fromkeys(indices, name))
    return [{"id": record["id"], "text": record["text"], "score": record["score"],
             "label": fine_label(float(str(record["score"]))), "split": split_of[index]}
            for index, record in enumerate(binary_records)]  # fmt: skip


def write_fine_grained(sdist: Path, destination: Path) -> int:
    """Write the five-class JSONL from the vaderSentiment sdist; returns the rows written."""
    binary, _ = parse_ground_truth(read_sdist(sdist), sdist)
    records = fine_grained_records(binary)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with destination.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)
