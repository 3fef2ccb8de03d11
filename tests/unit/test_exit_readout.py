"""The engine's exit readout (plain Python for few labels) agrees with the torch summaries calibration uses."""

from __future__ import annotations

import pytest
import torch

from beem.calibration.exit_cache import exit_summaries
from beem.policies.exit_policies import BLIND_OBSERVATION, FullDepthPolicy, PolicyState, StaticPolicy
from service.engine.exit_readout import read_exits


@pytest.mark.parametrize("num_labels", [2, 5, 64, 300])
def test_readout_matches_torch_summaries(num_labels: int) -> None:
    torch.manual_seed(num_labels)
    logits = torch.randn(7, num_labels) * 4
    labels, confidences, entropies = exit_summaries(logits)
    readouts = read_exits(logits)
    assert [r.label for r in readouts] == labels.tolist()
    for readout, confidence, entropy, row in zip(readouts, confidences, entropies, logits, strict=True):
        assert readout.confidence == pytest.approx(confidence.item(), rel=1e-5)
        assert readout.entropy == pytest.approx(entropy.item(), rel=1e-4, abs=1e-6)
        assert sum(readout.probabilities) == pytest.approx(1.0)
        assert readout.logits == pytest.approx(row.tolist())


def test_depth_only_policies_decide_without_an_observation() -> None:
    """The engine skips exit heads for these; their decisions must not depend on what the head would say."""
    state = PolicyState()
    for layer in range(1, 4):
        decision = StaticPolicy(3).step(state, BLIND_OBSERVATION, last_layer=6)
        state = decision.state
        assert decision.exit_now is (layer == 3)
    assert not StaticPolicy(3).reads_exits and not FullDepthPolicy().reads_exits
