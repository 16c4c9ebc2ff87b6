"""Search quality on the same trial budget: this project's default MAE search space vs TAO's, and TPE vs random.

    python benchmarks/bench_search.py [--trials 8] [--epochs 4] [--seeds 1] [--out DIR]

Three searches of MAE pretraining (the demo's spec: ViT micro, 4-px patches, 32 px, the real digits), each
with the same budget (--trials trials of up to --epochs epochs, two at a time, ASHA) and the same seed:

  ours     the curated space (search_spaces/pretrain.yaml: lr log-uniform in [1e-5, 3e-3], weight decay,
           schedule, warmup), TPE                                    -- what `automl run` does by default
  tao      TAO's default space as TAO searches it: uniform over the validation bounds, lr in (0, 1],
           momentum in [0, 1), backbone_multiplier in (0, 10], with the schedule and warmup; TPE
  random   the curated space, random search instead of TPE

Reported per search: the best train_loss, trials that diverged or failed, and the trial-epochs (epochs
trained, summed over trials, in the order results arrived) until some trial first reached a target loss.
The target is the worst of the three best losses plus 10%, so that every search reaches it. Ratios against
`ours` follow: best loss (other / ours: above 1, ours found a lower loss) and trial-epochs to the target
(other / ours: above 1, ours got there sooner). With --seeds N the searches repeat with N seeds and the
ratios are of the medians.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from automl.demo import DEMO_SPEC
from mae.data.digits import build_digits_dataset  # noqa: E402

TAO_SPACE = """\
# TAO's default search for MAE: the validation bounds themselves, uniformly.
stage: pretrain
parameters:
  train.optim.lr: uniform(0, 1)
  train.optim.momentum: uniform(0, 1)
  train.optim.backbone_multiplier: uniform(0, 10)
  train.optim.lr_scheduler: choice(cosine, MultiStep)
  train.optim.warmup_epochs: int(0, 10)
"""

ARMS = {
    "ours": {"algorithm": "tpe", "space": None},
    "tao": {"algorithm": "tpe", "space": "tao"},
    "random": {"algorithm": "random", "space": None},
}


def run_arm(name: str, seed: int, args, data: dict, root: Path, tao_file: Path) -> dict:
    import automl

    arm = ARMS[name]
    out = root / f"{name}-{seed}"
    overrides = [
        f"results_dir={out}",
        f"dataset.train_data_sources={data['train']}",
        f"dataset.val_data_sources={data['val']}",
        f"num_epochs={args.epochs}",
    ]
    t0 = time.time()
    automl.run(
        DEMO_SPEC,
        overrides,
        algorithm=arm["algorithm"],
        search_space=str(tao_file) if arm["space"] == "tao" else None,
        max_trials=args.trials,
        max_concurrent=2,
        seed=seed,
        max_consecutive_failures=0,  # TAO's space diverges often; count it, do not stop
        deploy=False,
        progress_interval_s=1e9,
    )
    state = json.loads((out / "automl" / "state.json").read_text())
    results = []  # (arrival order, loss)
    for t in state["trials"].values():
        for h in t["history"].values():
            loss = h.get("train_loss")
            if loss is not None and math.isfinite(loss):
                results.append((h["seq"], loss))
    results.sort()
    trials = list(state["trials"].values())
    return {
        "arm": name,
        "seed": seed,
        "best": min((loss for _, loss in results), default=math.inf),
        "results": results,
        "trial_epochs": sum(int(t.get("epochs") or 0) for t in trials),
        "failed": sum(t["status"] == "failed" for t in trials),
        "seconds": time.time() - t0,
    }


def epochs_to(results: list[tuple[int, float]], target: float) -> float:
    for i, (_, loss) in enumerate(results, start=1):
        if loss <= target:
            return float(i)
    return math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", help="keep the experiments here (default: a temporary folder)")
    args = parser.parse_args()
    from mae.cli import setup_logging

    setup_logging()
    root = Path(args.out or tempfile.mkdtemp(prefix="bench_search-"))
    root.mkdir(parents=True, exist_ok=True)
    data = build_digits_dataset(root / "data")
    tao_file = root / "tao_space.yaml"
    tao_file.write_text(TAO_SPACE)
    runs: dict[str, list[dict]] = {name: [] for name in ARMS}
    for seed in range(args.seeds):
        for name in ARMS:
            runs[name].append(run_arm(name, seed, args, data, root, tao_file))
    print(
        f"\nsearch quality, {args.trials} trials x up to {args.epochs} epochs each, ASHA, {args.seeds} seed(s)"
    )
    print(
        f"{'search':8} {'best train_loss':>16} {'failed':>7} {'trial-epochs':>13} {'to target':>10} {'seconds':>8}"
    )
    med: dict[str, dict[str, float]] = {}
    for seed in range(args.seeds):
        target = 1.10 * max(runs[name][seed]["best"] for name in ARMS)
        for name in ARMS:
            runs[name][seed]["to_target"] = epochs_to(runs[name][seed]["results"], target)
    for name in ARMS:
        r = runs[name]
        med[name] = {
            "best": statistics.median(x["best"] for x in r),
            "to_target": statistics.median(x["to_target"] for x in r),
        }
        for x in r:
            print(
                f"{name:8} {x['best']:16.4f} {x['failed']:7d} {x['trial_epochs']:13d} "
                f"{x['to_target']:10.0f} {x['seconds']:8.0f}"
            )
    print("\nratios against ours (medians over seeds):")
    for name in ("tao", "random"):
        best_ratio = med[name]["best"] / med["ours"]["best"]
        speed = med[name]["to_target"] / med["ours"]["to_target"]
        print(
            f"  {name:7} best train_loss {best_ratio:.2f}x ours (>1: ours lower);  "
            f"trial-epochs to target {speed:.2f}x ours (>1: ours sooner)"
        )
    (root / "bench_search.json").write_text(
        json.dumps({"args": vars(args), "runs": runs, "medians": med}, indent=1, default=str)
    )
    print(f"\nexperiments and bench_search.json in {root}")


if __name__ == "__main__":
    main()
