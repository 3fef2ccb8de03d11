"""Two-stage captioner training on cached image features (DESIGN 3.6).

The encoder is frozen, so its feature grids are computed once and cached: training then only runs the decoder.
Stage 1 trains the decoder through its final exit; stage 2 trains the exit heads (and, when asked, the decoder
too) with 0.5 CE + 0.5 KL to the detached final exit. AdamW, seeded shuffling, one loss value per epoch returned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from beem.captioning.caption_losses import exit_heads_loss, final_exit_loss
from beem.captioning.multi_exit_decoder import MultiExitDecoder


@dataclass(frozen=True)
class CaptionTrainingConfig:
    backbone_epochs: int = 10
    exit_epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 5e-4
    exit_learning_rate: float = 1e-3
    exits_train_decoder: bool = False  # stage 2: exit heads only (the paper) or the decoder as well
    seed: int = 7

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _padded(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    longest = max(len(row) for row in rows)
    padded = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    for index, row in enumerate(rows):
        padded[index, : len(row)] = torch.tensor(row)
    return padded


def _epochs(
    decoder: MultiExitDecoder,
    features: torch.Tensor,  # (N, P, C) cached encoder grids
    token_rows: list[list[int]],
    feature_rows: list[int],
    pad_id: int,
    parameters: list[torch.nn.Parameter],
    learning_rate: float,
    epochs: int,
    config: CaptionTrainingConfig,
    stage: str,
) -> list[float]:
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    losses = []
    decoder.train()
    for epoch in range(epochs):
        order = np.random.default_rng(config.seed + epoch).permutation(len(token_rows))
        total, batches = 0.0, 0
        for start in tqdm(range(0, len(order), config.batch_size), desc=f"{stage} {epoch + 1}/{epochs}", leave=False):
            rows = order[start : start + config.batch_size]
            tokens = _padded([token_rows[i] for i in rows], pad_id)
            logits = decoder.forward_all_exits(
                tokens[:, :-1], features[torch.as_tensor([feature_rows[i] for i in rows])]
            )  # (L, B, T, V)
            targets = tokens[:, 1:]
            loss = (
                final_exit_loss(logits, targets, pad_id)
                if stage == "backbone"
                else exit_heads_loss(logits, targets, pad_id)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / max(batches, 1))
    decoder.eval()
    return losses


def train_captioner(
    decoder: MultiExitDecoder,
    features: torch.Tensor,
    token_rows: list[list[int]],
    pad_id: int,
    config: CaptionTrainingConfig,
    feature_rows: list[int] | None = None,  # image of each caption (an image may have several); default: i -> i
) -> dict[str, list[float]]:
    torch.manual_seed(config.seed)
    image_of = feature_rows if feature_rows is not None else list(range(len(token_rows)))
    # The final exit's head belongs to the backbone (stage 1 trains through it); the early exits' heads do not.
    early_heads = tuple(f"exit_norms.{index}." for index in range(decoder.num_layers - 1))
    backbone = [p for name, p in decoder.named_parameters() if not name.startswith(early_heads)]
    exit_heads = [p for name, p in decoder.named_parameters() if name.startswith(early_heads)]
    stage_one = _epochs(decoder, features, token_rows, image_of, pad_id, backbone, config.learning_rate,
                        config.backbone_epochs, config, "backbone")  # fmt: skip
    stage_two_parameters = exit_heads + (backbone if config.exits_train_decoder else [])
    stage_two = _epochs(decoder, features, token_rows, image_of, pad_id, stage_two_parameters,
                        config.exit_learning_rate, config.exit_epochs, config, "exits")  # fmt: skip
    return {"backbone_losses": stage_one, "exit_losses": stage_two}
