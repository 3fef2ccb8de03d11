"""The classification engine on its host layer path (DESIGN 6), the tiny generated bundle driven step by step in the
test thread: rows join mid-flight, mixed policies share a group, abandoned rows leave between steps, a failing step
fails only its rows, closing drains rows at every depth."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from beem.policies.exit_policies import BeemPolicy, ExitPolicy, FullDepthPolicy, MaxProbPolicy, StaticPolicy
from service.engine.admission_queue import EngineClosedError
from service.engine.classify.classification_engine import ClassificationEngine
from service.engine.classify.group_selection import GROUP_SELECTION_RULES
from service.engine.classify.tokenized_row import TokenizedRow
from service.engine.row_outcome import ClassAnswer, Dropped, RowFate
from tests.engine.engine_driver import TEXTS, group_depths, host_groups, loaded_engine, submit

WAVERING = MaxProbPolicy(0.521)  # the tiny model's confidences sit near 0.52: rows leave at layers 1, 2 and 3
POLICIES: list[ExitPolicy] = [WAVERING, BeemPolicy("beem-c", (1 / 3, 2 / 3, 1.0), 0.5), StaticPolicy(2),
                              FullDepthPolicy()]  # fmt: skip


@pytest.fixture
def engine(tiny_bundle_dir: Path) -> ClassificationEngine:
    return loaded_engine(tiny_bundle_dir)


def _selecting(bundle_dir: Path, rule: str) -> ClassificationEngine:
    """An engine whose groups are picked by `rule` (a path is built with its budget, at load)."""
    return loaded_engine(bundle_dir, group_selection=rule)


def _alone(engine: ClassificationEngine, text: str, policy: ExitPolicy) -> tuple[int, int]:
    submitted = submit(engine, [text], policy)
    engine.run_until_idle()
    return submitted.labels_and_layers()[0]


@pytest.mark.parametrize("rule", GROUP_SELECTION_RULES)
def test_a_row_joining_mid_flight_gets_what_it_gets_alone(
    engine: ClassificationEngine, rule: str, tiny_bundle_dir: Path
) -> None:
    alone = {(text, policy): _alone(engine, text, policy) for text in TEXTS for policy in POLICIES}
    assert len({layer for _, layer in alone.values()}) == 3, "rows should leave at every layer"
    engine = _selecting(tiny_bundle_dir, rule)
    for policy in POLICIES:
        first = submit(engine, TEXTS[:3], policy)
        engine.step_once()  # the first rows ran layer 1; some may have left
        late = submit(engine, TEXTS[3:], policy)  # joins at depth 0 beside them
        engine.step_once()
        depths = group_depths(engine)
        engine.run_until_idle()
        assert first.labels_and_layers() == [alone[(text, policy)] for text in TEXTS[:3]]
        assert late.labels_and_layers() == [alone[(text, policy)] for text in TEXTS[3:]]
        assert depths, "rows were still in flight after two steps"
        if policy is POLICIES[-1]:  # full depth: nobody has left, so both arrivals are in flight
            assert sum(rows for _, rows in depths) == len(TEXTS)


def test_rows_at_the_same_depth_from_different_arrivals_merge(tiny_bundle_dir: Path) -> None:
    """Newcomers that reach the depth of rows already there join their group: layer 2 runs once, on all five."""
    engine = _selecting(tiny_bundle_dir, "shallowest")
    first = submit(engine, TEXTS[:2], FullDepthPolicy())
    engine.step_once()  # depth 1: two rows
    second = submit(engine, TEXTS[2:5], FullDepthPolicy())
    engine.step_once()  # the shallowest (the newcomers) runs layer 1 and merges
    assert group_depths(engine) == [(1, 5)]
    engine.run_until_idle()
    assert [a.exit_layer for a in first.answers() + second.answers()] == [3] * 5
    metrics = engine.metrics.render().decode()
    assert 'beem_layer_batch_size_sum{layer="2"} 5.0' in metrics  # layer 2 ran once, on the merged group
    assert 'beem_layer_batch_size_count{layer="2"} 1.0' in metrics


def test_rows_of_different_policies_share_one_group_and_keep_their_own_rule(engine: ClassificationEngine) -> None:
    alone = [_alone(engine, TEXTS[0], policy) for policy in POLICIES]
    submitted = [submit(engine, [TEXTS[0]], policy) for policy in POLICIES]  # queued together
    engine.step_once()
    assert group_depths(engine)[-1][1] + sum(len(s.outcomes) for s in submitted) == len(POLICIES)
    engine.run_until_idle()
    assert [s.labels_and_layers()[0] for s in submitted] == alone
    metrics = engine.metrics.render().decode()
    assert f'beem_layer_batch_size_sum{{layer="1"}} {len(POLICIES) * 2}.0' in metrics  # alone runs + one group
    assert f'beem_layer_batch_size_count{{layer="1"}} {len(POLICIES) + 1}.0' in metrics


def test_cancelled_and_timed_out_rows_leave_between_steps(engine: ClassificationEngine) -> None:
    submitted = submit(engine, TEXTS[:3], FullDepthPolicy())
    short = submit(engine, TEXTS[3:4], FullDepthPolicy(), timeout_s=0.2)
    engine.step_once()  # one group of four at depth 1
    assert group_depths(engine) == [(1, 4)]
    submitted.items[1].cancel()
    engine.notice_cancellation()
    time.sleep(0.25)
    engine.step_once()  # they leave before layer 2 runs
    assert submitted.outcomes == {1: Dropped(RowFate.CLIENT_GONE)}
    assert short.outcomes == {0: Dropped(RowFate.TIMEOUT)}
    engine.run_until_idle()
    assert all(isinstance(submitted.outcomes[i], ClassAnswer) for i in (0, 2))
    metrics = engine.metrics.render().decode()
    assert 'beem_rows_total{outcome="client_gone",task="classification"} 1.0' in metrics
    assert 'beem_rows_total{outcome="timeout",task="classification"} 1.0' in metrics
    assert 'beem_rows_total{outcome="answered",task="classification"} 2.0' in metrics
    assert 'beem_layer_batch_size_sum{layer="2"} 2.0' in metrics  # no compute spent on them after layer 1


def test_a_step_that_raises_fails_its_rows_and_the_engine_serves_on(
    engine: ClassificationEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert engine.bundle is not None
    model = engine.bundle.model
    real_run_layer = model.run_layer
    calls = {"count": 0}

    def failing_once(state: object) -> object:
        calls["count"] += 1
        if calls["count"] == 2:
            raise RuntimeError("injected fault")
        return real_run_layer(state)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "run_layer", failing_once)
    doomed = submit(engine, TEXTS[:3], FullDepthPolicy())
    engine.run_until_idle()
    assert all(o == Dropped(RowFate.ERROR, "RuntimeError: injected fault") for o in doomed.outcomes.values())
    assert len(doomed.outcomes) == 3
    served = submit(engine, TEXTS[:3], FullDepthPolicy())
    engine.run_until_idle()
    assert [a.exit_layer for a in served.answers()] == [3, 3, 3]
    assert 'beem_rows_total{outcome="error",task="classification"} 3.0' in engine.metrics.render().decode()


def test_closing_drains_rows_at_every_depth(tiny_bundle_dir: Path) -> None:
    """Rows queued, at depth 1 and at depth 2 when the engine closes are all answered; a new row is refused."""
    engine = _selecting(tiny_bundle_dir, "shallowest")
    deep = submit(engine, TEXTS[:2], FullDepthPolicy())
    engine.step_once()
    engine.step_once()
    middle = submit(engine, TEXTS[2:4], FullDepthPolicy())
    engine.step_once()
    queued = submit(engine, TEXTS[4:6], FullDepthPolicy())
    assert group_depths(engine) == [(1, 2), (2, 2)]
    assert engine.queue.depth == 2
    engine.queue.close()
    with pytest.raises(EngineClosedError):
        submit(engine, TEXTS[:1], FullDepthPolicy())
    engine.run_until_idle()
    for wave in (deep, middle, queued):
        assert [a.exit_layer for a in wave.answers()] == [3, 3]
    assert 'beem_rows_total{outcome="shutdown",task="classification"} 1.0' in engine.metrics.render().decode()


def test_budgets_count_the_rows_already_in_flight(tiny_bundle_dir: Path) -> None:
    engine = loaded_engine(tiny_bundle_dir, max_batch_size=3)
    first = submit(engine, TEXTS[:2], FullDepthPolicy())
    engine.step_once()
    second = submit(engine, TEXTS[2:6], FullDepthPolicy())
    engine.step_once()  # room for one more row only
    assert sum(rows for _, rows in group_depths(engine)) == 3
    assert engine.queue.depth == 3
    engine.run_until_idle()
    assert len(first.answers()) == 2 and len(second.answers()) == 4


def test_depth_only_rows_skip_the_exit_heads_they_cannot_use(
    engine: ClassificationEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert engine.bundle is not None
    model = engine.bundle.model
    real_exit_logits = model.exit_logits
    layers_read: list[int] = []

    def counting(state: object) -> object:
        layers_read.append(state.layers_done)  # type: ignore[attr-defined]
        return real_exit_logits(state)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "exit_logits", counting)
    full = submit(engine, TEXTS[:2], FullDepthPolicy())
    engine.run_until_idle()
    static = submit(engine, TEXTS[:2], StaticPolicy(2), last_layer=3)
    engine.run_until_idle()
    capped = submit(engine, TEXTS[:1], FullDepthPolicy(), last_layer=1)
    engine.run_until_idle()
    assert layers_read == [3, 2, 1]
    assert [a.exit_layer for a in full.answers() + static.answers() + capped.answers()] == [3, 3, 2, 2, 1]


def test_only_rows_that_ask_get_their_distribution_and_exits(engine: ClassificationEngine) -> None:
    plain = submit(engine, TEXTS[:1], StaticPolicy(2))
    traced = submit(engine, TEXTS[:1], StaticPolicy(2), return_exits=True)
    engine.run_until_idle()
    (answer,), (with_exits,) = plain.answers(), traced.answers()
    assert answer.probabilities is None and answer.logits is None and answer.exits == ()
    assert [trace.layer for trace in with_exits.exits] == [1, 2]
    assert with_exits.exits[-1].label == with_exits.label
    assert math.isclose(with_exits.exits[-1].confidence, with_exits.score)


@pytest.mark.parametrize("rule", GROUP_SELECTION_RULES)
def test_shadow_rows_left_alone_in_a_group_wait_while_a_request_steps(tiny_bundle_dir: Path, rule: str) -> None:
    engine = loaded_engine(tiny_bundle_dir, group_selection=rule)
    bundle = engine.bundle
    assert bundle is not None
    outcomes: list[object] = []

    def shadow_row() -> TokenizedRow:
        return TokenizedRow(input_ids=bundle.tokenizer(TEXTS[0])["input_ids"], token_type_ids=None,
                        policy=FullDepthPolicy(), policy_name="full", last_layer=3,
                        deadline=time.monotonic() + 60, on_done=outcomes.append, shadow=True)  # fmt: skip

    submit(engine, [TEXTS[1]], StaticPolicy(1))
    engine.queue.submit_shadow(shadow_row())  # a request's row is waiting: the shadow row is shed at once
    assert outcomes == [Dropped(RowFate.SHED)]
    engine.run_until_idle()
    outcomes.clear()
    engine.queue.submit_shadow(shadow_row())  # nobody waits now: it joins with the next request's row
    first = submit(engine, [TEXTS[1]], StaticPolicy(1))
    engine.step_once()  # layer 1 for both; the request's row leaves, the shadow row runs on alone
    assert first.labels_and_layers() and [group.shadow_only for group in host_groups(engine)] == [True]
    second = submit(engine, [TEXTS[2]], StaticPolicy(1))
    engine.step_once()  # the new request's row goes first, though the shadow group is older and deeper
    assert second.labels_and_layers() and group_depths(engine) == [(1, 1)]
    engine.run_until_idle()
    assert isinstance(outcomes[0], ClassAnswer) and outcomes[0].exit_layer == 3
