"""Bucket selection for the GPU path's steps (service/engine/step_buckets.py): table-driven."""

from __future__ import annotations

import pytest

from service.engine.classify.device.step_buckets import StepBuckets, StepShape, parse_buckets

BUCKETS = StepBuckets(rows=(1, 2, 4, 8), tokens=(16, 32, 64), max_padded_tokens=256)


@pytest.mark.parametrize(
    ("rows", "longest", "shape"),
    [
        (1, 1, StepShape(1, 16, bucketed=True)),
        (1, 16, StepShape(1, 16, bucketed=True)),
        (1, 17, StepShape(1, 32, bucketed=True)),
        (3, 20, StepShape(4, 32, bucketed=True)),
        (8, 32, StepShape(8, 32, bucketed=True)),  # 8 x 32 = 256: within max_padded_tokens
        (8, 33, StepShape(8, 33, bucketed=False)),  # 8 x 64 is beyond it: the group's own shape, eager
        (9, 10, StepShape(9, 10, bucketed=False)),  # more rows than the largest row bucket
        (2, 65, StepShape(2, 65, bucketed=False)),  # longer than the largest token bucket
    ],
)
def test_a_group_runs_at_the_smallest_bucket_that_holds_it(rows: int, longest: int, shape: StepShape) -> None:
    assert BUCKETS.shape(rows, longest) == shape


@pytest.mark.parametrize(("longest", "bucket"), [(1, 16), (16, 16), (17, 32), (64, 64), (65, None)])
def test_token_buckets(longest: int, bucket: int | None) -> None:
    assert BUCKETS.token_bucket(longest) == bucket


def test_warm_up_captures_every_bucket_shape_within_the_token_budget() -> None:
    shapes = BUCKETS.shapes()
    assert (8, 32) in shapes and (4, 64) in shapes
    assert (8, 64) not in shapes
    assert all(rows * tokens <= 256 for rows, tokens in shapes)
    assert len(shapes) == 4 + 4 + 3


@pytest.mark.parametrize("text", ["", "4,2", "1,1,2", "0,1", "-1"])
def test_buckets_must_be_distinct_positive_and_ascending(text: str) -> None:
    with pytest.raises(ValueError, match="buckets"):
        StepBuckets(rows=parse_buckets(text))


def test_settings_refuse_bad_buckets(tiny_bundle_dir: object) -> None:
    from pydantic import ValidationError

    from service.settings import ServerSettings

    with pytest.raises(ValidationError, match="step buckets"):
        ServerSettings(bundle=tiny_bundle_dir, step_row_buckets="8,4")  # type: ignore[arg-type]
    assert ServerSettings(bundle=tiny_bundle_dir, step_token_buckets="8,24").step_buckets().tokens == (8, 24)  # type: ignore[arg-type]
