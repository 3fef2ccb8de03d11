"""Exit decisions in array form (DESIGN 5.1): one call decides a whole group of rows, on CPU or CUDA.

Each row carries its own state (`RowStates`) and parameters (`RowPolicies`), so rows of different policies and
thresholds share one call: every rule's score is computed for every row and each row keeps the one its
`ArrayRule` names. A call is a fixed handful of tensor ops whatever the number of rows, with no Python per row.

The per-sample `ExitPolicy.step` (exit_policies.py) stays the readable definition; a property test holds this form
equal to it decision for decision (tests/unit/test_array_policies.py). Scores, thresholds and weights are float64,
like the reference's Python floats, so the two agree bit for bit; the exit heads' confidences are computed in
float32 (as the calibration cache stores them) and widened, so serving decides on the numbers calibration saw.

Calibration's threshold scan runs the same `fold` over the cached exits and the same `reaches_exit` per candidate
threshold (beem/calibration/threshold_search.py).

Each rule's score is one function of a `FoldStep` in `SCORE_RULES`, keyed by the rule code of the policy table
(`policy_table.py`): the table says which state each rule keeps and what it reads of an exit, so the fold computes
the shared pieces (agreement, the agreeing run, entropies) only when a rule present needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Self

import torch

from beem.policies.exit_gate import GATE_VECTOR_SIZE, HIDDEN_UNITS, NUM_FEATURES
from beem.policies.exit_policies import ExitPolicy
from beem.policies.policy_table import DEFINITION_OF_CLASS, ArrayRule, rules_keeping

NO_LABEL = -1  # previous_label of a row that has seen no exit yet
# The per-row parameters of a policy whose rule does not read them (and zero weights).
NEUTRAL_ROW_PARAMETERS: dict[str, object] = {"count_first_exit": True, "restart_on_disagree": True, "chance": 0.0}
NO_GATE = (0.0,) * GATE_VECTOR_SIZE


@dataclass(frozen=True)
class _Rows:
    """Row-aligned tensors (first dimension = row): select, concatenate, move as one."""

    def take(self, rows: torch.Tensor) -> Self:
        """Keep `rows`: a 1-D index tensor or a (R,) bool mask."""
        return replace(self, **{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def cat(self, *others: Self) -> Self:
        """These rows, then the rows of each of `others` (one concatenation per field)."""
        if not others:
            return self
        parts = (self, *others)
        return replace(self, **{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(self)})

    def to(self, device: torch.device, non_blocking: bool = False) -> Self:
        return replace(self, **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                                for f in fields(self)})  # fmt: skip

    @property
    def num_rows(self) -> int:
        return int(getattr(self, fields(self)[0].name).shape[0])


@dataclass(frozen=True)
class ExitObservations(_Rows):
    """What one exit head said about each row."""

    labels: torch.Tensor  # (R,) int64, argmax
    confidences: torch.Tensor  # (R,) float64, max probability
    entropies: torch.Tensor | None  # (R,) float64, nats; None when no row's rule reads it
    margins: torch.Tensor | None = None  # (R,) float64, max probability minus the runner-up's; None likewise

    @classmethod
    def from_logits(
        cls, logits: torch.Tensor, with_entropy: bool = True, with_margin: bool = False
    ) -> ExitObservations:
        """(R, C) logits of any dtype -> observations computed in float32, widened to float64 (the entropy and
        the margin only when asked: the engine skips them for groups with no row whose rule reads them)."""
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        probs = log_probs.exp()
        confidences, labels = probs.max(dim=-1)
        entropies = -(probs * log_probs).sum(dim=-1).double() if with_entropy else None
        margins = _margins(probs).double() if with_margin else None
        return cls(labels, confidences.double(), entropies, margins)


def _margins(probs: torch.Tensor) -> torch.Tensor:
    """(..., C) probabilities -> (...) top-1 minus top-2 (the top-1 itself for a single label)."""
    if probs.shape[-1] < 2:
        return probs[..., 0]
    top = probs.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def exit_margins(logits: torch.Tensor) -> torch.Tensor:
    """(..., C) logits -> (...) float32 margins: the exit cache's (`ExitObservations.from_logits`, op for op)."""
    return _margins(torch.log_softmax(logits.float(), dim=-1).exp())


