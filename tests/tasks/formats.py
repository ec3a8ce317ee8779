"""Small dataset files written in the real on-disk formats that torchvision's classes read."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's IDX files: big-endian magic (0x0803 images, 0x0801 labels), sizes, then uint8 data."""
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">iiii", 0x0803, n, rows, cols) + images.astype(np.uint8).tobytes()
    )
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">ii", 0x0801, n) + labels.astype(np.uint8).tobytes()
    )


def write_mnist(root: Path, class_name: str, n_train: int, n_test: int, seed: int = 0):
    """Random digits-like images in ``root/<class_name>/raw``; returns the training arrays."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train)
    test = rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test)
    raw = root / class_name / "raw"
    write_idx(raw, "train", *train)
    write_idx(raw, "t10k", *test)
    return train


def write_cifar10(root: Path, per_batch: int, seed: int = 0) -> dict[str, str]:
    """CIFAR-10's python pickles (5 training batches, a test batch, the meta file).

    Returns each file's md5, which the caller puts in place of the real files' checksums.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    md5 = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {
            "batch_label": name,
            "labels": rng.integers(0, 10, per_batch).tolist(),
            "data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        md5[name] = _dump(folder / name, entry)
    classes = [
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
    ]
    md5["batches.meta"] = _dump(folder / "batches.meta", {"label_names": classes, "num_vis": 3072})
    return md5


def _dump(path: Path, entry: dict) -> str:
    path.write_bytes(pickle.dumps(entry, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest()
