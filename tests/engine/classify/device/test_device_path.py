"""The device layer path of the classification engine (service/engine/classify/device/device_path.py) on the tiny
generated bundle, driven step by step in the test thread. Where CUDA is absent it runs on the CPU through the same
code (every step eager); the CUDA-only tests skip with a reason.

The reference is the host path (`host/host_path.py`): the same rows under the same policies get the same labels,
exit layers and scores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

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
from service.engine.classify.device.device_path import DevicePath
from service.engine.classify.device.packet_reader import PacketReader
from service.engine.classify.group_selection import GROUP_SELECTION_RULES
from service.engine.classify.tokenized_row import TokenizedRow
from service.engine.row_outcome import ClassAnswer, Dropped, RowFate
from tests.engine.engine_driver import TEXTS, Submitted, loaded_engine, submit

POLICIES: list[ExitPolicy] = [
    MaxProbPolicy(0.521),  # the tiny model's confidences sit near 0.52: rows leave at layers 1, 2 and 3
    BeemPolicy("beem-c", (1 / 3, 2 / 3, 1.0), 0.5),
    PatiencePolicy(1),
    EntropyPolicy(0.6925),
    StaticPolicy(2),
    FullDepthPolicy(),
]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def device_engine(bundle_dir: Path, **settings: object) -> ClassificationEngine:
    engine = loaded_engine(bundle_dir, engine_path="device", skip_unprofitable_exits=False, **settings)
    path_of(engine)
    return engine


def path_of(engine: ClassificationEngine) -> DevicePath:
    assert isinstance(engine.path, DevicePath)
    return engine.path


@pytest.fixture
def host(tiny_bundle_dir: Path) -> ClassificationEngine:
    engine = loaded_engine(tiny_bundle_dir, engine_path="host")
    assert engine.engine_path == "host"
    return engine


@pytest.fixture(params=["read-at-once", "read-one-step-late"])
def make_device(request: pytest.FixtureRequest, tiny_bundle_dir: Path) -> Callable[..., ClassificationEngine]:
    """The CPU reads a step's packet at once; "read-one-step-late" reads it after queueing the next step, as on
    CUDA, so the run-ahead (steps on rows the host has not yet seen leave, cuts and merges around unread packets)
    is tested here too."""

    def make(**settings: object) -> ClassificationEngine:
        engine = device_engine(tiny_bundle_dir, **settings)
        if request.param == "read-one-step-late":
            path = path_of(engine)
            path.reader = PacketReader(engine.device, path.reader.width, hold_back_on_cpu=True)
        return engine

    return make


@pytest.fixture
def device(make_device: Callable[..., ClassificationEngine]) -> ClassificationEngine:
    return make_device()


def _answers(
    engine: ClassificationEngine, texts: list[str], policy: ExitPolicy, **options: object
) -> list[ClassAnswer]:
    submitted = submit(engine, texts, policy, **options)  # type: ignore[arg-type]
    engine.run_until_idle()
    return submitted.answers()


def _same(first: list[ClassAnswer], second: list[ClassAnswer]) -> None:
    assert [(a.label, a.exit_layer) for a in first] == [(a.label, a.exit_layer) for a in second]
    assert [a.score for a in first] == pytest.approx([a.score for a in second], abs=1e-6)


def _live_depths(engine: ClassificationEngine) -> list[tuple[int, int]]:
    return sorted((group.depth, group.live) for group in path_of(engine).groups if group.live)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_the_device_path_answers_as_the_host_path(
    host: ClassificationEngine, device: ClassificationEngine, policy: ExitPolicy
) -> None:
    expected = _answers(host, TEXTS, policy, return_exits=True)
    got = _answers(device, TEXTS, policy, return_exits=True)
    _same(expected, got)
    for want, have in zip(expected, got, strict=True):
        assert [(e.layer, e.label) for e in want.exits] == [(e.layer, e.label) for e in have.exits]
        assert [e.confidence for e in want.exits] == pytest.approx([e.confidence for e in have.exits], abs=1e-6)
    assert sorted({a.exit_layer for a in got}) == sorted({a.exit_layer for a in expected})


def test_rows_leave_at_every_layer_and_mixed_policies_keep_their_own_rule(
    host: ClassificationEngine, device: ClassificationEngine
) -> None:
    alone = {(text, policy): _answers(host, [text], policy)[0] for text in TEXTS for policy in POLICIES}
    assert len({a.exit_layer for a in alone.values()}) == 3, "rows should leave at every layer"
    together = [submit(device, [text], policy) for text in TEXTS for policy in POLICIES]  # queued together
    device.run_until_idle()
    for (text, policy), submitted in zip(alone, together, strict=True):
        _same([alone[(text, policy)]], submitted.answers())


@pytest.mark.parametrize("rule", GROUP_SELECTION_RULES)
def test_rows_joining_mid_flight_get_what_they_get_alone(
    host: ClassificationEngine, make_device: Callable[..., ClassificationEngine], rule: str
) -> None:
    device = make_device(group_selection=rule)
    for policy in POLICIES:
        alone = [_answers(host, [text], policy)[0] for text in TEXTS]
        first = submit(device, TEXTS[:3], policy)
        device.step_once()
        late = submit(device, TEXTS[3:], policy)  # joins at depth 0 beside them
        device.step_once()
        device.run_until_idle()
        _same(alone, first.answers() + late.answers())
    assert not path_of(device).groups and device.inflight_rows == 0


def test_groups_are_padded_to_buckets_and_rows_of_one_token_bucket_join_together(tiny_bundle_dir: Path) -> None:
    engine = device_engine(tiny_bundle_dir, step_row_buckets="1,2,4", step_token_buckets="8,16")
    lengths = [len(ids) for ids in engine.bundle.tokenizer(TEXTS)["input_ids"]]  # type: ignore[union-attr]
    submitted = submit(engine, TEXTS, FullDepthPolicy())
    engine.step_once()
    shapes = sorted((group.capacity, group.width, group.live) for group in path_of(engine).groups)
    by_bucket = {
        bucket: sum(1 for n in lengths if path_of(engine).buckets.token_bucket(n) == bucket) for bucket in (8, 16)
    }
    beyond = sum(1 for n in lengths if n > 16)
    assert beyond, "one text should be longer than the largest token bucket"
    expected = []
    for bucket, count in by_bucket.items():
        left = count
        while left:
            rows = min(left, 4)
            expected.append((path_of(engine).buckets.shape(rows, bucket).rows, bucket, rows))
            left -= rows
    expected += [(1, max(lengths), 1)] * beyond  # beyond the buckets: its own shape, run eagerly
    assert shapes == sorted(expected)
    engine.run_until_idle()
    assert [a.exit_layer for a in submitted.answers()] == [3] * len(TEXTS)


def test_a_group_beyond_the_largest_bucket_runs_at_its_own_shape_and_answers_the_same(
    host: ClassificationEngine, tiny_bundle_dir: Path
) -> None:
    engine = device_engine(tiny_bundle_dir, step_row_buckets="1,2", step_token_buckets="4")
    for policy in POLICIES[:3]:
        _same(_answers(host, TEXTS, policy), _answers(engine, TEXTS, policy))
    assert path_of(engine).graphs.replays == 0 and path_of(engine).graphs.eager_steps > 0


def test_groups_shrink_to_a_smaller_bucket_as_rows_leave(
    device: ClassificationEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = path_of(device).graphs.run
    shapes: list[tuple[int, int]] = []

    def recording(kind: str, layer: int, hidden: torch.Tensor, *rest: torch.Tensor) -> object:
        shapes.append((layer, hidden.shape[0]))
        return real_run(kind, layer, hidden, *rest)

    monkeypatch.setattr(path_of(device).graphs, "run", recording)
    submitted = submit(device, TEXTS[:2] * 4, MaxProbPolicy(0.521))  # 8 short rows, half leave at layer 1
    device.run_until_idle()
    assert [a.exit_layer for a in submitted.answers()] == [2, 1] * 4
    if path_of(device).reader.hold_back_on_cpu:
        # Layer 2 was queued before layer 1's answers were read, at 8 rows; layer 3 at 4, before layer 2's answers
        # said everyone had left: the run-ahead's price, one step per group.
        assert shapes == [(1, 8), (2, 8), (3, 4)]
    else:
        assert shapes == [(1, 8), (2, 4)]  # layer 2 ran on the 4 rows left, in the bucket of 4


def test_decisions_are_read_back_only_where_a_row_can_leave(
    device: ClassificationEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_send = path_of(device).reader.send
    layers: list[int] = []

    def recording(table: torch.Tensor) -> object:
        assert path_of(device)._current is not None
        layers.append(path_of(device)._current.depth)
        return real_send(table)

    monkeypatch.setattr(path_of(device).reader, "send", recording)
    late = path_of(device).reader.hold_back_on_cpu  # the run-ahead may run (and read) one step past the last exit
    for policy, first_possible in ((FullDepthPolicy(), 3), (StaticPolicy(2), 2),
                                   (BeemPolicy("beem-c", (1 / 3, 2 / 3, 1.0), 0.9), 2)):  # fmt: skip
        layers.clear()
        answers = _answers(device, TEXTS[:2], policy)
        last = max(a.exit_layer for a in answers)
        assert layers[0] == first_possible and max(layers) == min(last + late, 3), (policy, layers)
        assert layers == sorted(set(layers))  # at most one read per step
    assert device.metrics.step_readbacks._value.get() > 0


def test_abandoned_rows_leave_between_steps_and_the_rest_are_answered(device: ClassificationEngine) -> None:
    submitted = submit(device, TEXTS[:3], FullDepthPolicy())
    short = submit(device, TEXTS[3:4], FullDepthPolicy(), timeout_s=0.2)
    device.step_once()
    submitted.items[1].cancel()
    device.notice_cancellation()
    time.sleep(0.25)
    device.step_once()
    assert submitted.outcomes == {1: Dropped(RowFate.CLIENT_GONE)}
    assert short.outcomes == {0: Dropped(RowFate.TIMEOUT)}
    device.run_until_idle()
    assert [submitted.outcomes[i].exit_layer for i in (0, 2)] == [3, 3]  # type: ignore[union-attr]
    gone = submit(device, TEXTS[:1], FullDepthPolicy(), timeout_s=0.05)  # a group whose every row times out
    device.step_once()
    time.sleep(0.1)
    device.run_until_idle()
    assert gone.outcomes == {0: Dropped(RowFate.TIMEOUT)}
    assert not path_of(device).groups, "a group with no rows left stays in the engine"
    metrics = device.metrics.render().decode()
    assert 'beem_rows_total{outcome="answered",task="classification"} 2.0' in metrics
    assert 'beem_layer_batch_size_sum{layer="3"} 2.0' in metrics  # the dropped rows ran no layer after leaving


def test_a_step_that_raises_fails_its_rows_and_the_engine_serves_on(
    device: ClassificationEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = path_of(device).graphs.step
    real = step.with_exit
    calls = {"count": 0}

    def failing_once(*args: object) -> object:
        calls["count"] += 1
        if calls["count"] == 1:
            raise RuntimeError("injected fault")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(step, "with_exit", failing_once)
    doomed = submit(device, [TEXTS[0], TEXTS[1], TEXTS[3]], MaxProbPolicy(0.521))  # one token bucket: one group
    device.run_until_idle()
    assert set(doomed.outcomes.values()) == {Dropped(RowFate.ERROR, "RuntimeError: injected fault")}
    assert len(doomed.outcomes) == 3 and not path_of(device).groups
    assert len(_answers(device, TEXTS[:3], MaxProbPolicy(0.521))) == 3


def test_closing_drains_rows_at_every_depth(make_device: Callable[..., ClassificationEngine]) -> None:
    device = make_device(group_selection="shallowest")
    deep = submit(device, TEXTS[:2], FullDepthPolicy())
    device.step_once()
    device.step_once()
    middle = submit(device, TEXTS[3:4], FullDepthPolicy())
    device.step_once()
    assert _live_depths(device) == [(1, 1), (2, 2)]
    device.queue.close()
    device.run_until_idle()
    assert [a.exit_layer for a in deep.answers() + middle.answers()] == [3, 3, 3]


def test_a_group_whose_exits_would_not_pay_runs_at_full_depth_and_says_so(tiny_bundle_dir: Path) -> None:
    engine = loaded_engine(tiny_bundle_dir, engine_path="device")
    policy = MaxProbPolicy(0.521)
    path = path_of(engine)
    path.savings.min_rows = 4
    tokens = path.buckets.tokens[0]
    # Exit heads as dear as three layers, every row leaving late: exits cannot pay at these shapes.
    path.savings.costs = {(kind, rows, tokens): (3.0 if kind == "with_exit" else 1.0)
                          for kind in ("layer_only", "with_exit") for rows in path.buckets.rows}  # fmt: skip
    short = [text for text in TEXTS if len(text) < 30]
    learned = _answers(engine, short, policy)  # not enough rows seen yet: exits run, and are counted
    assert sorted({a.exit_layer for a in learned}) != [3]
    skipped = _answers(engine, short, policy)
    assert [a.exit_layer for a in skipped] == [3] * len(short)
    metrics = engine.metrics.render().decode()
    assert f'beem_exit_heads_skipped_rows_total{{policy="max-prob"}} {len(short)}.0' in metrics
    path.savings.costs = {}  # cheap heads again (no cost known: exits assumed to pay)
    _same(learned, _answers(engine, short, policy))


def test_rows_that_ask_get_their_distribution(host: ClassificationEngine, device: ClassificationEngine) -> None:
    answers = []
    for engine in (host, device):
        submitted = Submitted([])
        item = TokenizedRow(input_ids=engine.bundle.tokenizer(TEXTS[0])["input_ids"], token_type_ids=None,  # type: ignore[union-attr]
                        policy=MaxProbPolicy(0.521), policy_name="max-prob", last_layer=3, wants_distribution=True,
                        deadline=time.monotonic() + 60,
                        on_done=lambda outcome, s=submitted: s.outcomes.__setitem__(0, outcome))  # fmt: skip
        submitted.items.append(item)
        engine.submit([item])
        engine.run_until_idle()
        answers.append(submitted.answers()[0])
    # The device path pads the row to a token bucket: float32 sums in another order, equal to ~1e-7.
    assert answers[0].probabilities == pytest.approx(answers[1].probabilities, rel=1e-5, abs=1e-6)
    assert answers[0].logits == pytest.approx(answers[1].logits, rel=1e-5, abs=1e-6)
    assert answers[1].probabilities is not None and sum(answers[1].probabilities) == pytest.approx(1.0)


@needs_cuda
def test_the_cuda_step_loop_never_synchronises_but_for_its_one_read_back(tiny_bundle_dir: Path) -> None:
    engine = device_engine(tiny_bundle_dir, device="cuda", dtype="float32")
    waits = []
    path = path_of(engine)
    real_read = type(path)._read_pending

    def counting(self: DevicePath) -> None:
        waits.append(self._unread_packet is not None)
        torch.cuda.set_sync_debug_mode("default")  # the packet's own wait is the one allowed
        try:
            real_read(self)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    path._read_pending = counting.__get__(path)  # type: ignore[method-assign]
    submitted = [submit(engine, TEXTS, policy) for policy in POLICIES]
    torch.cuda.set_sync_debug_mode("error")
    try:
        engine.run_until_idle()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(len(s.answers()) == len(TEXTS) for s in submitted)
    assert path_of(engine).graphs.replays > 0


@needs_cuda
def test_cuda_graphs_answer_as_the_cpu(host: ClassificationEngine, tiny_bundle_dir: Path) -> None:
    engine = device_engine(tiny_bundle_dir, device="cuda", dtype="float32")
    for policy in POLICIES:
        _same(_answers(host, TEXTS, policy), _answers(engine, TEXTS, policy))
    assert path_of(engine).graphs.replays > 0
    assert path_of(engine).graphs.eager_steps == 0 or any(len(t) > max(path_of(engine).buckets.tokens) for t in TEXTS)


@needs_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_on_the_gpu_answers_as_cpu_fp32_on_the_test_split(dtype: str) -> None:
    """The default bundle's test split: the same labels, at least 99% of exit layers the same, accuracy within 0.2
    points (BEEM-A, exit skipping off so every row decides by its policy)."""
    from beem.data.examples import read_dataset
    from beem.data.rotten_tomatoes import REPO_DATA_FILE
    from beem.data.splits import split_dataset
    from bench.engine_in_thread import classify_ids, engine_in_thread
    from service.settings import DEFAULT_BUNDLE

    cpu = engine_in_thread(DEFAULT_BUNDLE, "cpu", "float32", engine_path="host")
    gpu = engine_in_thread(DEFAULT_BUNDLE, "cuda", dtype, engine_path="device", skip_unprofitable_exits=False)
    assert cpu.bundle is not None and gpu.bundle is not None
    dataset = read_dataset(REPO_DATA_FILE)
    test = split_dataset(dataset).test.examples
    rows = [cpu.bundle.tokenizer(e.text, truncation=True, max_length=cpu.bundle.max_length)["input_ids"] for e in test]
    truth = [cpu.bundle.labels.index(dataset.label_names[e.label]) for e in test]
    answers = {}
    for name, engine in (("cpu", cpu), ("gpu", gpu)):
        assert engine.bundle is not None
        policy = engine.bundle.policies["beem-a"]
        answers[name] = [
            a for start in range(0, len(rows), 32) for a in classify_ids(engine, rows[start : start + 32], policy)
        ]
    pairs = list(zip(answers["cpu"], answers["gpu"], strict=True))
    assert all(a.label == b.label for a, b in pairs)
    assert sum(a.exit_layer == b.exit_layer for a, b in pairs) >= 0.99 * len(pairs)
    accuracy = {
        name: sum(a.label == y for a, y in zip(got, truth, strict=True)) / len(truth) for name, got in answers.items()
    }
    assert abs(accuracy["gpu"] - accuracy["cpu"]) <= 0.002
