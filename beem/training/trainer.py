"""Joint fine-tuning of the backbone and every exit head (DESIGN 3.4).

AdamW with linear warm-up and decay, a fixed seed, a progress bar with loss and throughput, and a checkpoint at the
end of each epoch from which `train` resumes when it is called again on the same directory.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from beem.data.examples import LabelledDataset
from beem.data.tokenized_batch import tokenize_examples
from beem.model.multi_exit_model import MultiExitModel
from beem.training.checkpoint import TrainerProgress, load_checkpoint, save_checkpoint
from beem.training.exit_losses import multi_exit_loss


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 8e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    distillation_weight: float = 0.0
    distillation_temperature: float = 2.0
    exit_weighting: str = "depth"  # "depth" (DESIGN 3.4) or "final-only" (the single-exit reference)
    # The exit heads learn at this multiple of the backbone's rate: fresh heads on a pre-trained encoder may need
    # a faster rate than the encoder can take without forgetting.
    head_learning_rate_scale: float = 1.0
    max_length: int = 128
    seed: int = 13
    max_steps_per_epoch: int | None = None  # caps an epoch; for smoke tests and quick trials

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _optimizer(model: MultiExitModel, config: TrainingConfig) -> torch.optim.AdamW:
    # Biases and LayerNorm weights are not decayed (the usual BERT fine-tuning recipe); the exit heads' groups
    # take their own rate. The scheduler scales every group's rate by the same factor, so the ratio holds.
    # Group order (decayed first, backbone before heads) keeps every parameter's index in the optimizer state
    # as it was before heads had a group of their own, so earlier checkpoints still resume.
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        undecayed = parameter.ndim < 2 or "LayerNorm" in name
        groups.setdefault((undecayed, name.startswith("heads.")), []).append(parameter)
    return torch.optim.AdamW(
        [
            {
                "params": parameters,
                "weight_decay": 0.0 if undecayed else config.weight_decay,
                "lr": config.learning_rate * (config.head_learning_rate_scale if in_heads else 1.0),
            }
            for (undecayed, in_heads), parameters in sorted(groups.items())
        ],
        lr=config.learning_rate,
    )


def _steps_per_epoch(train_size: int, config: TrainingConfig) -> int:
    steps = math.ceil(train_size / config.batch_size)
    return min(steps, config.max_steps_per_epoch) if config.max_steps_per_epoch else steps


def train(
    model: MultiExitModel,
    tokenizer: PreTrainedTokenizerBase,
    train_set: LabelledDataset,
    config: TrainingConfig,
    checkpoint_dir: Path,
    stop_after_epoch: int | None = None,
) -> TrainerProgress:
    """Train in place; resumes from `checkpoint_dir` when it holds an earlier checkpoint of this run.

    `stop_after_epoch` returns early after that epoch's checkpoint (the schedule still spans `config.epochs`), so a
    long run can be split across processes; calling again with the same config continues it.
    """
    optimizer = _optimizer(model, config)
    steps_per_epoch = _steps_per_epoch(len(train_set), config)
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_fraction * total_steps), total_steps)
    progress = load_checkpoint(
        checkpoint_dir, model, optimizer, config.to_json(), TrainingConfig().to_json()
    ) or TrainerProgress(0, 0, ())
    with warnings.catch_warnings():  # replaying the schedule steps it without an optimizer step, on purpose
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(progress.optimizer_steps):
            scheduler.step()
    labels = torch.tensor(train_set.labels())
    last_epoch = config.epochs if stop_after_epoch is None else min(stop_after_epoch, config.epochs)
    for epoch in range(progress.epochs_done, last_epoch):
        model.train()
        torch.manual_seed(config.seed + epoch)  # dropout masks of this epoch
        order = np.random.default_rng(config.seed + epoch).permutation(len(train_set))
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step")
        loss_sum, seen, started = 0.0, 0, time.perf_counter()
        for step in bar:
            rows = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch = tokenize_examples(tokenizer, [train_set.examples[i] for i in rows], config.max_length)
            exit_logits = model.all_exit_logits(batch.input_ids, batch.attention_mask, batch.token_type_ids)
            loss = multi_exit_loss(
                exit_logits,
                labels[rows],
                config.distillation_weight,
                config.distillation_temperature,
                config.exit_weighting,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(rows)
            seen += len(rows)
            bar.set_postfix(
                loss=f"{loss_sum / seen:.4f}", samples_per_s=f"{seen / (time.perf_counter() - started):.1f}"
            )
        progress = TrainerProgress(
            epoch + 1, progress.optimizer_steps + steps_per_epoch, (*progress.epoch_losses, loss_sum / seen)
        )
        save_checkpoint(checkpoint_dir, model, optimizer, progress, config.to_json())
    model.eval()
    return progress