def summarize_exits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., C) logits -> labels, max probabilities and entropies, each (...), in float32: the exit cache's
    numbers (`ExitObservations.from_logits` computes the same, op for op, for serving)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    probs = log_probs.exp()
    confidences, labels = probs.max(dim=-1)
    entropies = -(probs * log_probs).sum(dim=-1)
    return labels, confidences, entropies


@dataclass(frozen=True)
class RowPolicies(_Rows):
    """Per-row exit parameters, from each row's reference policy and depth limit."""

    rule: torch.Tensor  # (R,) int64 ArrayRule
    threshold: torch.Tensor  # (R,) float64: exit once the score reaches it
    weights: torch.Tensor  # (R, L) float64: BEEM's w_1..w_L (zeros for other rules)
    count_first_exit: torch.Tensor  # (R,) bool: BEEM's first exit adds w_1*C_1 (else 0)
    restart_on_disagree: torch.Tensor  # (R,) bool: BEEM's disagreement restarts at w_i*C_i (else 0)
    chance: torch.Tensor  # (R,) float64: BEEM's vote counts (C - chance) / (1 - chance); 0 for the plain C
    gate: torch.Tensor  # (R, G) float64: the exit gate's vector (`exit_gate.GateWeights.vector`), zeros for others
    last_layer: torch.Tensor  # (R,) int64: the deepest layer the row may run, 1-based

    @classmethod
    def of(
        cls, policies: Sequence[ExitPolicy], last_layers: Sequence[int], num_layers: int, device: torch.device | str
    ) -> RowPolicies:
        """One row per policy (the same policy object may repeat). Python work per row, once, at admission: each
        policy's table entry gives its rule and its own parameters (BEEM's weights and switches)."""
        definitions = [DEFINITION_OF_CLASS[type(p)] for p in policies]
        own = [definition.row_parameters(p) for definition, p in zip(definitions, policies, strict=True)]
        no_weights = (0.0,) * num_layers

        def column(name: str, neutral: object) -> list[object]:
            return [parameters.get(name, neutral) for parameters in own]

        gates = column("gate", NO_GATE)  # most groups have no gate row: zeros, not a tensor from 160 floats a row

        return cls(
            rule=torch.tensor([d.rule for d in definitions], dtype=torch.int64, device=device),
            threshold=torch.tensor([p.threshold for p in policies], dtype=torch.float64, device=device),
            weights=torch.tensor(column("weights", no_weights), dtype=torch.float64, device=device)
            .reshape(len(policies), num_layers),
            count_first_exit=torch.tensor(column("count_first_exit", NEUTRAL_ROW_PARAMETERS["count_first_exit"]),
                                          dtype=torch.bool, device=device),
            restart_on_disagree=torch.tensor(
                column("restart_on_disagree", NEUTRAL_ROW_PARAMETERS["restart_on_disagree"]), dtype=torch.bool,
                device=device),
            chance=torch.tensor(column("chance", NEUTRAL_ROW_PARAMETERS["chance"]), dtype=torch.float64,
                                device=device),
            gate=torch.tensor(gates, dtype=torch.float64, device=device).reshape(len(policies), GATE_VECTOR_SIZE)
            if any(g is not NO_GATE for g in gates) else torch.zeros((len(policies), GATE_VECTOR_SIZE),
                                                                     dtype=torch.float64, device=device),
            last_layer=torch.tensor(list(last_layers), dtype=torch.int64, device=device),
        )  # fmt: skip

    @classmethod
    def repeated(
        cls, policy: ExitPolicy, count: int, num_layers: int, device: torch.device | str = "cpu"
    ) -> RowPolicies:
        """`count` rows of one policy, each allowed every layer (calibration's view of a cached split)."""
        one = cls.of([policy], [num_layers], num_layers, device)
        return replace(one, **{f.name: getattr(one, f.name).expand(count, *getattr(one, f.name).shape[1:])
                               for f in fields(one)})  # fmt: skip


