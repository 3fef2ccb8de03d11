"""The joint training loss of all exits.

Depth-weighted cross-entropy (DESIGN 3.4): sum_i i * CE_i / sum_i i, so later (more capable) exits weigh more.
Optional self-distillation adds, for each early exit, T^2 * KL(final || exit) at temperature T with the final
exit's distribution *detached*: the early exits learn from the final layer's soft labels while the final exit is
trained by cross-entropy alone, so distillation cannot pull the final layer towards the weaker exits.
"""

from __future__ import annotations

import torch
from torch.nn import functional


def depth_weights(num_layers: int, device: torch.device) -> torch.Tensor:
    """(L,) weights i / sum(i) for i = 1..L."""
    steps = torch.arange(1, num_layers + 1, dtype=torch.float32, device=device)
    return steps / steps.sum()


def final_only_weights(num_layers: int, device: torch.device) -> torch.Tensor:
    """(L,) one-hot on the last exit: a plain single-exit fine-tune, the reference for full-depth accuracy."""
    weights = torch.zeros(num_layers, device=device)
    weights[-1] = 1.0
    return weights


EXIT_WEIGHTINGS = {"depth": depth_weights, "final-only": final_only_weights}


def multi_exit_loss(
    exit_logits: torch.Tensor,  # (L, B, C)
    labels: torch.Tensor,  # (B,)
    distillation_weight: float,
    temperature: float,
    exit_weighting: str = "depth",
) -> torch.Tensor:
    num_layers, batch, num_labels = exit_logits.shape
    per_exit_ce = (
        functional.cross_entropy(
            exit_logits.reshape(num_layers * batch, num_labels), labels.repeat(num_layers), reduction="none"
        )
        .view(num_layers, batch)
        .mean(dim=1)
    )  # (L,)
    loss = (EXIT_WEIGHTINGS[exit_weighting](num_layers, exit_logits.device) * per_exit_ce).sum()
    if distillation_weight <= 0 or num_layers < 2:
        return loss
    teacher = functional.softmax(exit_logits[-1].detach() / temperature, dim=-1)  # (B, C)
    student_log_probs = functional.log_softmax(exit_logits[:-1] / temperature, dim=-1)  # (L-1, B, C)
    per_exit_kl = (teacher * (teacher.clamp_min(1e-12).log() - student_log_probs)).sum(-1).mean(-1)  # (L-1,)
    distillation = (depth_weights(num_layers - 1, exit_logits.device) * per_exit_kl).sum() * temperature**2
    return loss + distillation_weight * distillation
