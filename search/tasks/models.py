"""Model families whose depth is a hyperparameter.

Every family ends in global average pooling (or flattens a fixed input), so no layer's size depends
on a hand-computed spatial size: each depth builds on each input shape.

- ``mlp``: ``depth`` hidden layers of 256 units.
- ``cnn``: ``depth`` conv blocks (3×3 conv, batch norm, ReLU); a block halves the spatial size with a
  2×2 max pool while the feature map is at least 2×2, so deep nets on 8×8 digits stay valid.
- ``cnn1d``: the same blocks in one dimension (kernel 5, pool 2), for C×L sequences or signals
  stored as C×1×L images (MNIST-1D).
- ``resnet``: the CIFAR ResNet of He et al. (2016): three stages of 16/32/64 channels with
  ``depth`` basic blocks each (depth 3 = ResNet-20). Blocks add an identity shortcut; the first
  block of stages 2 and 3 halves the size and uses a 1×1 projection shortcut there only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from search.errors import TaskError

# The most depth each family allows; spaces are validated against it.
MAX_DEPTH = {"mlp": 8, "cnn": 8, "cnn1d": 6, "resnet": 9}
FAMILIES = tuple(MAX_DEPTH)


def build(family: str, depth: int, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a model of ``family`` with ``depth`` units of depth for the given input shape."""
    if family not in MAX_DEPTH:
        raise TaskError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return FACTORIES[family](input_shape=input_shape, num_classes=num_classes, depth=depth)


# The families as model factories, called the way a user's own factory is: keyword arguments
# only, the input shape and class count from the data, and every sampled param the training loop
# does not take (for the families: depth alone).


def mlp(*, input_shape: tuple[int, ...], num_classes: int, depth: int = 1) -> nn.Module:
    _check_depth("mlp", depth)
    return MLP(math.prod(input_shape), depth, num_classes)


def cnn(*, input_shape: tuple[int, ...], num_classes: int, depth: int = 1) -> nn.Module:
    _check_depth("cnn", depth)
    channels, height, width = _image_shape("cnn", input_shape)
    return CNN(channels, min(height, width), depth, num_classes)


def cnn1d(*, input_shape: tuple[int, ...], num_classes: int, depth: int = 1) -> nn.Module:
    _check_depth("cnn1d", depth)
    if len(input_shape) == 2:  # C×L sequences
        return CNN1d(input_shape[0], input_shape[1], depth, num_classes, flatten=False)
    if len(input_shape) == 3:  # signals stored as C×H×L images: the rows become channels
        return CNN1d(input_shape[0] * input_shape[1], input_shape[2], depth, num_classes)
    raise TaskError(
        f"model cnn1d needs sequences C×L (or C×1×L), the data has shape {shape_text(input_shape)}"
    )


def resnet(*, input_shape: tuple[int, ...], num_classes: int, depth: int = 1) -> nn.Module:
    _check_depth("resnet", depth)
    channels, _, _ = _image_shape("resnet", input_shape)
    return ResNet(channels, depth, num_classes)


FACTORIES = {"mlp": mlp, "cnn": cnn, "cnn1d": cnn1d, "resnet": resnet}


def _check_depth(family: str, depth: int) -> None:
    if not 1 <= depth <= MAX_DEPTH[family]:
        raise TaskError(f"model {family}: depth must be in 1..{MAX_DEPTH[family]}, got {depth}")


def _image_shape(family: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise TaskError(
            f"model {family} needs images C×H×W, the data has shape {shape_text(input_shape)}"
        )
    return input_shape  # type: ignore[return-value]


def shape_text(input_shape: tuple[int, ...]) -> str:
    """``3×32×32``."""
    return "×".join(str(n) for n in input_shape)


class MLP(nn.Sequential):
    def __init__(self, in_features: int, depth: int, num_classes: int, width: int = 256) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth):
            layers += [nn.Linear(in_features if i == 0 else width, width), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class CNN(nn.Sequential):
    def __init__(self, channels: int, size: int, depth: int, num_classes: int) -> None:
        layers: list[nn.Module] = []
        for i in range(depth):
            width = 32 * 2 ** min(i, 2)  # 32, 64, 128, 128, ...
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
        super().__init__(*layers)


class CNN1d(nn.Sequential):
    def __init__(
        self, channels: int, length: int, depth: int, num_classes: int, flatten: bool = True
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten(1, 2)] if flatten else []  # N×C×1×L → N×C×L
        for i in range(depth):
            width = 32 * 2 ** min(i, 2)
            layers += [
                nn.Conv1d(channels, width, 5, padding=2, bias=False),
                nn.BatchNorm1d(width),
                nn.ReLU(inplace=True),
            ]
            if length >= 2:
                layers.append(nn.MaxPool1d(2))
                length //= 2
            channels = width
        layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """Two 3×3 convs with a shortcut: identity when the shape is kept, 1×1 projection otherwise."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, channels: int, blocks_per_stage: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        in_channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))
