"""The encoder form the caption server runs on a CPU: BatchNorms folded into their convolutions, channels-last."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from beem.captioning.efficientnet_lite import EfficientNetLite0
from beem.captioning.image_encoders import TinyCnn
from beem.captioning.inference_encoder import fold_batch_norms, inference_encoder


def lite0_with_trained_statistics() -> EfficientNetLite0:
    """Seeded, with BatchNorm statistics and affine parameters away from their identity defaults, so a fold that
    dropped or misapplied any of them would change the features."""
    torch.manual_seed(0)
    model = EfficientNetLite0()
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_the_served_form_gives_the_stored_encoders_features() -> None:
    stored = lite0_with_trained_statistics()
    images = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.inference_mode():
        expected = stored.forward_features(images)  # (2, 1280, 7, 7)
    served = inference_encoder(lite0_with_trained_statistics(), torch.device("cpu"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in served.modules())
    convolutions = [m for m in served.modules() if isinstance(m, nn.Conv2d)]
    assert len(convolutions) == 49 and all(conv.bias is not None for conv in convolutions)
    assert all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convolutions)
    with torch.inference_mode():
        features = served.forward_features(images)
    assert features.shape == expected.shape
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)


def test_folding_counts_each_pair_once_and_leaves_an_encoder_without_batch_norm_alone() -> None:
    assert fold_batch_norms(lite0_with_trained_statistics()) == 49
    torch.manual_seed(0)
    tiny = TinyCnn().eval()
    images = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        expected = tiny.forward_features(images)
        assert fold_batch_norms(tiny) == 0
        torch.testing.assert_close(inference_encoder(tiny, torch.device("cpu")).forward_features(images), expected)


def test_a_batch_norm_in_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(EfficientNetLite0().train())


def test_off_the_cpu_the_encoder_is_left_as_loaded() -> None:
    model = lite0_with_trained_statistics()
    assert inference_encoder(model, torch.device("cuda")) is model  # a device object needs no GPU
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 49
