"""On the default bundle: a sample's label and exit layer are the same alone, batched, or joining rows already in
flight at any depth (continuous depth batching re-pads and merges groups; none of it may change an answer)."""

from __future__ import annotations

import pytest

from beem.data.examples import read_dataset
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import split_dataset
from service.engine.classify.classification_engine import ClassificationEngine
from service.engine.classify.group_selection import GROUP_SELECTION_RULES
from service.settings import DEFAULT_BUNDLE
from tests.engine.engine_driver import Submitted, loaded_engine, submit

SAMPLES = 40
POLICIES = ("beem-a", "beem-c", "max-prob", "patience")


@pytest.fixture(params=GROUP_SELECTION_RULES)
def engine(request: pytest.FixtureRequest) -> ClassificationEngine:
    """The default bundle's engine, selecting groups by each rule in turn (never shedding by expected wait: not
    what this tests)."""
    return loaded_engine(DEFAULT_BUNDLE, group_selection=request.param)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [e.text for e in split_dataset(read_dataset(REPO_DATA_FILE)).test.examples[:SAMPLES]]


def test_joining_mid_flight_never_changes_a_samples_answer(engine: ClassificationEngine, texts: list[str]) -> None:
    assert engine.bundle is not None
    for name in POLICIES:
        policy = engine.bundle.policies[name]
        alone = []
        for text in texts:
            single = submit(engine, [text], policy)
            engine.run_until_idle()
            alone.extend(single.labels_and_layers())
        # Staggered: one or two new rows join before every step, so rows meet groups at every depth.
        waves: list[Submitted] = []
        for start in range(0, SAMPLES, 2):
            waves.append(submit(engine, texts[start : start + 2], policy))
            engine.step_once()
        engine.run_until_idle()
        staggered = [pair for wave in waves for pair in wave.labels_and_layers()]
        assert staggered == alone, name
        assert len({layer for _, layer in alone}) > 1, f"{name} should exit samples at different layers"
