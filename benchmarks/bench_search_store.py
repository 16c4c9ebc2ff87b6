"""An 8-trial AutoML search on real-photo JPEGs: how often each image is decoded, store on against store off.

    .venv/bin/python benchmarks/bench_search_store.py                       # 2,000 JPEGs of 500x375, 8 trials
    .venv/bin/python benchmarks/bench_search_store.py --out benchmarks/results/search_store.json

The same search twice through the public API (`automl.run(spec, overrides, automl.SearchOptions(...))`):
MAE pretraining of a ViT micro at 64 px on `--images` JPEGs cut from scikit-learn's sample photos
(benchmarks/photo_jpegs.py), `--trials` trials of up to `--epochs` epochs, two at a time, TPE + ASHA, the same
seed; once with `dataset.store=true` (the default: every trial reads the decoded store, built by whichever
trial comes first), once with `dataset.store=false` (every trial decodes every file at every epoch). Each
search starts with an empty data cache, so the store-on search pays for building the store.

Decodes are counted in every process, Ray's trial workers included, by `MAE_COUNT_DECODES`
(mae.data.decode_count): each decode appends the file's path to a counter file. Reported per search: images
decoded, decodes per image (goal with the store: exactly 1), trial-epochs trained (`automl.experiment_status`),
wall time, and the wall time ratio (off / on).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_jpegs import make_photo_jpegs  # noqa: E402

SPEC = {
    "model_name": "bench_store",
    "dataset": {
        "batch_size": 64,
        "num_workers_per_gpu": 0,  # trials share the machine's cores: no loader processes
        "augmentation": {"input_size": 64},
    },
    "model": {"arch": "vit_micro_patch4", "decoder_depth": 1, "decoder_embed_dim": 64},
    "train": {"stage": "pretrain", "optim": {"lr": 1.5e-3, "lr_scheduler": "cosine"}},
}


def search(root: Path, work: Path, store: bool, args) -> dict:
    import automl
    from mae.data.decode_count import ENV, read_decode_counts

    counter = work / "decodes.txt"
    os.environ[ENV] = str(counter)  # inherited by Ray's workers, which run the trials
    os.environ["MAE_CACHE_DIR"] = str(work / "cache")  # an empty cache: the store-on search builds its store
    spec = work / "spec.yaml"
    spec.write_text(json.dumps({**SPEC, "results_dir": str(work / "results")}))
    overrides = [
        f"dataset.train_data_sources={root}",
        f"train.num_epochs={args.epochs}",
        f"dataset.store={'true' if store else 'false'}",
    ]
    options = automl.SearchOptions(
        max_trials=args.trials, max_concurrent=args.concurrent, seed=0, deploy=False, policy="auto"
    )
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    automl.run(str(spec), overrides, options)
    wall = time.perf_counter() - t0
    counts = read_decode_counts(counter)
    status = automl.experiment_status(work / "results")
    trials = list((status.get("state") or {}).get("trials", {}).values())
    epochs = sum(int(t.get("epochs") or 0) for t in trials)
    per_image = list(counts.values())
    return {
        "store": store,
        "wall_seconds": round(wall, 1),
        "load_1min_before": round(load, 2),
        "images_decoded": len(counts),
        "decodes": sum(per_image),
        "decodes_per_image": {
            "min": min(per_image, default=0),
            "median": statistics.median(per_image) if per_image else 0,
            "max": max(per_image, default=0),
        },
        "trials": len(trials),
        "trial_epochs": epochs,
        "best_train_loss": (status.get("best") or {}).get("value"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--data", type=Path, help="where the JPEG set is (made there when missing)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument(
        "--order",
        choices=("on-off", "off-on"),
        default="on-off",
        help="which search runs first (load drifts)",
    )
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="bench_search_store_")
    root = args.data or Path(tmp.name) / "jpegs"
    make_photo_jpegs(root, args.images, (500, 375))
    runs = []
    for store in (True, False) if args.order == "on-off" else (False, True):
        work = Path(tmp.name) / ("store_on" if store else "store_off")
        work.mkdir()
        run = search(root, work, store, args)
        runs.append(run)
        print(
            f"store {'on ' if store else 'off'}: {run['wall_seconds']:.0f} s, {run['images_decoded']} images decoded "
            f"{run['decodes']} times (per image {run['decodes_per_image']}), load {run['load_1min_before']}"
        )
    on, off = sorted(runs, key=lambda r: not r["store"])
    once = on["images_decoded"] == args.images and on["decodes_per_image"]["max"] == 1
    ratio = off["wall_seconds"] / on["wall_seconds"]
    print(f"store on: each image decoded once: {once}; wall time off / on: {ratio:.2f}x")
    if args.out:
        from mae.fileio import atomic_write_text

        result = {
            "benchmark": f"{args.trials}-trial AutoML search (TPE + ASHA, {args.concurrent} at a time), decoded "
            "store on vs off",
            "images": args.images,
            "image_size": [500, 375],
            "spec": SPEC,
            "epochs_per_trial": args.epochs,
            "each_image_decoded_once_with_store": once,
            "order": args.order,
            "wall_time_ratio_off_vs_on": round(ratio, 3),
            "runs": runs,
            "cpus": os.cpu_count(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
