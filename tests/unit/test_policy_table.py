"""The one policy table (beem/policies/policy_table.py): validation, round trips, and what derives from it."""

from __future__ import annotations

import json
import math

import pytest

from beem.policies.exit_policies import BeemPolicy, EntropyPolicy, MaxProbPolicy, PatiencePolicy, StaticPolicy
from beem.policies.policy_table import (
    POLICY_NAMES,
    POLICY_TABLE,
    RULE_OF_CLASS,
    CalibrationStart,
    PolicyParameterError,
    build_policy,
    policy_params_json,
)
from service.schemas import POLICY_REQUEST_MODELS, POLICY_SPEC

START = CalibrationStart(num_layers=4, exit_accuracies=(0.6, 0.7, 0.8, 0.85))
BEEM_PARAMS = {"alpha": 1.0, "weights": [0.1, 0.2, 0.3, 0.4], "count_first_exit": True, "reset": "restart"}


CALIBRATED_THRESHOLD = {"beem-a": 2.0, "beem-c": 1.1, "max-prob": 0.9, "entropy": -0.5, "patience": 2.0,
                        "static": 3.0, "full": math.inf}  # fmt: skip


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_entry_round_trips_through_json(name: str) -> None:
    """A starting point and a calibrated threshold survive manifest JSON (inf as a string) and rebuild."""
    definition = POLICY_TABLE[name]
    policy = definition.starting_point(START)
    for candidate in (policy, policy.with_threshold(CALIBRATED_THRESHOLD[name])):
        written = json.loads(json.dumps(policy_params_json(candidate)))
        assert build_policy(name, written, START.num_layers) == candidate
    assert RULE_OF_CLASS[type(policy)] == definition.rule


def test_names_and_rules_are_the_tables() -> None:
    assert POLICY_NAMES == ("beem-a", "beem-c", "max-prob", "entropy", "patience", "static", "full")
    assert {model.model_fields["name"].annotation.__args__[0] for model in POLICY_REQUEST_MODELS} == set(POLICY_NAMES)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("beem-a", BEEM_PARAMS, BeemPolicy("beem-a", (0.1, 0.2, 0.3, 0.4), 1.0)),
        ("beem-c", {"alpha": "inf", "weights": [1, 1, 1, 1]}, BeemPolicy("beem-c", (1.0,) * 4, math.inf)),
        ("beem-a", {**BEEM_PARAMS, "reset": "zero", "count_first_exit": False},
         BeemPolicy("beem-a", (0.1, 0.2, 0.3, 0.4), 1.0, count_first_exit=False, reset="zero")),
        ("max-prob", {"threshold": 0.9}, MaxProbPolicy(0.9)),
        ("max-prob", {"threshold": "inf"}, MaxProbPolicy(math.inf)),  # calibration's "never"
        ("entropy", {"threshold": 0.25}, EntropyPolicy(0.25)),
        ("entropy", {"threshold": "-inf"}, EntropyPolicy(-math.inf)),
        ("patience", {"patience": 2}, PatiencePolicy(2)),
        ("patience", {"patience": "inf"}, PatiencePolicy(math.inf)),
        ("static", {"layer": 4}, StaticPolicy(4)),
    ],
)  # fmt: skip
def test_valid_parameters_build(name: str, params: dict[str, object], expected: object) -> None:
    assert build_policy(name, params, 4) == expected


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nope", {}, "unknown policy 'nope'"),
        ("max-prob", {"threshold": 0.5, "alpha": 1}, "'alpha' does not apply to policy 'max-prob'"),
        ("full", {"layer": 2}, "'layer' does not apply"),
        ("max-prob", {}, "'threshold' is required"),
        ("max-prob", {"threshold": 1.5}, r"must be in \[0, 1\]"),
        ("max-prob", {"threshold": "-inf"}, r"must be in \[0, 1\]"),
        ("max-prob", {"threshold": "nan"}, "must be in"),
        ("max-prob", {"threshold": True}, "must be a number"),
        ("max-prob", {"threshold": "high"}, "must be a number"),
        ("entropy", {"threshold": -0.1}, r"must be in \[0, inf\]"),
        ("patience", {"patience": 1.5}, "whole number"),
        ("patience", {"patience": -1}, "must be in"),
        ("static", {"layer": 5}, r"must be in \[1, 4\]"),
        ("static", {"layer": 0}, "must be in"),
        ("static", {"layer": "inf"}, "must be in"),
        ("beem-a", {**BEEM_PARAMS, "alpha": -1}, "'alpha' must be in"),
        ("beem-a", {**BEEM_PARAMS, "weights": [0.1, 0.2]}, "needs 4 numbers"),
        ("beem-a", {**BEEM_PARAMS, "weights": [0.1, -0.2, 0.3, 0.4]}, "'weights' must be in"),
        ("beem-a", {**BEEM_PARAMS, "weights": [0.1, "inf", 0.3, 0.4]}, "must be finite"),
        ("beem-a", {**BEEM_PARAMS, "weights": "0.1"}, "needs 4 numbers"),
        ("beem-a", {**BEEM_PARAMS, "reset": "Restart"}, "must be one of"),
        ("beem-a", {**BEEM_PARAMS, "count_first_exit": 1}, "true or false"),
    ],
)
def test_invalid_parameters_are_refused_with_a_reason(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyParameterError, match=message):
        build_policy(name, params, 4)


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"name": "beem-a", "alpha": 1.5}, True),
        ({"name": "beem-a", "threshold": 0.5}, False),  # another policy's parameter
        ({"name": "max-prob", "threshold": 1.0}, True),
        ({"name": "max-prob", "threshold": 1.01}, False),  # the table's range, checked on the wire
        ({"name": "entropy", "threshold": 2.0}, True),
        ({"name": "patience", "patience": 2.5}, False),
        ({"name": "static", "layer": 0}, False),
        ({"name": "full"}, True),
        ({"name": "full", "alpha": 1}, False),
        ({"name": "nope"}, False),
    ],
)
def test_the_wire_schema_derives_from_the_table(body: dict[str, object], valid: bool) -> None:
    if valid:
        assert POLICY_SPEC.validate_python(body).overrides() == {k: v for k, v in body.items() if k != "name"}
    else:
        with pytest.raises(ValueError):
            POLICY_SPEC.validate_python(body)
