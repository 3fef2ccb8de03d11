"""The default data set: Rotten Tomatoes movie-review snippets (Hutto & Gilbert, ICWSM 2014, via vaderSentiment).

Each raw line is `id<TAB>mean_sentiment (-4..4)<TAB>text`. Label = "positive" when the mean score is above 0,
"negative" below 0; the 37 snippets scored exactly 0 are dropped since they have no binary label. The processed
copy lives in `data/rotten_tomatoes/` (with the licence and citation); `beem prepare-data` regenerates it from the
vaderSentiment 3.3.2 source distribution.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from beem.data.examples import DataFormatError

LABEL_NAMES = ("negative", "positive")
RAW_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
NESTED_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
REPO_DATA_FILE = Path(__file__).resolve().parents[2] / "data" / "rotten_tomatoes" / "snippets.jsonl"


def parse_ground_truth(raw: str, source: Path) -> tuple[list[dict[str, object]], int]:
    """Parse the ground-truth lines; returns the labelled records and how many score-0 rows were dropped."""
    records: list[dict[str, object]] = []
    dropped = 0
    for line_number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataFormatError(source, line_number, f"expected 3 tab-separated fields, found {len(parts)}")
        identifier, score_text, text = parts
        try:
            score = float(score_text)
        except ValueError as error:
            raise DataFormatError(source, line_number, f"score {score_text!r} is not a number") from error
        if score == 0:
            dropped += 1
            continue
        label = LABEL_NAMES[1] if score > 0 else LABEL_NAMES[0]
        records.append({"id": int(identifier), "text": text.strip(), "score": score, "label": label})
    return records, dropped


def read_sdist(sdist: Path) -> str:
    """Pull the movie-snippet ground truth out of the vaderSentiment sdist (a tarball inside a tarball)."""
    with tarfile.open(sdist) as outer:
        nested = next((m for m in outer.getmembers() if m.name.endswith(NESTED_ARCHIVE)), None)
        if nested is None:
            raise DataFormatError(sdist, None, f"no {NESTED_ARCHIVE} inside; is this vaderSentiment-3.3.2.tar.gz?")
        nested_file = outer.extractfile(nested)
        if nested_file is None:
            raise DataFormatError(sdist, None, f"{NESTED_ARCHIVE} is not a regular file")
        with tarfile.open(fileobj=io.BytesIO(nested_file.read())) as inner:
            member = inner.extractfile(RAW_MEMBER)
            if member is None:
                raise DataFormatError(sdist, None, f"{RAW_MEMBER} is not a regular file")
            return member.read().decode("utf-8")


def write_processed(sdist: Path, destination: Path) -> tuple[int, int]:
    """Write the processed JSONL; returns (rows kept, score-0 rows dropped)."""
    records, dropped = parse_ground_truth(read_sdist(sdist), sdist)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with destination.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records), dropped
