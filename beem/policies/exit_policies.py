"""Exit policies: pure per-sample decisions with explicit state. No torch, no numpy, nothing on the model.

Every policy has the same shape: after each exit head it folds the exit's observation into a running `score` and
the sample leaves once `score >= threshold` (or at the last layer it may run). This is the readable reference:
calibration's threshold scan and serving run the array form (`array_policies.py`, a whole group of rows per call),
and a hypothesis test holds the two equal decision for decision, so a threshold chosen offline means the same
online.

| policy    | score after exit i                                   | threshold            |
|-----------|------------------------------------------------------|----------------------|
| beem-*    | S_i (DESIGN 3.1: weighted confidence while agreeing) | alpha                |
| max-prob  | C_i (max probability)                                | tau                  |
| entropy   | -H_i (so lower entropy scores higher)                | -max_entropy         |
| patience  | agreeing neighbours in a row (PABEE's counter)       | patience             |
| static    | i                                                    | layer                |
| full      | i                                                    | +inf (never early)   |
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace

RESET_MODES = ("restart", "zero")


@dataclass(frozen=True)
class ExitObservation:
    """What one exit head said about one sample."""

    label: int
    confidence: float  # max probability, in [0, 1]
    entropy: float  # entropy of the exit's distribution, nats
    margin: float = 0.0  # max probability minus the runner-up's, in [0, 1] (read by the exit gate only)


# What a depth-only policy is shown when the exit head was skipped; it never reads it.
BLIND_OBSERVATION = ExitObservation(label=-1, confidence=0.0, entropy=0.0)


@dataclass(frozen=True)
class PolicyState:
    """Per-sample state between layers; a new sample starts from `PolicyState()`. Every policy keeps the first
    three; the rest is the exit gate's (exit_gate.py), which reads more of the history than its score."""

    layers_seen: int = 0
    previous_label: int | None = None
    score: float = 0.0
    agreeing_run: int = 0  # exits in a row that agreed with their predecessor
    beem_a_score: float = 0.0  # BEEM's running score under BEEM-A's weights (plain confidence, restart, first counts)
    beem_c_score: float = 0.0  # the same under BEEM-C's weights, i / L


@dataclass(frozen=True)
class Decision:
    state: PolicyState
    exit_now: bool


class ExitPolicy(ABC):
    name: str

    @property
    def reads_exits(self) -> bool:
        """False for policies that decide from depth alone: the engine may then skip the exit head at layers
        where the sample does not leave, and pass `BLIND_OBSERVATION` to `step`."""
        return True

    @property
    @abstractmethod
    def threshold(self) -> float:
        """Exit once the score reaches this value."""

    @abstractmethod
    def next_score(self, state: PolicyState, observation: ExitObservation) -> float:
        """The score after folding in the next exit's observation (exit number `state.layers_seen + 1`)."""

    @abstractmethod
    def with_threshold(self, threshold: float) -> ExitPolicy:
        """The same policy with another threshold: how calibration tries candidates."""

    @abstractmethod
    def params(self) -> dict[str, object]:
        """The parameters a user sets, in the user's units (what the manifest and the API show)."""

    def update(self, state: PolicyState, observation: ExitObservation) -> PolicyState:
        return PolicyState(state.layers_seen + 1, observation.label, self.next_score(state, observation))

    def step(self, state: PolicyState, observation: ExitObservation, last_layer: int) -> Decision:
        """Fold in one exit and decide; `last_layer` is the deepest layer this sample may run (1-based)."""
        new_state = self.update(state, observation)
        return Decision(new_state, new_state.score >= self.threshold or new_state.layers_seen >= last_layer)


@dataclass(frozen=True)
class BeemPolicy(ExitPolicy):
    """BEEM (DESIGN 3.1). `reset="restart"` restarts a disagreement at w_i*C_i (the paper), "zero" at 0 (its code).

    `vote_above_chance` counts each exit's confidence above chance, (C - 1/K) / (1 - 1/K) for K labels (DESIGN
    3.1's variant): a binary exit at C = 0.6 is barely a vote, while C = 0.6 of five labels is a strong one, and
    the plain C weighs both the same. `num_labels` is the model's K, kept only when the vote is on (0 otherwise)."""

    name: str
    weights: tuple[float, ...]  # w_1..w_L
    alpha: float
    count_first_exit: bool = True
    reset: str = "restart"
    vote_above_chance: bool = False
    num_labels: int = 0

    def __post_init__(self) -> None:
        if self.reset not in RESET_MODES:
            raise ValueError(f"reset must be one of {RESET_MODES}, got {self.reset!r}")
        if not self.weights or any(w < 0 for w in self.weights):
            raise ValueError("BEEM weights must be a non-empty list of non-negative numbers")
        if self.vote_above_chance and self.num_labels < 2:
            raise ValueError(f"the vote above chance needs the model's number of labels (>= 2), got {self.num_labels}")

    @property
    def chance(self) -> float:
        """The confidence that counts as no vote: 1/K with the vote above chance, else 0 (the plain confidence)."""
        return 1.0 / self.num_labels if self.vote_above_chance else 0.0

    def vote(self, confidence: float) -> float:
        """What an exit's confidence adds before its weight; the array form computes the same ops in float64."""
        chance = self.chance
        return (confidence - chance) / (1.0 - chance)

    @property
    def threshold(self) -> float:
        return self.alpha

    def next_score(self, state: PolicyState, observation: ExitObservation) -> float:
        contribution = self.weights[state.layers_seen] * self.vote(observation.confidence)
        if state.previous_label is None:
            return contribution if self.count_first_exit else 0.0
        if observation.label == state.previous_label:
            return state.score + contribution
        return contribution if self.reset == "restart" else 0.0

    def with_threshold(self, threshold: float) -> BeemPolicy:
        return replace(self, alpha=threshold)

    def params(self) -> dict[str, object]:
        return {
            "alpha": self.alpha,
            "weights": list(self.weights),
            "count_first_exit": self.count_first_exit,
            "reset": self.reset,
            "vote_above_chance": self.vote_above_chance,
        }


