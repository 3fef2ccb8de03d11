"""Training losses of the multi-exit captioner (DESIGN 3.6).

Stage 1 trains the backbone (encoder projection and decoder) through the final exit alone; stage 2 trains the
exit heads with 0.5 * CE + 0.5 * KL(final || exit), the final exit's distribution detached, so the exits learn
the final layer's behaviour without pulling it. Which parameters stage 2 updates (exit heads only, or the
decoder too) is the trainer's choice: it hands the optimizer those parameters.
"""

from __future__ import annotations

import torch
from torch.nn import functional


def final_exit_loss(exit_logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(L, B, T, V) logits, (B, T) next-token targets -> cross-entropy of the last exit, padding ignored."""
    final = exit_logits[-1]
    return functional.cross_entropy(final.reshape(-1, final.shape[-1]), targets.reshape(-1), ignore_index=pad_id)


def exit_heads_loss(exit_logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean over the early exits of 0.5 * CE(targets) + 0.5 * KL(final || exit) on the non-padding positions."""
    num_layers, _, _, vocab = exit_logits.shape
    mask = (targets != pad_id).reshape(-1)  # (B*T,)
    teacher = functional.softmax(exit_logits[-1].detach().reshape(-1, vocab)[mask], dim=-1)  # (N, V)
    losses = []
    for index in range(num_layers - 1):
        logits = exit_logits[index].reshape(-1, vocab)[mask]  # (N, V)
        cross_entropy = functional.cross_entropy(logits, targets.reshape(-1)[mask])
        kl = functional.kl_div(functional.log_softmax(logits, dim=-1), teacher, reduction="batchmean")
        losses.append(0.5 * cross_entropy + 0.5 * kl)
    return torch.stack(losses).mean()
