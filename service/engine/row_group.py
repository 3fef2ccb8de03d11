"""Rows at one depth of the encoder, travelling together: their hidden states, their policy state and parameters
(device tensors, one row each), and what the host needs of them (numpy arrays, so selecting rows is a constant
number of calls, not a loop over rows).

Groups from different arrivals at the same depth merge (re-padded to the longer one); rows that leave are cut out
and the padding trimmed to the longest row left.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.nn import functional

from beem.model.layerwise_backbone import EncoderState, LayerwiseBackbone
from beem.policies.array_policies import RowPolicies, RowStates


@dataclass(frozen=True, eq=False)  # a group is itself: never compared by its tensors
class RowGroup:
    encoder: EncoderState  # hidden (R, T, H) after `depth` layers, attention mask (R, T)
    states: RowStates  # (R,) policy state
    policies: RowPolicies  # (R,) exit parameters
    trace_labels: torch.Tensor  # (R, L) int64: every computed exit's label, for rows that return their exits
    trace_confidences: torch.Tensor  # (R, L) float64
    items: np.ndarray  # (R,) object: the WorkItems
    lengths: np.ndarray  # (R,) int64: tokens per row
    deadlines: np.ndarray  # (R,) float64: time.monotonic() deadlines
    head_from: np.ndarray  # (R,) int64: the first layer whose exit head this row needs (1: every layer)
    oldest_at: float  # when its oldest row joined the engine
    cancellations_seen: int = 0  # the engine's cancellation count when this group was last searched for them

    @property
    def depth(self) -> int:
        return self.encoder.layers_done

    @property
    def num_rows(self) -> int:
        return len(self.items)

    @property
    def padded_tokens(self) -> int:
        return self.num_rows * int(self.encoder.hidden.shape[1])

    def take(self, keep: np.ndarray, backbone: LayerwiseBackbone) -> RowGroup:
        """The rows where `keep` (R,) is True; padding trimmed to the longest of them."""
        rows = torch.from_numpy(np.flatnonzero(keep)).to(self.encoder.hidden.device)
        longest = int(self.lengths[keep].max())
        encoder = self.encoder.select_rows(rows)
        if longest < encoder.hidden.shape[1]:
            encoder = backbone.regroup(
                encoder.hidden[:, :longest], encoder.attention_mask[:, :longest], encoder.layers_done
            )
        return replace(
            self,
            encoder=encoder,
            states=self.states.take(rows),
            policies=self.policies.take(rows),
            trace_labels=self.trace_labels[rows],
            trace_confidences=self.trace_confidences[rows],
            items=self.items[keep],
            lengths=self.lengths[keep],
            deadlines=self.deadlines[keep],
            head_from=self.head_from[keep],
        )

    def merged(self, other: RowGroup, backbone: LayerwiseBackbone) -> RowGroup:
        """This group and `other` (same depth) as one, padded to the longer of the two."""
        assert other.depth == self.depth
        width = max(self.encoder.hidden.shape[1], other.encoder.hidden.shape[1])
        hidden = torch.cat([_pad_tokens(g.encoder.hidden, width) for g in (self, other)])  # (R1 + R2, T, H)
        mask = torch.cat([_pad_tokens(g.encoder.attention_mask, width) for g in (self, other)])  # (R1 + R2, T)
        return RowGroup(
            encoder=backbone.regroup(hidden, mask, self.depth),
            states=self.states.cat(other.states),
            policies=self.policies.cat(other.policies),
            trace_labels=torch.cat((self.trace_labels, other.trace_labels)),
            trace_confidences=torch.cat((self.trace_confidences, other.trace_confidences)),
            items=np.concatenate((self.items, other.items)),
            lengths=np.concatenate((self.lengths, other.lengths)),
            deadlines=np.concatenate((self.deadlines, other.deadlines)),
            head_from=np.concatenate((self.head_from, other.head_from)),
            oldest_at=min(self.oldest_at, other.oldest_at),
            cancellations_seen=min(self.cancellations_seen, other.cancellations_seen),
        )


def _pad_tokens(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad dimension 1 (tokens) of (R, T, ...) to `width`; a zero mask marks the new positions as padding."""
    missing = width - tensor.shape[1]
    if not missing:
        return tensor
    return functional.pad(tensor, (0, 0) * (tensor.dim() - 2) + (0, missing))
