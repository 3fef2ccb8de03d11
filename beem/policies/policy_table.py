"""The one policy table: every serving policy with everything the code needs to know about it. Nothing else lists
the policies or switches on their classes.

An entry (`PolicyDefinition`) carries the policy's class, its parameters (defaults, ranges, who may set them), the
array rule that decides it, the state that rule keeps and the observations it reads, its earliest useful exit, the
threshold ceiling for online control and its per-row parameters. Everything that needs the set of policies
derives it from `POLICY_TABLE`:
- the wire schema (`service/schemas.py`) makes one request model per entry from its per-request parameters;
- validation (`build_policy`, used for bundle manifests and requests alike) checks values against the ranges here;
- calibration (`beem/calibration/policy_calibration.py`) starts every entry from its `starting_point`;
- serving and calibration decide with the entry's `rule` (`RULE_OF_CLASS`; its score is `SCORE_RULES[rule]` in
  `beem/policies/array_policies.py`), folding only the state the rules present keep (`rules_keeping`) and
  computing entropies only for rules that read them (`rules_read_entropy`);
- the device path reads decisions back from `earliest_exit_layer` on, and its row columns are the array form's
  state and parameter fields (`service/engine/classify/device/row_columns.py`);
- online control bounds a threshold by `threshold_ceiling`.

Adding a policy is one entry here plus its score rule (a test adds one: tests/unit/test_adding_a_policy.py);
tests/unit/test_policy_table.py fails when an `ExitPolicy` subclass is not covered by every derived piece.

Parameters (`policy_parameters.py`) travel as JSON, where +inf ("never exit early") is written as the string "inf".
Torch-free, like the per-sample reference it builds (DESIGN 4).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

from beem.policies.earliest_exit import (
    beem_earliest_exit,
    bounded_score_earliest_exit,
    counted_layers_earliest_exit,
)
from beem.policies.exit_gate import ExitGatePolicy
from beem.policies.exit_policies import (
    RESET_MODES,
    BeemPolicy,
    EntropyPolicy,
    ExitPolicy,
    FullDepthPolicy,
    MaxProbPolicy,
    PatiencePolicy,
    StaticPolicy,
    beem_a_weights,
    beem_c_weights,
)
from beem.policies.policy_parameters import (
    PolicyParameter,
    PolicyParameterError,
    json_number,
    parameter_value,
)


class ArrayRule(IntEnum):
    """Which score the array form computes for a row (`array_policies.fold`); rows of any rule share a call. A
    rule is its code, an int: these are the built-in ones (a test-only policy brings its own code)."""

    BEEM = 0  # S_i: weighted confidence while neighbouring exits agree (DESIGN 3.1)
    MAX_PROB = 1  # C_i
    ENTROPY = 2  # -H_i
    PATIENCE = 3  # agreeing exits in a row
    DEPTH = 4  # the layer number: static and full depth
    GATE = 5  # the exit gate's log-odds of agreeing with the final layer (exit_gate.py)


@dataclass(frozen=True)
class CalibrationStart:
    """What calibration knows before it searches thresholds."""

    num_layers: int
    exit_accuracies: tuple[float, ...]  # per exit, on the calibration split
    count_first_exit: bool = True
    reset: str = "restart"
    vote_above_chance: bool = False
    num_labels: int = 0  # the model's labels (the vote above chance needs them); 0: not known


# `RowStates` fields beyond `layers_seen`, which every row keeps
StateField = Literal["score", "previous_label", "agreeing_run", "beem_a_score", "beem_c_score"]
ObservedField = Literal["label", "confidence", "entropy", "margin"]  # of each exit


def _no_row_parameters(policy: Any) -> Mapping[str, object]:
    return {}


@dataclass(frozen=True)
class PolicyDefinition:
    name: str
    summary: str
    policy_class: type[ExitPolicy]  # the per-sample reference (exit_policies.py); classes may serve several names
    rule: int  # the array rule's code (an `ArrayRule` for the built-in ones)
    parameters: tuple[PolicyParameter, ...]
    make: Callable[[Mapping[str, object]], ExitPolicy]  # from validated parameter values (and NUM_LABELS)
    starting_point: Callable[[CalibrationStart], ExitPolicy]  # the uncalibrated policy (threshold a placeholder)
    earliest_exit: Callable[[Any, int], int]  # (policy, last layer) -> the first 1-based layer a row could leave
    # at (earliest_exit.py)
    keeps: frozenset[StateField] = frozenset()  # the state its rule folds, beyond the depth
    reads: frozenset[ObservedField] = frozenset()  # what its rule reads of each exit
    threshold_ceiling: Callable[[Any], float] | None = None  # the threshold past which nothing leaves early, for
    # online control; None: its threshold is not controlled (only positive scores have meaningful shares)
    row_parameters: Callable[[Any], Mapping[str, object]] = _no_row_parameters  # `RowPolicies` fields beyond rule,
    # threshold and last layer, from the policy (the rest keep `array_policies.NEUTRAL_ROW_PARAMETERS`)
    searched: bool = True  # calibration searches its threshold (full depth has none)
    trained: bool = False  # calibration fits its parameters on one part of the calibration split and certifies
    # its threshold on the other (beem/calibration/exit_gate_calibration.py); `starting_point` is not used

    @property
    def request_parameters(self) -> tuple[PolicyParameter, ...]:
        return tuple(p for p in self.parameters if p.per_request)


NUM_LABELS = "num_labels"  # beside the parameters `make` gets: the model's, not a user's


def _alpha(description: str) -> PolicyParameter:
    return PolicyParameter("alpha", "number", description, low=0.0, per_request=True)


BEEM_OPTIONS = (
    PolicyParameter("weights", "weights", "w_1..w_L, one non-negative weight per exit (calibrated)"),
    PolicyParameter(
        "count_first_exit", "flag", "the first exit's w_1*C_1 counts (the paper); false: it adds 0", default=True
    ),
    PolicyParameter(
        "reset",
        "choice",
        "a disagreement restarts the score at w_i*C_i (restart) or at 0 (zero)",
        default="restart",
        choices=RESET_MODES,
    ),
    PolicyParameter(
        "vote_above_chance", "flag",
        "each exit votes its confidence above chance, (C - 1/K) / (1 - 1/K) for K labels, not C", default=False,
        per_request=True,
    ),
)  # fmt: skip


def _beem_entry(name: str, summary: str, weights: Callable[[CalibrationStart], tuple[float, ...]]) -> PolicyDefinition:
    return PolicyDefinition(
        name, summary, BeemPolicy, ArrayRule.BEEM, (_alpha("exit once the BEEM score reaches alpha"), *BEEM_OPTIONS),
        _beem(name), _beem_start(name, weights), beem_earliest_exit,
        keeps=frozenset({"score", "previous_label"}), reads=frozenset({"label", "confidence"}),
        threshold_ceiling=lambda policy: sum(policy.weights),  # S never passes the sum of the weights
        row_parameters=_beem_row_parameters,
    )  # fmt: skip


def _beem(name: str) -> Callable[[Mapping[str, object]], ExitPolicy]:
    def make(values: Mapping[str, object]) -> ExitPolicy:
        weights = values["weights"]
        assert isinstance(weights, tuple)
        vote = bool(values["vote_above_chance"])
        num_labels = int(values[NUM_LABELS])  # type: ignore[call-overload]
        if vote and num_labels < 2:
            raise PolicyParameterError("'vote_above_chance' needs a model with at least two labels")
        return BeemPolicy(name, weights, float(values["alpha"]),  # type: ignore[arg-type]
                          bool(values["count_first_exit"]), str(values["reset"]), vote,
                          num_labels if vote else 0)  # fmt: skip

    return make


def _beem_row_parameters(policy: BeemPolicy) -> Mapping[str, object]:
    return {"weights": policy.weights, "count_first_exit": policy.count_first_exit,
            "restart_on_disagree": policy.reset == "restart", "chance": policy.chance}  # fmt: skip


def _beem_start(name: str, weights: Callable[[CalibrationStart], tuple[float, ...]]) -> Callable[..., ExitPolicy]:
    return lambda start: BeemPolicy(
        name,
        weights(start),
        math.inf,
        start.count_first_exit,
        start.reset,
        start.vote_above_chance,
        start.num_labels if start.vote_above_chance else 0,
    )


POLICY_TABLE: dict[str, PolicyDefinition] = {
    definition.name: definition
    for definition in (
        _beem_entry("beem-a", "BEEM with accuracy weights: w_i = exit i's calibration accuracy",
                    lambda s: beem_a_weights(s.exit_accuracies)),
        _beem_entry("beem-c", "BEEM with cost weights: w_i = i / L", lambda s: beem_c_weights(s.num_layers)),
        PolicyDefinition(
            "max-prob", "exit once the exit's max probability reaches the threshold (DeeBERT-style)",
            MaxProbPolicy, ArrayRule.MAX_PROB,
            (PolicyParameter("threshold", "number", "minimum max probability", low=0.0, high=1.0, never=math.inf,
                             per_request=True),),
            lambda v: MaxProbPolicy(float(v["threshold"])), lambda s: MaxProbPolicy(math.inf),  # type: ignore[arg-type]
            bounded_score_earliest_exit(1.0), reads=frozenset({"confidence"}), threshold_ceiling=lambda _: 1.0,
        ),
        PolicyDefinition(
            "entropy", "exit once the exit's entropy falls to the threshold or below (DeeBERT)",
            EntropyPolicy, ArrayRule.ENTROPY,
            (PolicyParameter("threshold", "number", "maximum entropy, nats", low=0.0, never=-math.inf,
                             per_request=True),),
            lambda v: EntropyPolicy(float(v["threshold"])), lambda s: EntropyPolicy(-math.inf),  # type: ignore[arg-type]
            bounded_score_earliest_exit(0.0), reads=frozenset({"entropy"}),  # -H never passes 0
        ),
        PolicyDefinition(
            "patience", "exit after `patience` agreeing exits in a row (PABEE)", PatiencePolicy, ArrayRule.PATIENCE,
            (PolicyParameter("patience", "whole", "agreeing exits in a row", low=0, high=1024, never=math.inf,
                             per_request=True),),
            lambda v: PatiencePolicy(float(v["patience"])), lambda s: PatiencePolicy(math.inf),  # type: ignore[arg-type]
            counted_layers_earliest_exit(offset=1), keeps=frozenset({"score", "previous_label", "agreeing_run"}),
            reads=frozenset({"label"}),
        ),
        PolicyDefinition(
            "static", "every sample exits at the same layer", StaticPolicy, ArrayRule.DEPTH,
            (PolicyParameter("layer", "whole", "the layer every sample exits at", low=1, at_most_num_layers=True,
                             per_request=True),),
            lambda v: StaticPolicy(float(v["layer"])), lambda s: StaticPolicy(s.num_layers),  # type: ignore[arg-type]
            counted_layers_earliest_exit(offset=0),
        ),
        PolicyDefinition(
            "gate", "exit once a learned gate's log-odds that this exit agrees with the final layer reach the "
            "threshold", ExitGatePolicy, ArrayRule.GATE,
            (PolicyParameter("threshold", "number", "minimum log-odds of agreeing with the final layer (0: even; "
                             "2.2: 90%; 4.6: 99%)", never=math.inf, per_request=True),
             PolicyParameter("gate", "gate", "the trained gate: its features, weights and their sha256")),
            lambda v: ExitGatePolicy(v["gate"], float(v["threshold"])),  # type: ignore[arg-type]
            lambda s: _untrained(), lambda policy, last_layer: 1 if policy.threshold < math.inf else last_layer,
            keeps=frozenset({"score", "previous_label", "agreeing_run", "beem_a_score", "beem_c_score"}),
            reads=frozenset({"label", "confidence", "entropy", "margin"}),
            row_parameters=lambda policy: {"weights": policy.gate.beem_a_weights, "gate": policy.gate.vector()},
            trained=True,
        ),
        PolicyDefinition(
            "full", "every sample runs every layer: the baseline", FullDepthPolicy, ArrayRule.DEPTH, (),
            lambda v: FullDepthPolicy(), lambda s: FullDepthPolicy(), counted_layers_earliest_exit(offset=0),
            searched=False,
        ),
    )
}  # fmt: skip
POLICY_NAMES = tuple(POLICY_TABLE)  # the built-in ones
DEFINITION_OF_CLASS: dict[type[ExitPolicy], PolicyDefinition] = {}  # what a policy object's class knows: its rule,
# state, bound and ceiling (names that share a class share these; `_derive` checks)
RULE_OF_CLASS: dict[type[ExitPolicy], int] = {}
KEEPS_OF_RULE: dict[int, frozenset[StateField]] = {}
READS_OF_RULE: dict[int, frozenset[ObservedField]] = {}


def _derive() -> None:
    """Fill the derived maps from the table, in place (their importers hold these very dicts)."""
    for derived in (DEFINITION_OF_CLASS, RULE_OF_CLASS, KEEPS_OF_RULE, READS_OF_RULE):
        derived.clear()
    for definition in POLICY_TABLE.values():
        known = DEFINITION_OF_CLASS.setdefault(definition.policy_class, definition)
        same = (known.rule, known.keeps, known.reads, known.earliest_exit, known.row_parameters)
        if same != (definition.rule, definition.keeps, definition.reads, definition.earliest_exit,
                    definition.row_parameters):  # fmt: skip
            raise ValueError(f"{definition.name!r} and {known.name!r} share a class but not its rule, state or bound")
        rule_keeps = KEEPS_OF_RULE.setdefault(definition.rule, definition.keeps)
        rule_reads = READS_OF_RULE.setdefault(definition.rule, definition.reads)
        if (rule_keeps, rule_reads) != (definition.keeps, definition.reads):
            raise ValueError(f"{definition.name!r} shares rule {definition.rule} but not its state or observations")
        RULE_OF_CLASS[definition.policy_class] = definition.rule


_derive()


@contextmanager
def policy_added(definition: PolicyDefinition) -> Iterator[None]:
    """The table with one more entry while the block runs (how a test adds a policy of its own)."""
    if definition.name in POLICY_TABLE:
        raise ValueError(f"policy {definition.name!r} is already in the table")
    POLICY_TABLE[definition.name] = definition
    try:
        _derive()
        yield
    finally:
        del POLICY_TABLE[definition.name]
        _derive()


def definition_of_policy(policy: ExitPolicy) -> PolicyDefinition:
    """The entry of a policy object's class; a class the table does not know is an error, never a guess."""
    definition = DEFINITION_OF_CLASS.get(type(policy))
    if definition is None:
        raise KeyError(f"{type(policy).__name__} is not in the policy table")
    return definition


