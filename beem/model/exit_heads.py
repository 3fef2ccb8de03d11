"""One classifier ("expert") after every encoder layer.

Head i reads layer i's output, pools it to one vector per sample, passes it through a pooler (dense + tanh) and a
linear layer (DESIGN 3.4). Three design choices are configurable because they change how good the early exits are:
`pooling` = "cls" (the paper's) or "mean" (masked mean over tokens, how the default backbone was pre-trained as a
sentence encoder), `shared_pooler` (one pooler for every exit, the paper's, or one per exit), and `design`:
"pooler" (the one-hidden-layer MLP above) or "linear" (the pooled vector straight into the linear layer, no pooler:
fewer parameters per exit, and every exit's features are the backbone's own).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

POOLING_MODES = ("cls", "mean")
HEAD_DESIGNS = ("pooler", "linear")


@dataclass(frozen=True)
class ExitHeadSpec:
    num_layers: int
    hidden_size: int
    num_labels: int
    pooling: str = "mean"
    shared_pooler: bool = False
    dropout: float = 0.1
    design: str = "pooler"  # bundles written before this field existed have pooler heads

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.design not in HEAD_DESIGNS:
            raise ValueError(f"exit head design must be one of {HEAD_DESIGNS}, got {self.design!r}")
        if self.num_layers < 1 or self.num_labels < 2:
            raise ValueError("exit heads need at least one layer and two labels")

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def pool_hidden(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    pooling: str,
    mean_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(B, T, H) hidden states and (B, T) mask -> (B, H), ignoring padding so batching never changes a row.
    `mean_weights`: the mask's token weights (B, T, 1) and counts (B, 1), when the caller keeps them."""
    if pooling == "cls":
        return hidden[:, 0]
    if mean_weights is None:
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        mean_weights = weights, weights.sum(dim=1).clamp(min=1.0)
    weights, counts = mean_weights
    return (hidden * weights).sum(dim=1) / counts


class ExitHeads(nn.Module):
    def __init__(self, spec: ExitHeadSpec) -> None:
        super().__init__()
        self.spec = spec
        pooler_count = 0 if spec.design == "linear" else 1 if spec.shared_pooler else spec.num_layers
        self.poolers = nn.ModuleList(nn.Linear(spec.hidden_size, spec.hidden_size) for _ in range(pooler_count))
        self.classifiers = nn.ModuleList(nn.Linear(spec.hidden_size, spec.num_labels) for _ in range(spec.num_layers))
        self.dropout = nn.Dropout(spec.dropout)
        self._linear = spec.design == "linear"  # read after every layer: decided once here

    def init_poolers_from(self, pretrained_pooler_dense: nn.Linear) -> None:
        """Start every pooler from the backbone's pre-trained pooler, as a single-exit fine-tune would."""
        for pooler in self.poolers:
            assert isinstance(pooler, nn.Linear)
            pooler.load_state_dict(pretrained_pooler_dense.state_dict())

    def forward(
        self,
        exit_index: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        mean_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits of exit `exit_index` (0-based): (B, T, H), (B, T) -> (B, num_labels)."""
        pooled = pool_hidden(hidden, attention_mask, self.spec.pooling, mean_weights)  # (B, H)
        classifier: nn.Module = self.classifiers[exit_index]
        if self._linear:
            return classifier(self.dropout(pooled) if self.training else pooled)
        pooler = self.poolers[0 if self.spec.shared_pooler else exit_index]
        if self.training:
            features = torch.tanh(pooler(self.dropout(pooled)))
            return classifier(self.dropout(features))
        # Serving calls this after every layer: skip the dropout modules' call overhead in eval.
        return classifier(torch.tanh(pooler(pooled)))