@dataclass(frozen=True)
class RowStates(_Rows):
    """Per-row policy state between layers (the reference's `PolicyState`, plus the agreeing run)."""

    score: torch.Tensor  # (R,) float64: the score after the last exit seen
    previous_label: torch.Tensor  # (R,) int64: the last exit's label, NO_LABEL before the first
    agreeing_run: torch.Tensor  # (R,) int64: consecutive exits that agreed with their predecessor
    layers_seen: torch.Tensor  # (R,) int64: exits folded in so far
    beem_a_score: torch.Tensor  # (R,) float64: the exit gate's BEEM score under BEEM-A's weights (others: 0)
    beem_c_score: torch.Tensor  # (R,) float64: the same under BEEM-C's

    @classmethod
    def fresh(cls, count: int, device: torch.device | str = "cpu") -> RowStates:
        zeros = torch.zeros(count, dtype=torch.int64, device=device)
        no_score = torch.zeros(count, dtype=torch.float64, device=device)
        return cls(no_score, zeros - 1, zeros, zeros, no_score, no_score)

    @classmethod
    def after_skipped_heads(cls, count: int, layers_seen: int, device: torch.device | str = "cpu") -> RowStates:
        """Depth-only rows (static, full) after `layers_seen` layers whose exit heads were skipped because no row
        could use them (the reference after as many `BLIND_OBSERVATION`s): the depth as score, no label. The
        engine builds this only when such rows meet a step that reads an exit, instead of a step per layer."""
        depth = torch.full((count,), layers_seen, dtype=torch.int64, device=device)
        no_score = torch.zeros(count, dtype=torch.float64, device=device)
        return cls(depth.double(), torch.full_like(depth, NO_LABEL), torch.zeros_like(depth), depth, no_score, no_score)


@dataclass(frozen=True)
class FoldStep:
    """What a rule's score may read after the next exit: the rows' states before it, the exit's observations, the
    rows' parameters, and the pieces the fold computed once for every rule present."""

    states: RowStates
    observed: ExitObservations
    policies: RowPolicies
    layers_seen: torch.Tensor  # (R,) int64: exits folded in, this one included
    agree: torch.Tensor | None  # (R,) bool: this exit's label is the previous one's; None when no rule keeps
    # `previous_label`
    agreeing_run: torch.Tensor  # (R,) int64: agreeing exits in a row, this one included (kept only when a rule
    # keeps it; the states' run otherwise)
    beem_a_score: torch.Tensor  # (R,) float64: the exit gate's running scores after this exit (kept likewise)
    beem_c_score: torch.Tensor


def _beem_score(step: FoldStep) -> torch.Tensor:
    """DESIGN 3.1: accumulate w_i * C_i while neighbours agree; a first exit or a disagreement starts again."""
    states, policies = step.states, step.policies
    assert step.agree is not None
    first = states.previous_label == NO_LABEL
    weight = policies.weights.gather(1, states.layers_seen.unsqueeze(1)).squeeze(1)  # (R,) w_i, this exit
    vote = (step.observed.confidences - policies.chance) / (1.0 - policies.chance)  # C itself where chance is 0
    contribution = weight * vote
    keeps_contribution = torch.where(first, policies.count_first_exit, policies.restart_on_disagree)
    return torch.where(step.agree, states.score + contribution, torch.where(keeps_contribution, contribution, 0.0))


def gate_features(
    observed: ExitObservations,
    beem_a_score: torch.Tensor,
    beem_c_score: torch.Tensor,
    agreeing_run: torch.Tensor,
    layers_seen: torch.Tensor,
    num_layers: torch.Tensor,
) -> torch.Tensor:
    """(R, F) the exit gate's features after an exit, in `exit_gate.GATE_FEATURES` order (serving and the gate's
    training read them from here). `num_layers` (R,) is 0 for rows that are not the gate's: kept finite."""
    assert observed.entropies is not None and observed.margins is not None, "gate rows need entropy and margin"
    depth = layers_seen.double() / num_layers.clamp_min(1.0)  # i / L
    return torch.stack((observed.confidences, observed.margins, observed.entropies, beem_a_score, beem_c_score,
                        agreeing_run.double(), depth), dim=1)  # fmt: skip


def _gate_score(step: FoldStep) -> torch.Tensor:
    """The exit gate's log-odds (`exit_gate.GateWeights.log_odds` for every row): the features (R, F) through a
    hidden layer of per-row weights (R, H, F) whose standardization is folded in (`GateWeights.vector`), then one
    output. Few ops on purpose: at batch 1 each costs microseconds of dispatch, more than its arithmetic."""
    gate = step.policies.gate  # (R, G)
    features = gate_features(step.observed, step.beem_a_score, step.beem_c_score, step.agreeing_run,
                             step.layers_seen, gate[:, 0])  # fmt: skip
    f, h = NUM_FEATURES, HIDDEN_UNITS
    hidden_weights = gate[:, 1 : 1 + h * f].reshape(-1, h, f)  # (R, H, F)
    hidden_bias = gate[:, 1 + h * f : 1 + h * f + h].unsqueeze(2)  # (R, H, 1)
    output_weights = gate[:, 1 + h * f + h : 1 + h * f + 2 * h].unsqueeze(1)  # (R, 1, H)
    hidden = torch.baddbmm(hidden_bias, hidden_weights, features.unsqueeze(2)).relu()  # (R, H, 1)
    return torch.bmm(output_weights, hidden).reshape(-1) + gate[:, -1]


