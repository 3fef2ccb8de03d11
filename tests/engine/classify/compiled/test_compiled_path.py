"""The compiled layer path (service/engine/classify/compiled/) on the tiny generated bundle: real inductor
compilation of every layer and exit head, driven step by step in the test thread. The reference is the host path:
the same rows under the same policies get the same labels and exit layers, and scores within float32 rounding
(inductor fuses and reorders the float32 sums). When compiling fails, the path runs eagerly and says why.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from torch._dynamo.utils import counters

from beem.policies.exit_policies import (
    BeemPolicy,
    EntropyPolicy,
    ExitPolicy,
    FullDepthPolicy,
    MaxProbPolicy,
    PatiencePolicy,
    StaticPolicy,
)
from service.engine.classify.classification_engine import ClassificationEngine
from service.engine.classify.compiled.compiled_path import CompiledPath
from service.engine.row_outcome import ClassAnswer
from tests.engine.engine_driver import TEXTS, loaded_engine, submit

POLICIES: list[ExitPolicy] = [
    MaxProbPolicy(0.521),  # the tiny model's confidences sit near 0.52: rows leave at layers 1, 2 and 3
    BeemPolicy("beem-c", (1 / 3, 2 / 3, 1.0), 0.5),
    PatiencePolicy(1),
    EntropyPolicy(0.6925),
    StaticPolicy(2),
    FullDepthPolicy(),
]


@pytest.fixture(scope="module")
def compiled(tiny_bundle_dir: Path) -> ClassificationEngine:
    """Compiled once for the module (warm-up compiles every layer and head: seconds, not milliseconds)."""
    engine = loaded_engine(tiny_bundle_dir, engine_path="compiled")
    assert engine.engine_path == "compiled"
    return engine


@pytest.fixture(scope="module")
def host(tiny_bundle_dir: Path) -> ClassificationEngine:
    return loaded_engine(tiny_bundle_dir, engine_path="host")


def _path(engine: ClassificationEngine) -> CompiledPath:
    assert isinstance(engine.path, CompiledPath)
    return engine.path


def _answers(engine: ClassificationEngine, texts: list[str], policy: ExitPolicy) -> list[ClassAnswer]:
    submitted = submit(engine, texts, policy, return_exits=True)
    engine.run_until_idle()
    return submitted.answers()


def _same(expected: list[ClassAnswer], got: list[ClassAnswer]) -> None:
    assert [(a.label, a.exit_layer) for a in got] == [(a.label, a.exit_layer) for a in expected]
    assert [a.score for a in got] == pytest.approx([a.score for a in expected], abs=1e-5)
    for want, have in zip(expected, got, strict=True):
        assert [(e.layer, e.label) for e in have.exits] == [(e.layer, e.label) for e in want.exits]


def test_warm_up_compiles_and_says_how_long_it_took(compiled: ClassificationEngine) -> None:
    path = _path(compiled)
    assert path.compiled_layers.compiled, path.detail
    assert path.warm_up_s is not None and path.warm_up_s > 0
    assert path.detail.startswith("compiled with torch.compile in ")


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_the_compiled_path_answers_as_the_host_path(
    host: ClassificationEngine, compiled: ClassificationEngine, policy: ExitPolicy
) -> None:
    _same(_answers(host, TEXTS, policy), _answers(compiled, TEXTS, policy))
    assert _path(compiled).compiled_layers.compiled, "a shape serving made must not have made it fall back"


def test_rows_joining_mid_flight_and_one_row_alone_match_the_host_path(
    host: ClassificationEngine, compiled: ClassificationEngine
) -> None:
    """Groups merge, shrink and run alone: shapes warm-up did not see, compiled as they come."""
    for policy in POLICIES[:2]:
        alone = [_answers(host, [text], policy)[0] for text in TEXTS]
        _same(alone, [_answers(compiled, [text], policy)[0] for text in TEXTS])
        first = submit(compiled, TEXTS[:3], policy, return_exits=True)
        compiled.step_once()
        late = submit(compiled, TEXTS[3:], policy, return_exits=True)
        compiled.run_until_idle()
        _same(alone, first.answers() + late.answers())


def test_serving_compiles_nothing_after_warm_up(compiled: ClassificationEngine) -> None:
    """Warm-up compiles every graph serving needs: groups that merge, shrink, trim their padding and run a row
    alone must not compile again (each costs seconds in the middle of serving)."""
    graphs_before = counters["stats"]["unique_graphs"]
    for policy in POLICIES:
        first = submit(compiled, TEXTS[:4], policy)
        compiled.step_once()
        late = submit(compiled, TEXTS[4:], policy)
        compiled.run_until_idle()
        first.answers(), late.answers()
        _answers(compiled, TEXTS[2:3], policy)
    assert counters["stats"]["unique_graphs"] == graphs_before


def _failing_at_run(function: Callable[..., Any], dynamic: bool) -> Callable[..., Any]:
    def compiled_function(*args: Any) -> Any:
        raise RuntimeError("InductorError: no working C++ compiler found")

    return compiled_function


def _refusing(function: Callable[..., Any], dynamic: bool) -> Callable[..., Any]:
    raise RuntimeError("the inductor backend is not available")


@pytest.mark.parametrize("compiler", [_failing_at_run, _refusing], ids=["fails-at-first-call", "refused-up-front"])
def test_a_path_whose_compilation_fails_answers_eagerly_and_says_why(
    host: ClassificationEngine,
    tiny_bundle_dir: Path,
    compiler: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("service.engine.classify.compiled.compiled_layers.torch.compile", compiler)
    engine = loaded_engine(tiny_bundle_dir, engine_path="compiled")  # warm-up runs through the failure
    path = _path(engine)
    assert not path.compiled_layers.compiled
    assert path.detail.startswith("eager fallback: RuntimeError: ")
    for policy in POLICIES:
        _same(_answers(host, TEXTS, policy), _answers(engine, TEXTS, policy))
