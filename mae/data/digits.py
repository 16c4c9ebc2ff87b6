"""scikit-learn's 1,797 real handwritten digits (10 classes) as image archives: the demo's and the tests' data.

    paths = build_digits_dataset("data")   # {"train": .../images_train.tar.gz, "val": ..., "test": ...}
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from mae.errors import MissingDependencyError
from mae.fileio import atomic_open

SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}


def build_digits_dataset(out_dir: str | Path, *, size: int = 32, seed: int = 0) -> dict[str, Path]:
    """Write the digits as images_<split>.tar.gz (class folders '0'..'9'); returns split -> archive path.

    A stratified, seeded split: every class is in every split, and reruns give identical archives.
    Existing archives are kept (the build is deterministic), so a rerun costs nothing.
    """
    try:
        import numpy as np
        from PIL import Image
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise MissingDependencyError(
            f"the demo dataset needs scikit-learn and pillow ({e.name} is missing): pip install scikit-learn pillow"
        ) from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {split: out / f"images_{split}.tar.gz" for split in SPLITS}
    if all(p.exists() for p in paths.values()):
        return paths
    digits = load_digits()
    rng = np.random.default_rng(seed)
    assignment: dict[str, list[int]] = {s: [] for s in SPLITS}
    for cls in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == cls))
        n_train = round(len(idx) * SPLITS["train"])
        n_val = round(len(idx) * SPLITS["val"])
        assignment["train"] += idx[:n_train].tolist()
        assignment["val"] += idx[n_train : n_train + n_val].tolist()
        assignment["test"] += idx[n_train + n_val :].tolist()
    for split, indices in assignment.items():
        with atomic_open(paths[split], "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
            for i in sorted(indices):
                pixels = (digits.images[i] * (255.0 / 16.0)).clip(0, 255).astype("uint8")
                img = Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                info = tarfile.TarInfo(f"{digits.target[i]}/digit_{i:04d}.png")
                info.size = buf.tell()
                info.mtime = 0  # reproducible archives
                buf.seek(0)
                tar.addfile(info, buf)
    return paths
