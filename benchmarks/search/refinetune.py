"""The configurations each arm selected, pretrained again and finetuned with a recipe that converges.

    python -m benchmarks.search.refinetune [--report benchmarks/results/search.json] [--arms ours tao]
        [--seeds 10] [--finetune-epochs 40] [--out results/bench_refinetune]

The benchmark's 10-epoch finetune leaves every classifier at 0.20-0.38 top-1 (docs/automl.md, "What decides the
finetune figure"); a 40-epoch run of the same recipe levels off (on seed 0's selection of `ours`, val top-1 0.88-0.90
over its last 12 epochs). The searches' own checkpoints are not kept in git, so this reads each arm's selected
configuration and epoch count from a committed report, pretrains it again with the arm's settings (the demo spec,
the benchmark's epochs, the arm's overrides; TAO's momentum and backbone_multiplier are left at the spec's values,
as the TAO arm's AdamW ignores them), `train.seed` = the benchmark seed, and finetunes the encoder with the
benchmark's recipe (benchmarks.search.downstream.RECIPE) for --finetune-epochs, top-1 on the digits' test split.
So the figure is for the selected configuration retrained, not the search's own checkpoint. Finished work in --out
is read back. Writes benchmarks/results/search_refinetune.json with report.downstream's figures (paired by seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.search import report  # noqa: E402
from benchmarks.search.arms import ARMS, TAO_IGNORED  # noqa: E402
from benchmarks.search.downstream import finetune_top1, probe_top1  # noqa: E402
from benchmarks.search.harness import DEMO_SPEC, data_overrides  # noqa: E402


def pretrain_selected(run: dict, arm: str, epochs: int, data: dict, out: Path) -> Path:
    """The run's selected configuration pretrained again for `epochs` (read back when `out` holds it)."""
    from mae.actions import train as train_action
    from mae.layout import TrainLayout
    from mae.spec import load_spec

    train = out / "train"
    status = TrainLayout(train).status
    if status.exists() and '"SUCCESS"' in status.read_text():  # a finished pretrain is read back
        return train
    config = {k: v for k, v in run["selected"]["config"].items() if k not in TAO_IGNORED}
    cfg = load_spec(
        DEMO_SPEC,
        [
            f"results_dir={out}",
            *data_overrides(data),
            f"train.num_epochs={epochs}",
            f"train.seed={run['seed']}",
            *ARMS[arm].overrides,
            *(f"{k}={v}" for k, v in config.items()),
        ],
        action="train",
    )
    train_action.run(cfg)
    return train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.search.refinetune", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--report", default=str(REPO / "benchmarks" / "results" / "search.json"))
    p.add_argument("--arms", nargs="+", default=["ours", "tao"])
    p.add_argument("--seeds", type=int, default=10, help="the report's first N seeds")
    p.add_argument("--finetune-epochs", type=int, default=40)
    p.add_argument("--out", default="results/bench_refinetune", help="runs folder (kept; resumable)")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "search_refinetune.json"))
    args = p.parse_args(argv)
    from mae.cli import setup_logging
    from mae.data.digits import build_digits_dataset
    from mae.fileio import atomic_write_text

    if not Path(args.report).is_file():
        print(f"error: no benchmark report at {args.report}", file=sys.stderr)
        return 2
    source = json.loads(Path(args.report).read_text())
    unknown = [a for a in args.arms if a not in source["runs"] or a not in ARMS]
    if unknown:
        print(
            f"error: {', '.join(unknown)} not in {args.report} (arms: {', '.join(source['runs'])})",
            file=sys.stderr,
        )
        return 2
    setup_logging()
    t0 = time.time()
    root = Path(args.out).resolve()
    data = build_digits_dataset(root / "data")
    epochs = source["budget"]["epochs"]
    runs: dict[str, list[dict]] = {a: [] for a in args.arms}
    for seed in range(args.seeds):  # seed by seed, arms alternating: a stopped run leaves paired seeds
        for arm in args.arms:
            run = next(r for r in source["runs"][arm] if r["seed"] == seed)
            rec = {"seed": seed, "selected": run["selected"], "source_finetune": run.get("finetune")}
            if run["selected"] is not None:
                where = root / f"{arm}-{seed}"
                encoder = pretrain_selected(run, arm, epochs, data, where / "pretrain")
                rec["probe"] = probe_top1(encoder, data, where / "probe")
                rec["finetune"] = finetune_top1(
                    encoder, data, where / "finetune", epochs=args.finetune_epochs
                )
            runs[arm].append(rec)
            top1 = (rec.get("finetune") or {}).get("top1")
            print(f"refinetune: {arm} seed {seed}: finetune top-1 {top1}", flush=True)
    out = {
        "command": "python -m benchmarks.search.refinetune " + " ".join(sys.argv[1:]),
        "report": report.repo_relative(args.report),
        "pretrain_epochs": epochs,
        "finetune_epochs": args.finetune_epochs,
        "seeds": args.seeds,
        "wall_s": round(time.time() - t0, 1),
        "figures": {"downstream": report.downstream(runs, args.arms)},
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.json), json.dumps(report.strict_json(out), indent=1) + "\n")
    print(json.dumps(out["figures"]["downstream"]["vs"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
