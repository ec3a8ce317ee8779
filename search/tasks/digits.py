"""scikit-learn's bundled 8×8 handwritten digits: real data that needs no download.

The 1,797 images have no official test split, so a fixed 20 % (seed 0, independent of any study's
seed) is held out as the test split; searches only ever see the rest.
"""

from __future__ import annotations

from pathlib import Path

import torch
from sklearn.datasets import load_digits

from search.tasks.registry import Split, register_task

TEST_FRACTION = 0.2


@register_task(
    "digits",
    description="scikit-learn digits, 1x8x8, 10 classes, bundled (offline)",
    input_shape=(1, 8, 8),
    num_classes=10,
    needs_data_dir=False,
)
def load(data_dir: Path, download: bool, train: bool) -> Split:
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().unsqueeze(1)  # values 0..16
    labels = torch.from_numpy(bunch.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = round(len(labels) * TEST_FRACTION)
    idx = order[n_test:] if train else order[:n_test]
    return Split(images[idx], labels[idx])
