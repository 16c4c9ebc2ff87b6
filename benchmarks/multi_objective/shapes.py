"""Does a slower model shape buy accuracy on digits? Each shape of the multi-objective space trained alone.

    python -m benchmarks.multi_objective.shapes [--epochs 8] [--shapes A@S ...] [--lr 2e-3 ...]
        [--seeds 0 ...] [--set KEY=VALUE ...] [--out DIR] [--json PATH]

A front of accuracy against latency only grows past one or two trials when a slower shape (a wider ViT or a
larger input) ends more accurate than a faster one within the search's epochs. This trains each shape once, in
one process on one thread, through the product's `mae train` with the benchmark's spec and fixed from-scratch
recipe (harness.SPEC, harness.FIXED_RECIPE; `--lr` repeats each shape at other learning rates, since wider
models may want smaller ones; `--set` overrides more of the recipe, e.g. a longer-training one), and
records the validation top-1 after every epoch beside the shape's measured latency (the benchmark's deploy
profile). One seed per shape unless --seeds gives more (train.seed: the
initialisation and the batch order; the data split is fixed): a look at the trend, not an interval.
Trained shapes are read back from --out. Writes benchmarks/results/multi_objective_shapes.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.multi_objective import harness  # noqa: E402

DEFAULT_SHAPES = ("vit_micro_patch4@16", "vit_micro_patch4@24", "vit_micro_patch4@32", "vit_tiny_patch4@16")


def train_shape(
    spec: Path,
    data: dict,
    shape: str,
    lr: float,
    epochs: int,
    out: Path,
    extra: tuple[str, ...] = (),
    seed: int = 0,
) -> dict:
    """Val top-1 after each epoch of one shape trained from scratch (read back when `out` holds it)."""
    from mae.actions import train as train_action
    from mae.fileio import atomic_write_text
    from mae.layout import TrainLayout
    from mae.spec import load_spec

    done = out / "shape.json"
    if done.exists():
        return json.loads(done.read_text())
    arch, size = shape.split("@")
    pins = [p for p in harness.FIXED_RECIPE if not p.startswith("train.optim.lr=")]
    cfg = load_spec(
        spec,
        [
            f"results_dir={out}",
            *harness.data_overrides(data),
            *pins,
            f"train.optim.lr={lr}",
            f"model.arch={arch}",
            f"dataset.augmentation.input_size={size}",
            f"train.num_epochs={epochs}",
            "train.optim.monitor_name=ACC_all",
            *extra,
            f"train.seed={seed}",
        ],
        action="train",
    )
    t0 = time.time()
    train_action.run(cfg)
    by_epoch = TrainLayout(out / "train").epoch_metrics()
    acc = [round(float(by_epoch[e]["ACC_all"]), 4) for e in sorted(by_epoch)]
    res = {
        "shape": shape,
        "lr": lr,
        "seed": seed,
        "val_top1_by_epoch": acc,
        "seconds": round(time.time() - t0, 1),
    }
    atomic_write_text(done, json.dumps(res) + "\n")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.multi_objective.shapes", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), help="ARCH@INPUT_SIZE each")
    p.add_argument(
        "--lr", nargs="+", type=float, default=[2e-3], help="learning rates (the fixed recipe: 2e-3)"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="train.seed values (default: 0)")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="more recipe overrides after the fixed recipe's (e.g. dataset.batch_size=16)",
    )
    p.add_argument("--out", default="results/bench_mo_shapes", help="runs folder, kept and read back")
    p.add_argument("--json", default=str(REPO / "benchmarks/results/multi_objective_shapes.json"))
    args = p.parse_args(argv)
    from mae.errors import ConfigError
    from mae.spec import parse_override

    try:
        set_keys = [parse_override(o)[0] for o in args.set]
    except ConfigError as e:
        p.error(f"--set {e}")
    if "train.seed" in set_keys:
        p.error("give the seed with --seeds, not --set train.seed=...")

    import torch

    from mae.cli import setup_logging
    from mae.data.digits import build_digits_dataset
    from mae.fileio import atomic_write_text

    torch.set_num_threads(1)  # as the deploy profile and a trial of a two-at-a-time search on two cores
    setup_logging()
    root = Path(args.out).resolve()
    data = build_digits_dataset(root / "data")
    spec = harness.write_spec(root)
    profile = harness.measure_profile(spec, data, root, list(harness.FIXED_RECIPE))
    # runs of another --set are kept apart, not read back as this recipe's
    tag = "-set" + hashlib.sha1(" ".join(args.set).encode()).hexdigest()[:8] if args.set else ""
    t0 = time.time()
    runs = []
    for seed in args.seeds:
        for lr in args.lr:
            for shape in args.shapes:
                folder = root / (f"{shape}-lr{lr:g}{tag}" + (f"-seed{seed}" if seed else ""))
                res = train_shape(spec, data, shape, lr, args.epochs, folder, tuple(args.set), seed)
                res.setdefault("seed", seed)  # records from before --seeds have none; the folder names it
                if len(res["val_top1_by_epoch"]) != args.epochs:  # the folder name does not hold the epochs
                    p.error(
                        f"{folder} holds a run of {len(res['val_top1_by_epoch'])} epochs: give another --out"
                    )
                res["latency_ms"] = round(float(profile[shape]["latency_ms"]), 3)
                runs.append(res)
                print(
                    f"shapes: {shape} lr {lr:g} seed {seed}: val top-1 by epoch {res['val_top1_by_epoch']}",
                    flush=True,
                )
    out = {
        "command": "python -m benchmarks.multi_objective.shapes " + " ".join(sys.argv[1:]),
        "spec": harness.SPEC,
        "recipe": list(harness.FIXED_RECIPE),
        "set": list(args.set),
        "epochs": args.epochs,
        "seeds": args.seeds,
        "wall_s": round(time.time() - t0, 1),  # this invocation's: runs read back from --out cost ~0 here
        "train_s": round(sum(r["seconds"] for r in runs), 1),  # every run's training time, one thread
        "runs": runs,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    print(f"{path} in {out['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