def _entropy_score(step: FoldStep) -> torch.Tensor:
    assert step.observed.entropies is not None, "entropy rows need observations with the entropy"
    return -step.observed.entropies


ScoreRule = Callable[[FoldStep], torch.Tensor]  # a rule's (R,) float64 score after the step's exit
SCORE_RULES: dict[int, ScoreRule] = {
    ArrayRule.BEEM: _beem_score,
    ArrayRule.MAX_PROB: lambda step: step.observed.confidences,
    ArrayRule.ENTROPY: _entropy_score,
    ArrayRule.PATIENCE: lambda step: step.agreeing_run.double(),
    ArrayRule.DEPTH: lambda step: step.layers_seen.double(),
    ArrayRule.GATE: _gate_score,
}


def every_rule() -> frozenset[int]:
    return frozenset(SCORE_RULES)


def fold(
    states: RowStates, observed: ExitObservations, policies: RowPolicies, rules: frozenset[int] | None = None
) -> RowStates:
    """Fold the next exit's observation into every row's score (`ExitPolicy.update`, all rules at once).

    `rules` may name the only rules among these rows (the engine knows them per group; None: every rule): the
    other rules' scores are then not computed, and a group of one rule skips the selection. `agreeing_run` is kept
    up to date only when a rule present keeps it."""
    rules = every_rule() if rules is None else rules
    layers_seen = states.layers_seen + 1
    agree = None
    run, beem_a, beem_c = states.agreeing_run, states.beem_a_score, states.beem_c_score
    if rules_keeping("previous_label", rules):
        agree = observed.labels == states.previous_label  # never true on a first exit: labels are >= 0
        if rules_keeping("agreeing_run", rules):
            run = torch.where(agree, states.agreeing_run + 1, 0)
        if rules_keeping("beem_a_score", rules):  # the gate's: plain confidence, restart, the first exit counts
            confidences = observed.confidences
            a_part = policies.weights.gather(1, states.layers_seen.unsqueeze(1)).squeeze(1) * confidences
            c_part = (layers_seen.double() / policies.gate[:, 0].clamp_min(1.0)) * confidences  # w_i = i / L (L
            # is 0 for rows that are not the gate's: any finite value does)
            beem_a = torch.where(agree, states.beem_a_score + a_part, a_part)
            beem_c = torch.where(agree, states.beem_c_score + c_part, c_part)
    step = FoldStep(states, observed, policies, layers_seen, agree, run, beem_a, beem_c)
    candidates = {rule: SCORE_RULES[rule](step) for rule in sorted(rules)}
    if len(candidates) == 1:
        (score,) = candidates.values()
    else:  # one column per rule code (an absent rule's column is never selected)
        filler = next(iter(candidates.values()))
        table = torch.stack([candidates.get(rule, filler) for rule in range(max(SCORE_RULES) + 1)], dim=1)  # (R, K)
        score = table.gather(1, policies.rule.unsqueeze(1)).squeeze(1)
    return RowStates(score, observed.labels, run, layers_seen, beem_a, beem_c)


def reaches_exit(
    score: torch.Tensor, layers_seen: torch.Tensor, threshold: torch.Tensor | float, last_layer: torch.Tensor | int
) -> torch.Tensor:
    """A row leaves once its score reaches its threshold, or at the last layer it may run (any broadcastable
    shapes: the engine's (R,), calibration's (N, L) against one candidate threshold)."""
    return (score >= threshold) | (layers_seen >= last_layer)


def decide(
    states: RowStates, observed: ExitObservations, policies: RowPolicies, rules: frozenset[int] | None = None
) -> tuple[RowStates, torch.Tensor]:
    """`ExitPolicy.step` for a whole group: the new states and a (R,) bool, True for rows that exit now."""
    folded = fold(states, observed, policies, rules)
    return folded, reaches_exit(folded.score, folded.layers_seen, policies.threshold, policies.last_layer)
