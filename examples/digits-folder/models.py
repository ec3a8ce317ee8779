"""A model of your own for `search`: a small CNN whose width and dropout the search tunes.

`search` calls `build` with keyword arguments only: `input_shape` and `num_classes` from the data,
every sampled param the training loop does not take (here depth, width and dropout), and the
space's fixed [task.model_args] (here stem). Anything that returns an nn.Module mapping a batch of
`input_shape` to (batch, num_classes) logits will do.
"""

from __future__ import annotations

from torch import nn


def build(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    depth: int = 1,
    width: int = 32,
    dropout: float = 0.0,
    stem: str = "conv",
) -> nn.Module:
    channels = input_shape[0]
    layers: list[nn.Module] = []
    if stem == "conv":
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
    elif stem == "patch":  # non-overlapping 2×2 patches, as vision transformers start
        layers += [nn.Conv2d(channels, width, 2, stride=2), nn.ReLU()]
    else:
        raise ValueError(f"stem must be 'conv' or 'patch', got {stem!r}")
    for _ in range(depth):
        layers += [
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(width, num_classes),
    ]
    return nn.Sequential(*layers)
