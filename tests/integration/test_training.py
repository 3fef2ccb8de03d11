"""Joint training: the loss falls, checkpoints hold no pickle, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from beem.data.examples import read_dataset
from beem.model.multi_exit_model import MultiExitModel
from beem.training.checkpoint import MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, CheckpointMismatchError
from beem.training.exit_losses import multi_exit_loss
from beem.training.trainer import TrainingConfig, train

CONFIG = TrainingConfig(epochs=2, batch_size=8, learning_rate=1e-3, max_length=24, max_steps_per_epoch=3,
                        distillation_weight=1.0)  # fmt: skip


def _fresh_model(backbone_dir: Path) -> MultiExitModel:
    torch.manual_seed(0)
    return MultiExitModel.from_pretrained_backbone(str(backbone_dir), 2, "mean", shared_pooler=False)


def test_resuming_from_an_epoch_checkpoint_equals_training_straight_through(
    tmp_path: Path, tiny_backbone_dir: Path, tiny_data_file: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_backbone_dir))
    data = read_dataset(tiny_data_file)

    straight = _fresh_model(tiny_backbone_dir)
    train(straight, tokenizer, data, CONFIG, tmp_path / "straight")

    interrupted = _fresh_model(tiny_backbone_dir)
    first = train(interrupted, tokenizer, data, CONFIG, tmp_path / "resumed", stop_after_epoch=1)
    assert first.epochs_done == 1
    assert {MODEL_FILE, OPTIMIZER_FILE, STATE_FILE} == {p.name for p in (tmp_path / "resumed").iterdir()}
    resumed = _fresh_model(tiny_backbone_dir)  # a new process would start from scratch weights
    progress = train(resumed, tokenizer, data, CONFIG, tmp_path / "resumed")
    assert progress.epochs_done == 2 and len(progress.epoch_losses) == 2
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resume")


def test_a_checkpoint_of_another_config_is_refused(
    tmp_path: Path, tiny_backbone_dir: Path, tiny_data_file: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_backbone_dir))
    data = read_dataset(tiny_data_file)
    train(_fresh_model(tiny_backbone_dir), tokenizer, data, CONFIG, tmp_path, stop_after_epoch=1)
    with pytest.raises(CheckpointMismatchError, match="different training config"):
        train(_fresh_model(tiny_backbone_dir), tokenizer, data, replace(CONFIG, learning_rate=5e-4), tmp_path)


def test_distillation_never_pushes_the_final_exit() -> None:
    """The KL term's teacher is detached: the final exit's gradient is its cross-entropy's alone."""
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 2, requires_grad=True)  # (L, B, C)
    labels = torch.randint(0, 2, (5,))
    (with_kd,) = torch.autograd.grad(multi_exit_loss(logits, labels, 1.0, 2.0), logits)
    (without_kd,) = torch.autograd.grad(multi_exit_loss(logits, labels, 0.0, 2.0), logits)
    torch.testing.assert_close(with_kd[-1], without_kd[-1])
    assert not torch.allclose(with_kd[0], without_kd[0])
