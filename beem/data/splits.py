"""Deterministic train / calibration / test split.

Stratified by label so every split keeps the class balance, and seeded with numpy's PCG64 (`default_rng`), whose
permutations are stable across numpy versions. The calibration split chooses every policy's threshold; the test
split is only ever reported, never used to choose anything. A data file may instead name each row's split (a
`split` field): the fine-grained sentiment file does, so that it has the binary set's rows in every split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from beem.data.examples import LabelledDataset

SPLIT_NAMES = ("train", "calibration", "test")
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
DEFAULT_SPLIT_SEED = 20240611


@dataclass(frozen=True)
class DataSplits:
    train: LabelledDataset
    calibration: LabelledDataset
    test: LabelledDataset

    def by_name(self, name: str) -> LabelledDataset:
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLIT_NAMES)}")
        split: LabelledDataset = getattr(self, name)
        return split


def split_indices(
    labels: list[int], fractions: tuple[float, float, float], seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Per label, shuffle its indices and cut them by `fractions`; each split is returned in ascending order."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    label_array = np.asarray(labels)
    parts: list[list[int]] = [[], [], []]
    for label in sorted(set(labels)):
        members = np.flatnonzero(label_array == label)
        shuffled = members[rng.permutation(len(members))]
        first = round(len(members) * fractions[0])
        second = first + round(len(members) * fractions[1])
        for part, chunk in zip(parts, (shuffled[:first], shuffled[first:second], shuffled[second:]), strict=True):
            part.extend(int(i) for i in chunk)
    train, calibration, test = (sorted(part) for part in parts)
    return train, calibration, test


def reshare_calibration(
    labels: list[int], train: list[int], calibration: list[int], share: float, seed: int
) -> tuple[list[int], list[int]]:
    """Pool the train and calibration rows and cut them again, per label, so calibration holds `share` of them.

    The test rows are not among the inputs, so they cannot move: this is the "larger calibration split" lever,
    which must leave the reported split as it was. Each part is returned in ascending order.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"the calibration share must be between 0 and 1, got {share}")
    rng = np.random.default_rng(seed)
    pool = np.asarray(sorted(train + calibration))
    pool_labels = np.asarray(labels)[pool]
    new_train: list[int] = []
    new_calibration: list[int] = []
    for label in sorted(set(pool_labels.tolist())):
        members = pool[pool_labels == label]
        shuffled = members[rng.permutation(len(members))]
        cut = round(len(members) * share)
        new_calibration.extend(int(i) for i in shuffled[:cut])
        new_train.extend(int(i) for i in shuffled[cut:])
    return sorted(new_train), sorted(new_calibration)


def split_dataset(
    dataset: LabelledDataset,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = DEFAULT_SPLIT_SEED,
    calibration_share: float | None = None,
) -> DataSplits:
    assigned = [example.split for example in dataset.examples]
    if all(split is not None for split in assigned):  # the file says which split each row is in
        train, calibration, test = ([i for i, split in enumerate(assigned) if split == name] for name in SPLIT_NAMES)
    elif any(split is not None for split in assigned):
        raise ValueError(f"{dataset.source}: some rows name their split and some do not")
    else:
        train, calibration, test = split_indices(dataset.labels(), fractions, seed)
    if calibration_share is not None:
        train, calibration = reshare_calibration(dataset.labels(), train, calibration, calibration_share, seed)
    return DataSplits(
        train=dataset.subset(train, "#train"),
        calibration=dataset.subset(calibration, "#calibration"),
        test=dataset.subset(test, "#test"),
    )
