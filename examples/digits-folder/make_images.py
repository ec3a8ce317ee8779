"""Write scikit-learn's bundled 8×8 digits as an image folder, the way your own images would lie:

    images/train/0/0000.png ... images/train/9/...   (1,438 images)
    images/test/0/...                                 (359 images)

torchvision's ImageFolder layout, one folder per class, split into train/ and test/ (a val/ folder
would be used too; without one, each study carves its validation split from train/). The images
are 8-bit grayscale PNGs, the digits' 0..16 ink scaled to 0..255.

    python examples/digits-folder/make_images.py [--out FOLDER]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

TEST_FRACTION = 0.2


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
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    n_test = round(len(images) * TEST_FRACTION)
    for split, indices in (("test", order[:n_test]), ("train", order[n_test:])):
        for i in indices:
            folder = out / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
    print(f"wrote {len(images)} images to {out}/train and {out}/test")


if __name__ == "__main__":
    main()