@dataclass(frozen=True)
class MaxProbPolicy(ExitPolicy):
    """DeeBERT-style confidence: exit when the exit's max probability reaches the threshold."""

    max_prob: float
    name: str = "max-prob"

    @property
    def threshold(self) -> float:
        return self.max_prob

    def next_score(self, state: PolicyState, observation: ExitObservation) -> float:
        return observation.confidence

    def with_threshold(self, threshold: float) -> MaxProbPolicy:
        return replace(self, max_prob=threshold)

    def params(self) -> dict[str, object]:
        return {"threshold": self.max_prob}


@dataclass(frozen=True)
class EntropyPolicy(ExitPolicy):
    """DeeBERT: exit when the exit's entropy falls to `max_entropy` or below."""

    max_entropy: float
    name: str = "entropy"

    @property
    def threshold(self) -> float:
        return -self.max_entropy

    def next_score(self, state: PolicyState, observation: ExitObservation) -> float:
        return -observation.entropy

    def with_threshold(self, threshold: float) -> EntropyPolicy:
        return replace(self, max_entropy=-threshold)

    def params(self) -> dict[str, object]:
        return {"threshold": self.max_entropy}


@dataclass(frozen=True)
class PatiencePolicy(ExitPolicy):
    """PABEE: the counter grows while consecutive exits agree and resets on disagreement; exit at `patience`."""

    patience: float
    name: str = "patience"

    @property
    def threshold(self) -> float:
        return self.patience

    def next_score(self, state: PolicyState, observation: ExitObservation) -> float:
        if state.previous_label is not None and observation.label == state.previous_label:
            return state.score + 1.0
        return 0.0

    def with_threshold(self, threshold: float) -> PatiencePolicy:
        return replace(self, patience=threshold)

    def params(self) -> dict[str, object]:
        return {"patience": self.patience if math.isinf(self.patience) else int(self.patience)}


@dataclass(frozen=True)
class StaticPolicy(ExitPolicy):
    """Every sample leaves at the same layer."""

    layer: float
    name: str = "static"

    @property
    def reads_exits(self) -> bool:
        return False

    @property
    def threshold(self) -> float:
        return self.layer

    def next_score(self, state: PolicyState, observation: ExitObservation) -> float:
        return float(state.layers_seen + 1)

    def with_threshold(self, threshold: float) -> StaticPolicy:
        return replace(self, layer=threshold)

    def params(self) -> dict[str, object]:
        return {"layer": self.layer if math.isinf(self.layer) else int(self.layer)}


@dataclass(frozen=True)
class FullDepthPolicy(StaticPolicy):
    """Every sample runs every layer: the baseline all speed-ups are measured against."""

    layer: float = math.inf
    name: str = "full"

    def params(self) -> dict[str, object]:
        return {}


def beem_c_weights(num_layers: int) -> tuple[float, ...]:
    """BEEM-C: weight proportional to the cost of reaching exit i; equal layer costs give i / L."""
    return tuple(i / num_layers for i in range(1, num_layers + 1))


def beem_a_weights(exit_accuracies: Sequence[float]) -> tuple[float, ...]:
    """BEEM-A: weight of exit i = its accuracy on the calibration split."""
    return tuple(float(a) for a in exit_accuracies)


def run_sample(policy: ExitPolicy, observations: Sequence[ExitObservation], last_layer: int | None = None) -> int:
    """Walk one sample's exits with `step`; returns its 1-based exit layer. The reference for tests."""
    limit = len(observations) if last_layer is None else min(last_layer, len(observations))
    state = PolicyState()
    for observation in observations[:limit]:
        decision = policy.step(state, observation, limit)
        state = decision.state
        if decision.exit_now:
            return state.layers_seen
    return limit
