"""SYNTHETIC tasks for speed runs where no dataset is on disk: random images of MNIST and CIFAR shape.

Their labels are random, so accuracy on them means nothing; only throughput does. They are named
``synthetic-*`` everywhere they appear and are never a default.
"""

from __future__ import annotations

from pathlib import Path

import torch

from search.tasks.registry import DIGITS, Split, register_task


def _random(shape: tuple[int, int, int], n: int, seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)
    return Split(images, torch.randint(0, 10, (n,), generator=generator))


@register_task(
    "synthetic-mnist",
    description="SYNTHETIC random images, 1x28x28, 60,000 train (speed runs only)",
    input_shape=(1, 28, 28),
    classes=DIGITS,
    needs_data_dir=False,
)
def load_mnist_shaped(data_dir: Path, download: bool, train: bool) -> Split:
    return _random((1, 28, 28), 60_000 if train else 10_000, seed=int(train))


@register_task(
    "synthetic-cifar",
    description="SYNTHETIC random images, 3x32x32, 50,000 train, crop+flip (speed runs only)",
    input_shape=(3, 32, 32),
    classes=DIGITS,
    augment=True,
    needs_data_dir=False,
)
def load_cifar_shaped(data_dir: Path, download: bool, train: bool) -> Split:
    return _random((3, 32, 32), 50_000 if train else 10_000, seed=2 + int(train))
