"""scikit-learn's bundled 8×8 handwritten digits: real data that needs no download.

The 1,797 images have no official test split, so a fixed 20 % (seed 0, independent of any study's
seed) is held out as the test split; searches only ever see the rest.

The file is read where scikit-learn keeps it, as `sklearn.datasets.load_digits` reads it, without
importing scikit-learn: its import (with SciPy, and pandas where that is installed) takes about
2 s per process, longer than most digits trials, and every worker process pays it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from search.tasks.registry import DIGITS, Split, register_task

TEST_FRACTION = 0.2


@register_task(
    "digits",
    description="scikit-learn digits, 1x8x8, 10 classes, bundled (offline)",
    input_shape=(1, 8, 8),
    classes=DIGITS,
    needs_data_dir=False,
)
def load(data_dir: Path, download: bool, train: bool) -> Split:
    pixels, target = bundled_digits()
    images = torch.from_numpy(pixels).float().unsqueeze(1)  # values 0..16
    labels = torch.from_numpy(target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = round(len(labels) * TEST_FRACTION)
    idx = order[n_test:] if train else order[:n_test]
    return Split(images[idx], labels[idx])


def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 images (N×8×8, 0..16) and labels of scikit-learn's ``digits.csv.gz``."""
    spec = importlib.util.find_spec("sklearn")
    locations = spec.submodule_search_locations if spec is not None else None
    path = Path(locations[0], "datasets", "data", "digits.csv.gz") if locations else None
    if path is None or not path.exists():  # a scikit-learn that keeps it elsewhere: ask it
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