def earliest_exit_layer(policy: ExitPolicy, last_layer: int) -> int:
    """1-based: no row of `policy` allowed `last_layer` layers leaves before this layer (earliest_exit.py)."""
    return definition_of_policy(policy).earliest_exit(policy, last_layer)


def threshold_ceiling(policy: ExitPolicy) -> float | None:
    """The threshold past which `policy` never lets a row leave early, or None when its threshold is not one
    online control moves."""
    ceiling = definition_of_policy(policy).threshold_ceiling
    return None if ceiling is None else ceiling(policy)


def rules_keeping(field: StateField, rules: frozenset[int]) -> bool:
    """Whether any of `rules` folds this state field (the fold skips it otherwise)."""
    return any(field in KEEPS_OF_RULE[rule] for rule in rules)


def rules_read_entropy(rules: frozenset[int]) -> bool:
    """Whether any of `rules` reads the exits' entropy (computing it costs a reduction per exit)."""
    return any("entropy" in READS_OF_RULE[rule] for rule in rules)


def rules_read_margin(rules: frozenset[int]) -> bool:
    """Whether any of `rules` reads the exits' margin (a top-2 per exit)."""
    return any("margin" in READS_OF_RULE[rule] for rule in rules)


def _untrained() -> ExitPolicy:
    raise TypeError("the exit gate has no starting point: calibration trains it (exit_gate_calibration.py)")


