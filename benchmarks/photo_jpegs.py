"""A folder of real-photo JPEGs for the input-pipeline benchmarks, cut from scikit-learn's sample images.

scikit-learn ships two 640x427 photos (`china.jpg`, `flower.jpg`; no download). Each output image is one of
them, rescaled by a random factor in [1, 1.6], mirrored at random, cut at a random place to `size`
(500x375 by default, a typical web photo) and re-encoded at a random JPEG quality in [85, 95], so files
differ in content and size the way a photo collection does. Images go into `classes` class folders (as an
ImageFolder tree; pretraining ignores the classes).

    python benchmarks/photo_jpegs.py DIR [--images 2000] [--size 500 375]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def make_photo_jpegs(
    root: str | Path, n: int, size: tuple[int, int] = (500, 375), *, classes: int = 8, seed: int = 0
) -> Path:
    """Write `n` JPEGs of `size` (w, h) under root/class<k>/; returns root. Reuses a complete earlier set."""
    from sklearn.datasets import load_sample_images

    root = Path(root)
    marker = root / f".complete-{n}-{size[0]}x{size[1]}-{seed}"
    if marker.is_file():
        return root
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        photo = photos[i % len(photos)]
        factor = max(w / photo.width, h / photo.height) * rng.uniform(1.0, 1.6)
        big = photo.resize((round(photo.width * factor), round(photo.height * factor)), Image.BICUBIC)
        if rng.random() < 0.5:
            big = big.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = int(rng.integers(0, big.width - w + 1))
        y = int(rng.integers(0, big.height - h + 1))
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        big.crop((x, y, x + w, y + h)).save(folder / f"{i:06d}.jpg", quality=int(rng.integers(85, 96)))
    marker.write_text("")
    return root


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    args = ap.parse_args()
    make_photo_jpegs(args.root, args.images, tuple(args.size))
    print(f"{args.images} JPEGs of {args.size[0]}x{args.size[1]} in {args.root}")
