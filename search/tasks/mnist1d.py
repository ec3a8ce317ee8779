"""MNIST-1D (Greydanus, "Scaling down deep learning", 2020): 1-D digit signals, generated offline.

The `mnist1d` package's `make_dataset` builds the standard dataset deterministically (its own seed,
42): 5,000 sequences of length 40, the first 4,000 for training and the last 1,000 for testing.
Published test accuracies: logistic regression ~32 %, MLP ~68 %, CNN ~94 %, so configurations
spread widely and search strategies can be told apart. Signals are stored as 1×1×40 images so that
they flow through the same device-resident data path as every other task.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np
import torch

from search.tasks.registry import DIGITS, Split, register_task


@register_task(
    "mnist1d",
    description="MNIST-1D signals, 1x1x40, 10 classes, generated (offline)",
    input_shape=(1, 1, 40),
    classes=DIGITS,
    models=("mlp", "cnn1d"),
    needs_data_dir=False,
)
def load(data_dir: Path, download: bool, train: bool) -> Split:
    x, y, x_test, y_test = _generate()
    images, labels = (x, y) if train else (x_test, y_test)
    return Split(
        torch.from_numpy(images).float()[:, None, None, :], torch.from_numpy(labels).long()
    )


@functools.cache
def _generate() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset  # imports matplotlib: only here

    # make_dataset seeds the global numpy and random generators; leave them as they were.
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return data["x"], data["y"], data["x_test"], data["y_test"]
