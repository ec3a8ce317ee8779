"""CIFAR-10 through torchvision's own dataset class (32×32 RGB), with crop/flip augmentation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from search.tasks._torchvision import open_dataset
from search.tasks.registry import Split, register_task


def _missing(data_dir: Path) -> Iterator[Path]:
    # The files and checksums CIFAR10 itself verifies before reading.
    from torchvision.datasets import CIFAR10 as cls
    from torchvision.datasets.utils import check_integrity

    folder = data_dir / cls.base_folder
    for filename, md5 in [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]:
        if not check_integrity(str(folder / filename), md5):
            yield folder / filename


@register_task(
    "cifar10",
    description="CIFAR-10 objects, 3x32x32, 10 classes (torchvision, --data-dir), crop+flip",
    input_shape=(3, 32, 32),
    classes=(
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
    augment=True,
)
def load(data_dir: Path, download: bool, train: bool) -> Split:
    from torchvision.datasets import CIFAR10  # torchvision costs a second to import; only here

    dataset = open_dataset(CIFAR10, data_dir, download, train, _missing)
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2)  # NHWC uint8 -> NCHW
    return Split(images, torch.tensor(dataset.targets, dtype=torch.long))
