"""Training input pipeline: ours (the decoded store) against torchvision's ImageFolder, same transforms.

    .venv/bin/python benchmarks/bench_data_store.py                      # 2,000 JPEGs of 500x375, 2 workers
    .venv/bin/python benchmarks/bench_data_store.py --pairs 7 --out benchmarks/results/data_pipeline.json

Data: `--images` JPEGs cut from scikit-learn's sample photos (benchmarks/photo_jpegs.py). Both sides read the
same files through a DataLoader with the same batch size, workers and shuffling, and yield the same batch: MAE
pretraining's augmentation (RandomResizedCrop 224 px, scale 0.1-2.0, ratio 0.75-1.33, bilinear; horizontal
flip 0.5; normalised float32 N x 3 x 224 x 224):

  ours  what `mae train` runs: ImageFolderSSL through the decoded store (`mae.data.store`, short side 256),
        build_pretrain_transform(stored=True, output="uint8") in the workers (crops of the stored pixels, no
        decoding), then BatchAugment on each uint8 batch (normalising; in the training step it runs on the
        training device, here on the CPU in the timed loop)
  tv    torchvision.datasets.ImageFolder + RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize,
        decoding every JPEG at every epoch

The store is built once before the runs (its build time is reported, as the one-time cost an epoch or a
trial amortises). Then `--pairs` pairs of runs alternate (ours, tv, ours, tv, ...), each one pass over all
images with fresh workers, so that load from other processes on the machine falls on both sides alike; the
1-minute load average before each run is recorded. The result is the median of the per-pair ratios
(ours img/s / tv img/s), also given as CPU time per image (main process + workers), which load affects less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_jpegs import make_photo_jpegs  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the loader workers, once joined)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def one_pass(loader, n_images: int, finish=None) -> dict:
    """One pass over the data; `finish` completes each batch in this process (ours: BatchAugment, which
    normalises the uint8 batch as the training step does on its device), timed with the rest."""
    load = os.getloadavg()[0]
    c0, t0 = cpu_seconds(), time.perf_counter()
    seen = 0
    for batch in loader:
        images = finish(batch[0]) if finish is not None else batch[0]
        assert images.dtype == torch.float32
        seen += images.shape[0]
    del loader  # joins the workers, so their CPU time is counted
    dt = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    if seen != n_images:
        raise RuntimeError(f"a pass yielded {seen} images, expected {n_images}")
    return {
        "images_per_s": round(n_images / dt, 1),
        "seconds": round(dt, 3),
        "cpu_ms_per_image": round(1000 * cpu / n_images, 3),
        "load_1min_before": round(load, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--pairs", type=int, default=5, help="alternating (ours, tv) runs; the median ratio is kept"
    )
    ap.add_argument("--data", type=Path, help="where the JPEG set is (made there when missing)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    if args.pairs < 1:
        ap.error("--pairs must be at least 1")

    import PIL
    import torchvision
    from torchvision import datasets
    from torchvision import transforms as T

    from mae.config import AugmentationConfig
    from mae.data import ImageFolderSSL, build_loader, build_pretrain_transform
    from mae.data.batch_augment import BatchAugment
    from mae.data.store import default_short_side, open_store, use_store

    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(prefix="bench_store_")
    root = args.data or Path(tmp.name) / "jpegs"
    t0 = time.perf_counter()
    make_photo_jpegs(root, args.images, tuple(args.size))
    print(
        f"{args.images} JPEGs of {args.size[0]}x{args.size[1]} ready in {time.perf_counter() - t0:.1f} s ({root})"
    )

    aug = AugmentationConfig()  # MAE pretraining's defaults: 224 px, scale 0.1-2.0, ratio 0.75-1.33, bilinear
    short = default_short_side(aug.input_size)
    ours = ImageFolderSSL(root, build_pretrain_transform(aug))
    if len(ours) != args.images:
        raise SystemExit(
            f"{root} holds {len(ours)} images, expected {args.images}; use an empty --data folder"
        )
    t0 = time.perf_counter()
    store = open_store(ours.files, short, label=str(root), cache_dir=Path(tmp.name) / "cache")
    build_s = time.perf_counter() - t0
    use_store(ours, store, build_pretrain_transform(aug, stored=True, output="uint8"))
    finish = BatchAugment(aug.mean, aug.std, size=aug.input_size, reuse_output=True)  # as the CPU engine
    print(
        f"decoded store: {len(store)} images at short side {short} px, {store.nbytes / 2**20:.0f} MiB, "
        f"built in {build_s:.1f} s"
    )
    tv = datasets.ImageFolder(
        str(root),
        T.Compose(
            [
                T.RandomResizedCrop(
                    aug.input_size,
                    scale=(aug.min_scale, aug.max_scale),
                    ratio=(aug.min_ratio, aug.max_ratio),
                    interpolation=T.InterpolationMode.BILINEAR,
                ),
                T.RandomHorizontalFlip(aug.hflip),
                T.ToTensor(),
                T.Normalize(aug.mean, aug.std),
            ]
        ),
    )

    def loader(side: str, seed: int):
        if side == "ours":
            return build_loader(
                ours,
                args.batch_size,
                shuffle=True,
                num_workers=args.workers,
                seed=seed,
                persistent_workers=False,
            )
        g = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(
            tv, args.batch_size, shuffle=True, num_workers=args.workers, generator=g
        )

    print(
        f"{'pair':>4} {'ours img/s':>11} {'tv img/s':>9} {'ratio':>6} {'ours cpu ms':>12} {'tv cpu ms':>10} {'load':>5}"
    )
    runs = []
    for i in range(args.pairs):
        pair = {
            side: one_pass(loader(side, i), args.images, finish if side == "ours" else None)
            for side in ("ours", "tv")
        }
        pair["ratio"] = round(pair["ours"]["images_per_s"] / pair["tv"]["images_per_s"], 3)
        runs.append(pair)
        print(
            f"{i:>4} {pair['ours']['images_per_s']:>11.1f} {pair['tv']['images_per_s']:>9.1f} {pair['ratio']:>6.2f} "
            f"{pair['ours']['cpu_ms_per_image']:>12.2f} {pair['tv']['cpu_ms_per_image']:>10.2f} "
            f"{pair['ours']['load_1min_before']:>5.1f}"
        )
    ratio = statistics.median(p["ratio"] for p in runs)
    cpu_ratio = statistics.median(p["tv"]["cpu_ms_per_image"] / p["ours"]["cpu_ms_per_image"] for p in runs)
    ours_med = statistics.median(p["ours"]["images_per_s"] for p in runs)
    tv_med = statistics.median(p["tv"]["images_per_s"] for p in runs)
    saved_per_epoch = args.images / tv_med - args.images / ours_med
    print(
        f"median: ours {ours_med:.0f} img/s, ImageFolder {tv_med:.0f} img/s; ratio {ratio:.2f}x "
        f"(CPU time per image {cpu_ratio:.2f}x less); the store's build ({build_s:.1f} s) pays for itself "
        f"within {build_s / saved_per_epoch:.1f} epochs"
    )
    if args.out:
        from mae.fileio import atomic_write_text

        result = {
            "benchmark": "training input pipeline: decoded store vs torchvision ImageFolder, same transforms",
            "images": args.images,
            "image_size": list(args.size),
            "source": "scikit-learn sample photos, randomly rescaled, mirrored, cut and re-encoded (JPEG q85-95)",
            "transforms": "RandomResizedCrop(224, scale=(0.1, 2.0), ratio=(0.75, 1.33), bilinear), "
            "RandomHorizontalFlip(0.5), normalise to float32 (ours: per image in uint8 in the workers, "
            "normalised per batch in the main process, inside the timing)",
            "workers": args.workers,
            "batch_size": args.batch_size,
            "pairs": args.pairs,
            "ratio_vs_imagefolder": round(ratio, 3),
            "ratio_definition": "median over alternating pairs of (ours images/s) / (ImageFolder images/s)",
            "cpu_time_ratio": round(cpu_ratio, 3),
            "median_images_per_s": {"ours": ours_med, "imagefolder": tv_med},
            "store": {
                "short_side": short,
                "mib": round(store.nbytes / 2**20, 1),
                "build_seconds": round(build_s, 2),
                "break_even_epochs": round(build_s / saved_per_epoch, 2),
            },
            "runs": runs,
            "machine": {
                "cpus": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                "note": "shared with other engineers' jobs; see load_1min_before per run",
            },
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "pillow": PIL.__version__,
            },
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
