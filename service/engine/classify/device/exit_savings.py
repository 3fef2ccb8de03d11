"""Whether early exit pays for a group on the GPU path, from the exits seen so far and the measured step costs
(DESIGN 6: never slower than full depth).

On a GPU a step over a small group costs about the same at 8 rows as at 32 (launch-bound), so rows that leave
save little until the whole group has left, while every exit head and decision costs a step's worth of kernels.
For each new group the engine compares the expected cost of its steps with exits against full depth's:

    with exits: sum over layers l of  P(some row still in flight at l) x cost(kind_l, bucket(rows in flight), T)
    full depth: (L - 1) x cost(layer only, R, T) + cost(with exit, R, T)

where a row of policy p is still in flight at layer l with the probability that p's rows have left after l
(each policy's exit-layer histogram, counted from the rows answered so far), and cost() is a replay's measured
time per bucket shape (`measure_step_costs`, at warm-up). When full depth is cheaper the group's rows become
depth-only rows that leave at their last layer (their exit heads skipped) and `beem_exit_heads_skipped_rows_total`
counts them. Until a policy has `min_rows` answered rows, and for shapes without a measured cost, exits are
assumed to pay.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from beem.policies.exit_policies import ExitPolicy

StepCosts = dict[tuple[str, int, int], float]  # (kind, rows, tokens) -> seconds per step
MAX_POLICIES = 1024  # distinct policies whose histograms are kept (requests may set their own parameters)


class ExitSavings:
    def __init__(self, num_layers: int, min_rows: int = 64) -> None:
        self.num_layers = num_layers
        self.min_rows = min_rows
        self.costs: StepCosts = {}
        self._exit_layers: dict[ExitPolicy, Counter[int]] = {}

    def record(self, policy: ExitPolicy, exit_layer: int) -> None:
        """A row of `policy` left at `exit_layer` (1-based)."""
        histogram = self._exit_layers.get(policy)
        if histogram is None:
            if len(self._exit_layers) >= MAX_POLICIES:
                self._exit_layers.clear()
            histogram = self._exit_layers[policy] = Counter()
        histogram[exit_layer] += 1

    def in_flight_after(self, policy: ExitPolicy) -> list[float] | None:
        """P(a row of `policy` is still in flight after layer l), l = 0..L; None until enough rows were seen."""
        histogram = self._exit_layers.get(policy)
        total = sum(histogram.values()) if histogram else 0
        if histogram is None or total < self.min_rows:
            return None
        left = 0
        survival = [1.0]
        for layer in range(1, self.num_layers + 1):
            left += histogram.get(layer, 0)
            survival.append(1.0 - left / total)
        return survival

    def exits_pay(
        self, policies: Sequence[ExitPolicy], rows: int, tokens: int, row_bucket: Callable[[int], int | None]
    ) -> bool:
        """Whether a new group of these rows' `policies`, at bucket shape (rows, tokens), is expected to finish
        sooner with its exits than at full depth. Every row reads its exits (the engine asks only then)."""
        layer_cost = self.costs.get(("layer_only", rows, tokens))
        exit_cost = self.costs.get(("with_exit", rows, tokens))
        if layer_cost is None or exit_cost is None:
            return True
        survivals = []
        for policy, count in Counter(policies).items():
            survival = self.in_flight_after(policy)
            if survival is None:
                return True
            survivals.append((survival, count))
        with_exits = 0.0
        for layer in range(1, self.num_layers + 1):
            none_left = 1.0
            expected_rows = 0.0
            for survival, count in survivals:
                none_left *= (1.0 - survival[layer - 1]) ** count
                expected_rows += survival[layer - 1] * count
            runs = 1.0 - none_left  # P(the group still has a row at this layer)
            if runs <= 0.0:
                break
            bucket = row_bucket(max(1, round(expected_rows / runs))) or rows
            with_exits += runs * self.costs.get(("with_exit", bucket, tokens), exit_cost)
        full_depth = (self.num_layers - 1) * layer_cost + exit_cost
        return with_exits <= full_depth
