"""Where a benchmark's results go: `<stem>.json` and `<stem>.md` under its output folder, and the table printed."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: Path, stem: str, results: object, table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(table)
    print(table)
