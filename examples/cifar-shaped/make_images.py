"""Write a CIFAR-shaped image folder: scikit-learn's bundled digits as 32×32 colour pictures.

    images/train/0/0000.png ... images/train/9/...   (1,438 images)
    images/test/0/...                                 (359 images)

Each 8×8 digit is scaled to 24×24 and drawn at a random place on a 32×32 RGB background of a
random dark colour with pixel noise, in a random light colour: ten classes, three channels, CIFAR-10's
shape, with the colour and position nuisance a photo has and nothing of digits' fixed layout.
Nothing is downloaded, so the benchmarks can run on a CPU with no network.

    python examples/cifar-shaped/make_images.py [--out FOLDER]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

TEST_FRACTION = 0.2
SIZE, GLYPH = 32, 24


def picture(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One digit (8×8, ink 0..16) as a 32×32×3 uint8 picture."""
    glyph = np.asarray(Image.fromarray((ink * 255 / 16).astype(np.uint8)).resize((GLYPH, GLYPH)))
    alpha = glyph[..., None] / 255.0
    background = rng.uniform(0, 110, 3)  # a dark colour
    foreground = rng.uniform(150, 255, 3)  # a light one: the digit stays visible
    image = background + rng.normal(0, 10, (SIZE, SIZE, 3))
    top, left = rng.integers(0, SIZE - GLYPH + 1, 2)
    patch = image[top : top + GLYPH, left : left + GLYPH]
    image[top : top + GLYPH, left : left + GLYPH] = (1 - alpha) * patch + alpha * foreground
    return np.clip(image, 0, 255).round().astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "images",
        help="default: images/ beside this script",
    )
    out = parser.parse_args().out
    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.images))
    n_test = round(len(order) * TEST_FRACTION)
    for split, indices in (("test", order[:n_test]), ("train", order[n_test:])):
        for i in indices:
            folder = out / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture(digits.images[i], rng)).save(folder / f"{i:04d}.png")
    print(f"wrote {len(order)} images to {out}/train and {out}/test")


if __name__ == "__main__":
    main()
