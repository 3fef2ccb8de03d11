"""Captioning reuses the classification calibration: teacher-forced tokens become exit-cache samples."""

from __future__ import annotations

import torch
from torch import nn

from beem.calibration.policy_calibration import CalibrationOptions, calibrate_policies
from beem.captioning.captioner import MultiExitCaptioner
from beem.captioning.multi_exit_decoder import DecoderSpec, MultiExitDecoder
from beem.captioning.token_exit_cache import token_exit_cache


class TinyEncoder(nn.Module):
    """Stands in for EfficientNet-Lite0: any `forward_features` giving (B, C, H, W) works."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, kernel_size=32, stride=32)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)


def test_token_cache_holds_one_sample_per_reference_token_and_calibrates() -> None:
    torch.manual_seed(0)
    spec = DecoderSpec(vocab_size=20, num_layers=3, hidden_size=24, num_heads=2, ffn_size=48, max_length=12,
                       image_feature_size=12, dropout=0.0)  # fmt: skip
    captioner = MultiExitCaptioner(TinyEncoder(), MultiExitDecoder(spec)).eval()
    images = torch.rand(5, 3, 224, 224) * 2 - 1
    rows = [[1, 5, 6, 2], [1, 7, 2], [1, 4, 4, 9, 8, 2], [1, 3, 2], [1, 11, 12, 13, 2]]
    cache = token_exit_cache(captioner.decoder, captioner.image_features(images), rows, pad_id=0, batch_size=2)
    assert cache.num_samples == sum(len(row) - 1 for row in rows)  # every next token, <end> included
    assert cache.num_layers == 3
    assert cache.targets.tolist() == [token for row in rows for token in row[1:]]
    with torch.no_grad():
        logits = captioner.all_exit_logits(images[2:3], torch.tensor([rows[2][:-1]]))  # (L, 1, T, V)
    first = sum(len(row) - 1 for row in rows[:2])
    assert cache.exit_labels[first : first + 5].tolist() == logits[:, 0].argmax(-1).T.tolist()
    calibrated = calibrate_policies(cache, CalibrationOptions())
    assert {"beem-a", "beem-c", "max-prob", "full"} <= set(calibrated)
