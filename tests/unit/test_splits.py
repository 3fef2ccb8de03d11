"""Unit tests for beem/data/splits.py: the deterministic stratified split, and re-sharing train / calibration with
the test rows untouched."""

from __future__ import annotations

from collections import Counter

import pytest

from beem.data.examples import Example, LabelledDataset
from beem.data.splits import DEFAULT_SPLIT_SEED, reshare_calibration, split_dataset, split_indices


def make_dataset(counts: dict[int, int]) -> LabelledDataset:
    labels = [label for label, count in counts.items() for _ in range(count)]
    # interleave so labels are not sorted by position
    order = sorted(range(len(labels)), key=lambda i: (i * 7919) % len(labels))
    examples = tuple(Example(f"example {i}", labels[j]) for i, j in enumerate(order))
    names = tuple(f"class{k}" for k in range(max(counts) + 1))
    return LabelledDataset(examples, names, "memory")


def texts(dataset: LabelledDataset) -> list[str]:
    return [example.text for example in dataset.examples]


def test_split_is_deterministic() -> None:
    dataset = make_dataset({0: 120, 1: 80})
    first, second = split_dataset(dataset, seed=1), split_dataset(dataset, seed=1)
    for name in ("train", "calibration", "test"):
        assert texts(first.by_name(name)) == texts(second.by_name(name))
    other = split_dataset(dataset, seed=2)
    assert texts(other.train) != texts(first.train)
    assert split_indices(dataset.labels(), (0.7, 0.15, 0.15), 3) == split_indices(
        dataset.labels(), (0.7, 0.15, 0.15), 3
    )


def test_split_default_seed() -> None:
    dataset = make_dataset({0: 30, 1: 30})
    assert texts(split_dataset(dataset).test) == texts(split_dataset(dataset, seed=DEFAULT_SPLIT_SEED).test)


@pytest.mark.parametrize("counts", [{0: 120, 1: 80}, {0: 501, 1: 333, 2: 166}, {0: 7, 1: 13}, {0: 50, 1: 50}])
@pytest.mark.parametrize("seed", [0, 20240611])
def test_split_disjoint_covering_and_balanced(counts: dict[int, int], seed: int) -> None:
    dataset = make_dataset(counts)
    train, calibration, test = split_indices(dataset.labels(), (0.70, 0.15, 0.15), seed)
    assert set(train).isdisjoint(calibration)
    assert set(train).isdisjoint(test)
    assert set(calibration).isdisjoint(test)
    assert sorted(train + calibration + test) == list(range(len(dataset)))
    for part in (train, calibration, test):
        assert part == sorted(part)
    labels = dataset.labels()
    for part, fraction in ((train, 0.70), (calibration, 0.15), (test, 0.15)):
        per_label = Counter(labels[i] for i in part)
        for label, count in counts.items():
            assert abs(per_label[label] - fraction * count) <= 1, (label, fraction)


def test_split_exact_sizes_and_label_balance() -> None:
    splits = split_dataset(make_dataset({0: 120, 1: 80}), seed=5)
    assert (len(splits.train), len(splits.calibration), len(splits.test)) == (140, 30, 30)
    for name in ("train", "calibration", "test"):
        split = splits.by_name(name)
        assert split.labels().count(1) / len(split) == pytest.approx(0.4)
        assert split.source == f"memory#{name}"
        assert split.label_names == ("class0", "class1")
    all_texts = texts(splits.train) + texts(splits.calibration) + texts(splits.test)
    assert len(set(all_texts)) == 200


def test_split_by_name_unknown() -> None:
    splits = split_dataset(make_dataset({0: 10, 1: 10}))
    assert splits.by_name("calibration") is splits.calibration
    with pytest.raises(ValueError, match="validation"):
        splits.by_name("validation")


@pytest.mark.parametrize(
    "fractions",
    [(0.5, 0.5), (0.7, 0.2, 0.2), (0.8, 0.3, -0.1), (1.0, 0.0, 0.0), (0.6, 0.2, 0.1), (0.25, 0.25, 0.25, 0.25)],
)
def test_split_bad_fractions(fractions: tuple[float, ...]) -> None:
    dataset = make_dataset({0: 10, 1: 10})
    with pytest.raises(ValueError, match="fractions"):
        split_dataset(dataset, fractions=fractions)  # type: ignore[arg-type]


@pytest.mark.parametrize("share", [0.1, 0.35, 0.5, 0.9])
def test_resharing_calibration_never_moves_a_test_row(share: float) -> None:
    labels = [i % 3 for i in range(300)]  # three labels, 100 rows each
    train, calibration, test = split_indices(labels, (0.7, 0.15, 0.15), seed=5)
    new_train, new_calibration = reshare_calibration(labels, train, calibration, share, seed=5)
    assert sorted(new_train + new_calibration) == sorted(train + calibration)  # the same rows
    assert not set(test) & set(new_train + new_calibration)  # no test row moved in
    assert not set(new_train) & set(new_calibration)
    for label in range(3):  # stratified: each label's share of the pool
        pool = sum(1 for i in train + calibration if labels[i] == label)
        assert sum(1 for i in new_calibration if labels[i] == label) == round(pool * share)
    assert reshare_calibration(labels, train, calibration, share, seed=5) == (new_train, new_calibration)


@pytest.mark.parametrize("share", [0.0, 1.0, -0.2, 1.5])
def test_a_calibration_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        reshare_calibration([0, 1, 0, 1], [0, 1], [2, 3], share, seed=0)
