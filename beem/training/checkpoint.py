"""End-of-epoch checkpoints without pickle: model and optimizer tensors as safetensors, the rest as JSON.

AdamW's state is flattened to `state.<param index>.<name>` tensors; the scheduler is rebuilt from the step count.
Shuffling and dropout are seeded from (seed, epoch), so resuming at an epoch boundary replays the same run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class TrainerProgress:
    epochs_done: int
    optimizer_steps: int
    epoch_losses: tuple[float, ...]


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: TrainerProgress,
    config: dict[str, object],
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, directory / MODEL_FILE)
    optimizer_tensors: dict[str, torch.Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            optimizer_tensors[f"state.{index}.{name}"] = tensor.detach().contiguous()
    save_file(optimizer_tensors, directory / OPTIMIZER_FILE)
    # Written last: its presence marks a complete checkpoint.
    (directory / STATE_FILE).write_text(
        json.dumps(
            {
                "epochs_done": progress.epochs_done,
                "optimizer_steps": progress.optimizer_steps,
                "epoch_losses": list(progress.epoch_losses),
                "config": config,
            },
            indent=2,
        )
    )


class CheckpointMismatchError(ValueError):
    pass


def load_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, object],
    config_defaults: dict[str, object] | None = None,
) -> TrainerProgress | None:
    """Restore model and optimizer in place; None when the directory holds no complete checkpoint.

    A checkpoint of another training config is refused: its learning-rate schedule and data order differ, so
    continuing it would silently produce a model that no single run would. A setting the saved config lacks
    (added to the config after it was written) counts as `config_defaults` gives it.
    """
    if not (directory / STATE_FILE).is_file():
        return None
    saved = json.loads((directory / STATE_FILE).read_text())
    saved_config = {**(config_defaults or {}), **(saved.get("config") or {})}
    if "config" not in saved or saved_config != config:
        raise CheckpointMismatchError(
            f"{directory / STATE_FILE}: checkpoint of a different training config ({saved.get('config')}); "
            f"use another run directory or delete this one to start over"
        )
    model.load_state_dict(load_file(directory / MODEL_FILE))
    flat = load_file(directory / OPTIMIZER_FILE)
    optimizer_state = optimizer.state_dict()
    restored: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        _, index, name = key.split(".", 2)
        restored.setdefault(int(index), {})[name] = tensor
    optimizer_state["state"] = restored
    optimizer.load_state_dict(optimizer_state)
    return TrainerProgress(saved["epochs_done"], saved["optimizer_steps"], tuple(saved["epoch_losses"]))