def definition_of(name: str) -> PolicyDefinition:
    definition = POLICY_TABLE.get(name)
    if definition is None:
        raise PolicyParameterError(f"unknown policy {name!r}; expected one of {', '.join(POLICY_TABLE)}")
    return definition


def build_policy(name: str, params: Mapping[str, object], num_layers: int, num_labels: int = 0) -> ExitPolicy:
    """A policy from its name and parameters (a manifest's, or a request's merged over them), validated against
    the table, for a model of `num_layers` exits and `num_labels` labels (0: not known, as for a captioner);
    raises PolicyParameterError with a readable message."""
    definition = definition_of(name)
    known = {parameter.name for parameter in definition.parameters}
    unknown = sorted(set(params) - known)
    if unknown:
        raise PolicyParameterError(f"parameter {unknown[0]!r} does not apply to policy {name!r}")
    values: dict[str, object] = {}
    for parameter in definition.parameters:
        raw = params.get(parameter.name, parameter.default)
        if raw is None:
            raise PolicyParameterError(f"parameter {parameter.name!r} is required")
        values[parameter.name] = parameter_value(parameter, raw, num_layers)
    values[NUM_LABELS] = num_labels
    return definition.make(values)


def policy_params_json(policy: ExitPolicy) -> dict[str, object]:
    return {key: json_number(value) if isinstance(value, float) else value for key, value in policy.params().items()}
