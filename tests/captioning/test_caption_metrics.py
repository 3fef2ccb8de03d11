"""Caption metrics on hand-made cases: perfect, partial and unrelated captions order as they should."""

from __future__ import annotations

import pytest

from beem.captioning.caption_metrics import bleu4, cider_d

REFERENCES = [
    ["a small red dress at the top left"],
    ["a large blue bag at the top right and a small green coat at the bottom left"],
    ["a small white sneaker at the bottom right"],
    ["a large yellow shirt at the top left and a small red bag at the bottom right"],
]


def test_perfect_captions_score_the_maximum_bleu() -> None:
    assert bleu4([refs[0] for refs in REFERENCES], REFERENCES) == pytest.approx(100.0)


@pytest.mark.parametrize("metric", [bleu4, cider_d])
def test_metrics_order_perfect_over_partial_over_unrelated(metric: object) -> None:
    perfect = [refs[0] for refs in REFERENCES]
    partial = ["a small red dress at the top right", "a large blue bag at the top right",
               "a small white sneaker at the top left", "a large yellow shirt at the top left"]  # fmt: skip
    unrelated = ["the cat sat on the mat"] * 4
    scores = [metric(candidates, REFERENCES) for candidates in (perfect, partial, unrelated)]  # type: ignore[operator]
    assert scores[0] > scores[1] > scores[2]
    assert scores[2] < 0.05 * scores[0]  # BLEU's smoothing leaves a sliver above 0


def test_cider_rewards_distinctive_ngrams_and_penalises_length() -> None:
    refs = REFERENCES
    right_object = cider_d(
        ["a small red dress", "a large blue bag", "a small white sneaker", "a large yellow shirt"], refs
    )
    only_common_words = cider_d(["a small at the", "a large at the", "a small at the", "a large at the"], refs)
    assert right_object > only_common_words
    padded = cider_d([r[0] + " and more and more and more words" for r in refs], refs)
    assert padded < cider_d([r[0] for r in refs], refs)


def test_ragged_references_are_accepted() -> None:
    references = [["a small red dress at the top", "a red dress at the top left"], ["a large blue bag at the left"]]
    candidates = ["a small red dress at the top", "a large blue bag at the left"]
    assert bleu4(candidates, references) == pytest.approx(100.0)
    assert cider_d(candidates, references) > 0
