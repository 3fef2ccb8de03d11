"""Drive a real engine in the test's own thread, step by step: rows from texts, their outcomes collected."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from beem.bundle.manifest import read_manifest, resolve_bundle_dir
from beem.policies.exit_policies import ExitPolicy
from service.app import build_engine
from service.engine.classify.classification_engine import ClassificationEngine
from service.engine.classify.host.host_path import HostPath
from service.engine.classify.host.row_group import RowGroup
from service.engine.classify.tokenized_row import TokenizedRow
from service.engine.row_outcome import ClassAnswer, RowOutcome
from service.settings import ServerSettings

# Texts for the tiny bundle: under max-prob 0.521 they leave at layers 1, 2 and 3; one is beyond 16 tokens.
TEXTS = [
    "a gorgeous, moving film",
    "dull and far too long",
    "the plot never comes together, and the jokes land with a thud on every single occasion",
    "fine acting",
    "an unexpectedly tender, funny and wise film about growing older",
    "it is what it is",
]


def loaded_engine(bundle_dir: Path, **settings: object) -> ClassificationEngine:
    """The server's classification engine for a bundle (built by the app's own factory), loaded, no thread.
    Admission never sheds by expected wait unless a test asks: these tests are about the step loop, and on a
    loaded machine (CI beside a build) a slow drain rate made the default 500 ms shed test rows."""
    settings.setdefault("max_queue_wait_ms", 1e9)
    manifest = read_manifest(resolve_bundle_dir(bundle_dir))
    engine = build_engine(ServerSettings(bundle=bundle_dir, **settings), "classification", manifest.num_layers)
    assert isinstance(engine, ClassificationEngine)
    engine.load(bundle_dir, None, start_worker=False)
    return engine


@dataclass
class Submitted:
    items: list[TokenizedRow]
    outcomes: dict[int, RowOutcome] = field(default_factory=dict)

    def answers(self) -> list[ClassAnswer]:
        assert len(self.outcomes) == len(self.items), "not every row has left yet"
        answers = [self.outcomes[i] for i in range(len(self.items))]
        assert all(isinstance(a, ClassAnswer) for a in answers), answers
        return answers  # type: ignore[return-value]

    def labels_and_layers(self) -> list[tuple[int, int]]:
        return [(a.label, a.exit_layer) for a in self.answers()]


def submit(
    engine: ClassificationEngine,
    texts: list[str],
    policy: ExitPolicy,
    *,
    last_layer: int | None = None,
    return_exits: bool = False,
    timeout_s: float = 60.0,
) -> Submitted:
    """Tokenize like the service does and queue one row per text."""
    bundle = engine.bundle
    assert bundle is not None
    encoded = bundle.tokenizer(texts, truncation=True, max_length=bundle.max_length)
    submitted = Submitted([])
    for index, ids in enumerate(encoded["input_ids"]):
        submitted.items.append(TokenizedRow(
            input_ids=ids, token_type_ids=None, policy=policy, policy_name=policy.name,
            last_layer=last_layer or bundle.num_layers, return_exits=return_exits,
            deadline=time.monotonic() + timeout_s,
            on_done=lambda outcome, i=index: submitted.outcomes.__setitem__(i, outcome),
        ))  # fmt: skip
    engine.submit(submitted.items)
    return submitted


def host_groups(engine: ClassificationEngine) -> list[RowGroup]:
    """The groups in flight on an engine of the host path."""
    assert isinstance(engine.path, HostPath)
    return engine.path.groups


def group_depths(engine: ClassificationEngine) -> list[tuple[int, int]]:
    """(depth, rows) of every group in flight, shallowest first."""
    return sorted((group.depth, group.num_rows) for group in host_groups(engine))
