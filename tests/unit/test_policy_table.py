"""The one policy table (beem/policies/policy_table.py): validation, round trips, and what derives from it, with
a coverage check that fails when an `ExitPolicy` subclass is missing from any derived piece."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import fields, replace

import pytest

from beem.policies import exit_policies
from beem.policies.array_policies import SCORE_RULES, RowPolicies, RowStates
from beem.policies.exit_gate import ExitGatePolicy
from beem.policies.exit_policies import (
    BeemPolicy,
    EntropyPolicy,
    ExitPolicy,
    FullDepthPolicy,
    MaxProbPolicy,
    PatiencePolicy,
    StaticPolicy,
)
from beem.policies.policy_table import (
    DEFINITION_OF_CLASS,
    POLICY_NAMES,
    POLICY_TABLE,
    RULE_OF_CLASS,
    CalibrationStart,
    PolicyDefinition,
    PolicyParameterError,
    build_policy,
    definition_of_policy,
    earliest_exit_layer,
    policy_added,
    policy_params_json,
    threshold_ceiling,
)
from service.engine.classify.device.row_columns import RowColumns
from service.schemas import POLICY_REQUEST_MODELS, POLICY_SPEC
from tests.policy_examples import example_gate_policy

START = CalibrationStart(num_layers=4, exit_accuracies=(0.6, 0.7, 0.8, 0.85))
BEEM_PARAMS = {"alpha": 1.0, "weights": [0.1, 0.2, 0.3, 0.4], "count_first_exit": True, "reset": "restart"}


CALIBRATED_THRESHOLD = {"beem-a": 2.0, "beem-c": 1.1, "max-prob": 0.9, "entropy": -0.5, "patience": 2.0,
                        "static": 3.0, "gate": 1.5, "full": math.inf}  # fmt: skip


def uncalibrated(definition: PolicyDefinition) -> ExitPolicy:
    """An entry's policy before its threshold is chosen: its starting point, or for a trained entry (the exit
    gate) one with seeded weights, as calibration would have fitted."""
    if definition.trained:
        return example_gate_policy(START.num_layers, math.inf)
    return definition.starting_point(START)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_entry_round_trips_through_json(name: str) -> None:
    """A starting point and a calibrated threshold survive manifest JSON (inf as a string) and rebuild."""
    definition = POLICY_TABLE[name]
    policy = uncalibrated(definition)
    for candidate in (policy, policy.with_threshold(CALIBRATED_THRESHOLD[name])):
        written = json.loads(json.dumps(policy_params_json(candidate)))
        assert build_policy(name, written, START.num_layers) == candidate
    assert RULE_OF_CLASS[type(policy)] == definition.rule


def test_names_and_rules_are_the_tables() -> None:
    assert POLICY_NAMES == ("beem-a", "beem-c", "max-prob", "entropy", "patience", "static", "gate", "full")
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
        ("beem-c", {**BEEM_PARAMS, "vote_above_chance": True},
         BeemPolicy("beem-c", (0.1, 0.2, 0.3, 0.4), 1.0, vote_above_chance=True, num_labels=5)),
        ("beem-c", {**BEEM_PARAMS, "vote_above_chance": False}, BeemPolicy("beem-c", (0.1, 0.2, 0.3, 0.4), 1.0)),
    ],
)  # fmt: skip
def test_valid_parameters_build(name: str, params: dict[str, object], expected: object) -> None:
    assert build_policy(name, params, 4, num_labels=5) == expected


def test_the_vote_above_chance_needs_the_models_labels() -> None:
    with pytest.raises(PolicyParameterError, match="at least two labels"):
        build_policy("beem-a", {**BEEM_PARAMS, "vote_above_chance": True}, 4)  # a captioner's: not known
    with pytest.raises(PolicyParameterError, match="true or false"):
        build_policy("beem-a", {**BEEM_PARAMS, "vote_above_chance": 1}, 4, num_labels=2)


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
        ({"name": "beem-c", "vote_above_chance": True}, True),  # a request may choose the vote above chance
        ({"name": "max-prob", "vote_above_chance": True}, False),  # BEEM's option only
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


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


SERVED_CLASSES = [c for c in _subclasses(ExitPolicy) if c.__module__.startswith(exit_policies.__package__ or "")]


def test_the_coverage_check_sees_every_policy_class() -> None:
    assert set(SERVED_CLASSES) == {BeemPolicy, MaxProbPolicy, EntropyPolicy, PatiencePolicy, StaticPolicy,
                                   FullDepthPolicy, ExitGatePolicy}  # fmt: skip


@pytest.mark.parametrize("policy_class", SERVED_CLASSES, ids=lambda c: c.__name__)
def test_every_policy_class_is_covered_by_every_derived_piece(policy_class: type[ExitPolicy]) -> None:
    """An `ExitPolicy` subclass of exit_policies.py with no table entry, or an entry some derived piece does not
    know, fails here."""
    assert policy_class in DEFINITION_OF_CLASS, f"{policy_class.__name__} has no entry in POLICY_TABLE"
    for definition in (d for d in POLICY_TABLE.values() if d.policy_class is policy_class):
        policy = uncalibrated(definition)
        assert type(policy) is policy_class
        assert definition_of_policy(policy).rule == definition.rule == RULE_OF_CLASS[policy_class]
        assert definition.rule in SCORE_RULES, f"rule {definition.rule} of {definition.name} has no score"
        assert definition.keeps <= {f.name for f in fields(RowStates)}
        calibrated = policy.with_threshold(CALIBRATED_THRESHOLD[definition.name])
        assert set(definition.row_parameters(calibrated)) <= {f.name for f in fields(RowPolicies)}
        assert 1 <= earliest_exit_layer(calibrated, START.num_layers) <= START.num_layers
        ceiling = threshold_ceiling(calibrated)
        assert ceiling is None or ceiling >= 0


def test_the_device_row_columns_hold_every_state_and_parameter_field() -> None:
    columns = RowColumns(num_layers=4, num_labels=3)
    assert set(columns.of) == {f.name for f in (*fields(RowStates), *fields(RowPolicies))}
    spans = sorted((s.start, s.stop) for s in columns.of.values())
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), "columns overlap or leave a gap"
    assert columns.of["weights"].stop - columns.of["weights"].start == 4


@pytest.mark.parametrize(
    ("policy", "ceiling"),
    [
        (BeemPolicy("beem-a", (0.5, 0.75, 1.0, 1.0), 2.0), 3.25),
        (MaxProbPolicy(0.9), 1.0),
        (EntropyPolicy(0.3), None),
        (PatiencePolicy(2), None),
        (StaticPolicy(2), None),
        (FullDepthPolicy(), None),
        (example_gate_policy(4, 2.0), None),  # log-odds: no share of them means anything
    ],
)
def test_threshold_ceilings_come_from_the_table(policy: ExitPolicy, ceiling: float | None) -> None:
    assert threshold_ceiling(policy) == ceiling


def test_a_policy_class_the_table_does_not_know_is_an_error_not_a_guess() -> None:
    class Unknown(MaxProbPolicy):
        pass

    with pytest.raises(KeyError, match="Unknown is not in the policy table"):
        earliest_exit_layer(Unknown(0.9), 4)


def test_an_added_entry_must_be_new_and_agree_with_the_entries_of_its_class() -> None:
    with pytest.raises(ValueError, match="already in the table"), policy_added(POLICY_TABLE["max-prob"]):
        pass
    clash = replace(POLICY_TABLE["beem-c"], name="beem-x", keeps=frozenset({"score"}))
    with pytest.raises(ValueError, match="share a class"), policy_added(clash):
        pass
    assert "beem-x" not in POLICY_TABLE and DEFINITION_OF_CLASS[BeemPolicy].keeps == {"score", "previous_label"}
