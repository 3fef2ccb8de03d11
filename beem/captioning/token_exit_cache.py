"""Calibrate captioning exits with the classification machinery: every reference token is one sample.

Under teacher forcing each position of each calibration caption gives every exit's (predicted token, its
probability, entropy) against the true next token: exactly an `ExitCache` with tokens as samples. So
`calibrate_policies` chooses BEEM's alpha from per-exit token error rates, as DESIGN 3.6 asks, with no new code.
"""

from __future__ import annotations

import numpy as np
import torch

from beem.calibration.exit_cache import ExitCache
from beem.captioning.multi_exit_decoder import MultiExitDecoder
from beem.policies.array_policies import summarize_exits


@torch.inference_mode()
def token_exit_cache(
    decoder: MultiExitDecoder,
    features: torch.Tensor,  # (N_images, P, C): the encoder's grids
    token_rows: list[list[int]],  # <start> ... <end> per caption
    pad_id: int,
    feature_rows: list[int] | None = None,  # image of each caption (an image may have several); default: i -> i
    batch_size: int = 32,
) -> ExitCache:
    decoder.eval()
    image_of = feature_rows if feature_rows is not None else list(range(len(token_rows)))
    labels, confidences, entropies, targets = [], [], [], []
    for start in range(0, len(token_rows), batch_size):
        rows = token_rows[start : start + batch_size]
        longest = max(len(row) for row in rows)
        padded = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        for index, row in enumerate(rows):
            padded[index, : len(row)] = torch.tensor(row)
        inputs, next_tokens = padded[:, :-1], padded[:, 1:]  # predict token t+1 from tokens <= t
        grids = features[torch.as_tensor(image_of[start : start + batch_size])]  # (B, P, C)
        logits = decoder.forward_all_exits(inputs, grids)  # (L, B, T, V)
        keep = (next_tokens != pad_id).reshape(-1)  # (B*T,)
        exit_labels, exit_confidences, exit_entropies = summarize_exits(logits.permute(1, 2, 0, 3))  # (B, T, L)
        num_layers = logits.shape[0]
        labels.append(exit_labels.reshape(-1, num_layers)[keep].numpy())
        confidences.append(exit_confidences.reshape(-1, num_layers)[keep].double().numpy())
        entropies.append(exit_entropies.reshape(-1, num_layers)[keep].double().numpy())
        targets.append(next_tokens.reshape(-1)[keep].numpy())
    return ExitCache(
        np.concatenate(labels).astype(np.int64),
        np.concatenate(confidences),
        np.concatenate(entropies),
        np.concatenate(targets).astype(np.int64),
    )
