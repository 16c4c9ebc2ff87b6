"""Decode + augment throughput of the data layer against torchvision's ImageFolder pipeline.

Both sides read the same JPEG files in the same run, through a DataLoader with the same batch size and
workers, and produce the same kind of batch (float32 N x 3 x S x S, normalised):

  pretrain   ours: ImageFolderSSL + build_pretrain_transform     tv: ImageFolder + RandomResizedCrop,
                                                                      RandomHorizontalFlip, ToTensor, Normalize
  finetune   ours: ClassFolderDataset + build_finetune_transform  tv: ImageFolder + timm create_transform
             (RandAugment rand-m9-mstd0.5-inc1, re_prob 0.25)         (same policy, same settings; its
                                                                      posterize patched as ours, since
                                                                      timm's crashes under Pillow 13)
  eval       ours: ClassFolderDataset + build_eval_transform      tv: ImageFolder + Resize, CenterCrop,
                                                                      ToTensor, Normalize

Runs alternate between the two sides (ours, tv, ours, tv, ...) and the best of `--repeats` is kept, so
drift of the machine affects both alike. Index time (building the dataset; ours reads every header to drop
unreadable files, ImageFolder only lists names) is reported separately.

    .venv/bin/python benchmarks/bench_data.py                 # 512 images of 500x375, workers 0 and 2
    .venv/bin/python benchmarks/bench_data.py --images 2000 --workers 4 8 --size 640 480
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_images(root: Path, n: int, size: tuple[int, int], classes: int = 8) -> None:
    """JPEGs (quality 90) with smooth content and noise, like photos in file size and decode cost."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        c = i % classes
        base = np.stack(
            [(xx * (1 + c) / w * 255), (yy / h * 255), ((xx + yy) * (i % 7 + 1) / (w + h) * 255)], axis=-1
        )
        img = np.clip(base % 256 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:05d}.jpg", quality=90)


def throughput(loader, n_images: int) -> float:
    t0 = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += batch[0].shape[0]
    dt = time.perf_counter() - t0
    assert seen == n_images, (seen, n_images)
    return n_images / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pipelines", nargs="+", default=["pretrain", "finetune", "eval"])
    ap.add_argument("--data", type=Path, help="use this class-folder tree instead of generating one")
    args = ap.parse_args()

    from timm.data import create_transform
    from torchvision import datasets
    from torchvision import transforms as T

    from mae.config import AugmentationConfig
    from mae.data.transforms import pil_safe_policy

    def safe_timm(tf):  # timm's posterize fails under Pillow >= 13 (see mae.data.transforms._posterize)
        for t in tf.transforms:
            pil_safe_policy(t)
        return tf

    from mae.data import (
        ClassFolderDataset,
        ImageFolderSSL,
        build_eval_transform,
        build_finetune_transform,
        build_loader,
        build_pretrain_transform,
    )

    torch.set_num_threads(1)
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
        root = Path(tmp.name)
        t0 = time.perf_counter()
        make_images(root, args.images, tuple(args.size))
        print(
            f"generated {args.images} JPEGs of {args.size[0]}x{args.size[1]} in {time.perf_counter() - t0:.1f}s"
        )
    else:
        root = args.data

    aug = AugmentationConfig(input_size=args.input_size, re_prob=0.25)
    mean, std = list(aug.mean), list(aug.std)
    interp = T.InterpolationMode.BILINEAR
    tv_tf = {
        "pretrain": T.Compose(
            [
                T.RandomResizedCrop(
                    aug.input_size,
                    scale=(aug.min_scale, aug.max_scale),
                    ratio=(aug.min_ratio, aug.max_ratio),
                    interpolation=interp,
                ),
                T.RandomHorizontalFlip(aug.hflip),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        ),
        "finetune": safe_timm(
            create_transform(
                aug.input_size,
                is_training=True,
                scale=(aug.min_scale, aug.max_scale),
                ratio=(aug.min_ratio, aug.max_ratio),
                hflip=aug.hflip,
                color_jitter=None,
                auto_augment=aug.auto_aug,
                interpolation=aug.interpolation,
                mean=tuple(mean),
                std=tuple(std),
                re_prob=aug.re_prob,
                re_mode="pixel",
                re_count=1,
            )
        ),
        "eval": T.Compose(
            [
                T.Resize(int(aug.input_size / 0.875), interpolation=interp),
                T.CenterCrop(aug.input_size),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        ),
    }
    ours_tf = {
        "pretrain": build_pretrain_transform(aug),
        "finetune": build_finetune_transform(aug),
        "eval": build_eval_transform(aug),
    }

    t0 = time.perf_counter()
    tv_index = datasets.ImageFolder(str(root))
    tv_index_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours_index = ClassFolderDataset(root)
    ours_index_s = time.perf_counter() - t0
    n = len(ours_index)
    assert n == len(tv_index)
    print(
        f"index {n} files: ours {ours_index_s * 1000:.0f} ms (header check included), "
        f"ImageFolder {tv_index_s * 1000:.0f} ms"
    )
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, batch {args.batch_size}, best of {args.repeats}"
    )
    print(f"{'pipeline':<10}{'workers':>8}{'ours img/s':>12}{'tv img/s':>12}{'ours/tv':>9}")

    for name in args.pipelines:
        for workers in args.workers:
            if name == "pretrain":
                ours_ds = ImageFolderSSL(root, ours_tf[name])
            else:
                ours_ds = ClassFolderDataset(root, ours_tf[name])
            tv_ds = datasets.ImageFolder(str(root), tv_tf[name])
            best = {"ours": 0.0, "tv": 0.0}
            for _ in range(args.repeats):
                for side, ds in (("ours", ours_ds), ("tv", tv_ds)):
                    loader = build_loader(
                        ds,
                        args.batch_size,
                        shuffle=True,
                        num_workers=workers,
                        seed=0,
                        persistent_workers=False,
                    )
                    if side == "tv":  # torchvision's own loader defaults, same workers and batch
                        loader = torch.utils.data.DataLoader(
                            ds, args.batch_size, shuffle=True, num_workers=workers
                        )
                    best[side] = max(best[side], throughput(loader, n))
            print(
                f"{name:<10}{workers:>8}{best['ours']:>12.1f}{best['tv']:>12.1f}{best['ours'] / best['tv']:>9.2f}"
            )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
