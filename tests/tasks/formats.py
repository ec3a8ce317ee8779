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


def digits(n: int | None = None, colour: bool = False, size: int = 8):
    """scikit-learn's digits as uint8 N×C×H×W images (0..255) and labels; ``size`` upscales."""
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images * (255 / 16)).round().to(torch.uint8)[:n].unsqueeze(1)
    if size != 8:
        images = torch.nn.functional.interpolate(images.float(), size=(size, size)).to(torch.uint8)
    if colour:  # ink in red and green, none in blue: three channels that differ
        images = torch.cat([images, images // 2, torch.zeros_like(images)], dim=1)
    return images, torch.from_numpy(bunch.target[:n]).long()


def write_image_folder(root: Path, images, labels, names: tuple[str, ...] | None = None) -> Path:
    """torchvision's ImageFolder layout: ``root/CLASS/NNNN.png``, one 8-bit PNG per image."""
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        folder = root / (names[label] if names else str(label))
        folder.mkdir(parents=True, exist_ok=True)
        write_png(image, folder / f"{i:04d}.png")
    return root


def write_png(image, path: Path) -> None:
    """A uint8 C×H×W tensor as an 8-bit grayscale or RGB PNG file."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path)
