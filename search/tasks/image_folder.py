"""A folder of images in torchvision's ``ImageFolder`` layout → uint8 tensors and labels.

``CLASS/IMAGE.png`` under the folder, or under ``train/`` (or ``training/``), ``val/`` (``valid/``,
``validation/``) and ``test/`` subfolders, the names timm accepts. Classes come from
torchvision's ``find_classes`` and files from its ``make_dataset``; images are opened by PIL, as
torchvision's folder loader opens them, but keep one channel when every image is grayscale (RGB
otherwise, alpha dropped), and are resized to ``image_size`` when given. Every problem names the
file, relative to the space's ``task.data``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from search.errors import TaskError, first_line

# The extensions torchvision's ImageFolder reads (its IMG_EXTENSIONS), without importing it.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test",),
}


def read(
    root: Path, text: str, image_size: tuple[int, int] | None
) -> tuple[
    tuple[torch.Tensor, torch.Tensor],
    tuple[torch.Tensor, torch.Tensor] | None,
    tuple[torch.Tensor, torch.Tensor] | None,
    tuple[str, ...],
]:
    """The folder ``root`` (``text`` as the space names it) as (x, y) pairs for training and,
    if it has them, validation and test, with its class names.

    Raises:
        TaskError: no class subfolders, an empty class, an image that does not decode, or
            images of different sizes without ``image_size``.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    folders = _split_folders(root, text)
    shown = _Shown(root, text)
    try:
        classes, class_to_idx = find_classes(folders["train"])
    except FileNotFoundError:
        loose = sum(1 for p in folders["train"].iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        raise TaskError(
            f"folder {shown(folders['train'])} has no class subfolders"
            + (f" ({loose} images lie directly in it)" if loose else "")
            + "; put each class's images in a folder of its own: "
            f"{shown(folders['train'])}/CLASS/IMAGE.png, as torchvision's ImageFolder reads"
        ) from None
    samples: dict[str, list[tuple[str, int]]] = {}
    for split, folder in folders.items():
        if folder is None:
            continue
        own = classes if split == "train" else _classes_of(folder, classes, shown)
        found = make_dataset(
            folder,
            {name: class_to_idx[name] for name in own},
            extensions=IMG_EXTENSIONS,
            allow_empty=True,
        )
        counts = {name: 0 for name in own}
        for _, index in found:
            counts[classes[index]] += 1
        empty = [name for name, n in counts.items() if n == 0]
        if empty:
            raise TaskError(
                f"folder {shown(folder)}: class folder {empty[0]!r} has no images "
                f"(looked for {', '.join(IMG_EXTENSIONS)})"
            )
        samples[split] = found
    every = [path for found in samples.values() for path, _ in found]
    stacked = _stack(_decode_all(every, shown, image_size), every, shown)
    parts: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {"val": None, "test": None}
    start = 0
    for split, found in samples.items():
        labels = torch.tensor([index for _, index in found], dtype=torch.int64)
        parts[split] = (stacked[start : start + len(found)], labels)
        start += len(found)
    return parts["train"], parts["val"], parts["test"], tuple(classes)


def _split_folders(root: Path, text: str) -> dict[str, Path | None]:
    """train/val/test subfolders by the names timm accepts; without any, the folder is training."""
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    found = {
        split: next((children[n] for n in names if n in children), None)
        for split, names in SPLIT_FOLDERS.items()
    }
    if found["train"] is None:
        others = [p.name for p in (found["val"], found["test"]) if p is not None]
        if others:
            raise TaskError(
                f"folder {text} has {'/ and '.join(others)}/ but no train/ (or training/) folder"
            )
        return {"train": root, "val": None, "test": None}
    return found


def _classes_of(folder: Path, train_classes: list[str], shown: _Shown) -> list[str]:
    from torchvision.datasets.folder import find_classes

    try:
        own, _ = find_classes(folder)
    except FileNotFoundError:
        raise TaskError(f"folder {shown(folder)} has no class subfolders") from None
    unknown = [name for name in own if name not in train_classes]
    if unknown:
        raise TaskError(
            f"folder {shown(folder)} has class {unknown[0]!r}, which the training images lack"
        )
    return own


class _Shown:
    """Paths as the user wrote them: relative to the space's ``task.data``."""

    def __init__(self, root: Path, text: str) -> None:
        self.root, self.text = root, text.rstrip("/")

    def __call__(self, path: str | Path) -> str:
        try:
            relative = Path(path).relative_to(self.root)
        except ValueError:
            return str(path)
        return self.text if relative == Path(".") else f"{self.text}/{relative}"


def _decode_all(
    paths: list[str], shown: _Shown, image_size: tuple[int, int] | None
) -> list[torch.Tensor]:
    # PIL's decoders and resizing release the GIL: threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: _decode(p, shown, image_size), paths))


def image_files(folder: Path) -> list[Path]:
    """Every image under ``folder``, at any depth, in sorted order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)


def decode(path: Path, channels: int, image_size: tuple[int, int] | None) -> torch.Tensor:
    """One image as its study decoded it: uint8 with ``channels`` channels (grayscale or RGB),
    resized to ``image_size`` if the study resized its images.

    Raises:
        TaskError: the file is not an image PIL can read.
    """
    return _decode(str(path), _Shown(path.parent, str(path.parent)), image_size, channels)


def _decode(
    path: str, shown: _Shown, image_size: tuple[int, int] | None, channels: int | None = None
) -> torch.Tensor:
    """One image as uint8 C×H×W, resized to ``image_size`` if given: ``channels`` of them, or
    one for grayscale and three for anything else (alpha and palettes dropped), opened by PIL
    as torchvision's own folder loader opens it, but without forcing RGB."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    try:
        with Image.open(path) as image:
            if image.mode in ("I", "I;16", "F"):  # 16-bit or float grayscale: scaled to 8 bits
                array = np.asarray(image, dtype=np.float64)
                top = 65535.0 if image.mode != "F" else max(float(array.max()), 1.0)
                image = Image.fromarray((array * (255.0 / top)).round().astype(np.uint8))
            if channels is None:
                channels = 1 if image.mode in ("1", "L", "LA") else 3
            image = image.convert("L" if channels == 1 else "RGB")
            if image_size is not None and image.size != (image_size[1], image_size[0]):
                # As torchvision's Resize does a PIL image: bilinear, antialiased when shrinking.
                image = image.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
            return pil_to_tensor(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise TaskError(
            f"cannot decode image {shown(path)}: {first_line(e).replace(path, shown(path))}"
        ) from None


def _stack(images: list[torch.Tensor], paths: list[str], shown: _Shown) -> torch.Tensor:
    """One uint8 N×C×H×W tensor: grayscale if every image is, else RGB."""
    first = tuple(images[0].shape[1:])
    odd = next((i for i, image in enumerate(images) if tuple(image.shape[1:]) != first), None)
    if odd is not None:
        raise TaskError(
            f"images of different sizes: {shown(paths[0])} is {first[0]}×{first[1]} and "
            f"{shown(paths[odd])} is {images[odd].shape[1]}×{images[odd].shape[2]}; set "
            "task.image_size = [height, width] to resize them as they are read"
        )
    channels = 3 if any(image.shape[0] == 3 for image in images) else 1
    out = torch.empty((len(images), channels, *first), dtype=torch.uint8)
    for i, image in enumerate(images):
        out[i] = image.expand(channels, -1, -1)  # a grayscale image among colour ones: 3 equal
    return out
