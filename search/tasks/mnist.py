"""MNIST and Fashion-MNIST through torchvision's own dataset classes (28×28 grayscale)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from search.tasks._torchvision import open_dataset
from search.tasks.registry import DIGITS, Split, register_task

# torchvision's FashionMNIST.classes, without importing torchvision to register the task.
FASHION = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _missing(cls: type) -> Callable[[Path], Iterator[Path]]:
    def missing(data_dir: Path) -> Iterator[Path]:
        # The same files, named the same way, that MNIST._check_exists looks for.
        raw = data_dir / cls.__name__ / "raw"
        for filename, _md5 in cls.resources:
            path = raw / os.path.splitext(filename)[0]
            if not path.is_file():
                yield path

    return missing


def _load(cls: type, data_dir: Path, download: bool, train: bool) -> Split:
    dataset = open_dataset(cls, data_dir, download, train, _missing(cls))
    return Split(dataset.data.unsqueeze(1), dataset.targets.long())


@register_task(
    "mnist",
    description="MNIST handwritten digits, 1x28x28, 10 classes (torchvision, --data-dir)",
    input_shape=(1, 28, 28),
    classes=DIGITS,
)
def load_mnist(data_dir: Path, download: bool, train: bool) -> Split:
    from torchvision.datasets import MNIST  # torchvision costs a second to import; only here

    return _load(MNIST, data_dir, download, train)


@register_task(
    "fashion-mnist",
    description="Fashion-MNIST clothing, 1x28x28, 10 classes (torchvision, --data-dir)",
    input_shape=(1, 28, 28),
    classes=FASHION,
)
def load_fashion_mnist(data_dir: Path, download: bool, train: bool) -> Split:
    from torchvision.datasets import FashionMNIST

    return _load(FashionMNIST, data_dir, download, train)
