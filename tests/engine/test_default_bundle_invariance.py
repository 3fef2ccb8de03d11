"""On the default bundle: a sample's label and exit layer are the same alone, batched, or joining rows already in
flight at any depth (continuous depth batching re-pads and merges groups; none of it may change an answer)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from beem.data.examples import read_dataset
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import split_dataset
from service.engine.group_selection import GROUP_SELECTION_RULES
from service.engine.inference_engine import InferenceEngine
from service.settings import DEFAULT_BUNDLE
from tests.engine.engine_driver import Submitted, loaded_engine, submit

SAMPLES = 40
POLICIES = ("beem-a", "beem-c", "max-prob", "patience")


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    return loaded_engine(DEFAULT_BUNDLE)  # never sheds by expected wait (engine_driver): not what this tests


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [e.text for e in split_dataset(read_dataset(REPO_DATA_FILE)).test.examples[:SAMPLES]]


@pytest.mark.parametrize("rule", GROUP_SELECTION_RULES)
def test_joining_mid_flight_never_changes_a_samples_answer(
    engine: InferenceEngine, texts: list[str], rule: str
) -> None:
    assert engine.bundle is not None
    engine.budget = replace(engine.budget, group_selection=rule)
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
