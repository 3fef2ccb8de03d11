"""The server's classification engine run in the caller's thread, for benchmarks: built by the app's own factory
from the settings, loaded without its thread; rows submitted and run until they have all left."""

from __future__ import annotations

import time
from pathlib import Path

from beem.bundle.manifest import read_manifest, resolve_bundle_dir
from beem.policies.exit_policies import ExitPolicy
from service.app import build_engine
from service.engine.classify.classification_engine import ClassificationEngine
from service.engine.classify.tokenized_row import TokenizedRow
from service.engine.row_outcome import ClassAnswer, RowOutcome
from service.settings import ServerSettings


def engine_in_thread(
    bundle_dir: Path, device: str = "cpu", dtype: str = "float32", **settings: object
) -> ClassificationEngine:
    bundle_dir = resolve_bundle_dir(bundle_dir)
    num_layers = read_manifest(bundle_dir).num_layers
    engine = build_engine(ServerSettings(bundle=bundle_dir, device=device, dtype=dtype, **settings),  # type: ignore[arg-type]
                          "classification", num_layers)  # fmt: skip
    assert isinstance(engine, ClassificationEngine)
    engine.load(bundle_dir, None, start_worker=False)
    return engine


def classify_ids(engine: ClassificationEngine, rows: list[list[int]], policy: ExitPolicy) -> list[ClassAnswer]:
    """Submit these token-id rows together and run the engine until every one has been answered."""
    assert engine.bundle is not None
    outcomes: dict[int, RowOutcome] = {}
    engine.submit([
        TokenizedRow(input_ids=ids, token_type_ids=None, policy=policy, policy_name=policy.name,
                 last_layer=engine.bundle.num_layers, deadline=time.monotonic() + 600,
                 on_done=lambda outcome, row=row: outcomes.__setitem__(row, outcome))
        for row, ids in enumerate(rows)
    ])  # fmt: skip
    engine.run_until_idle()
    answers = [outcomes[row] for row in range(len(rows))]
    assert all(isinstance(a, ClassAnswer) for a in answers), answers
    return answers  # type: ignore[return-value]
