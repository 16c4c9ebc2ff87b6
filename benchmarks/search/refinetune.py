"""The encoders each arm selected, trained again bit for bit and finetuned with a recipe that converges.

    python -m benchmarks.search.refinetune [--report benchmarks/results/search.json [PATH[:ARM=NAME,...] ...]]
        [--arms ours tao random]
        [--seeds 10] [--finetune-epochs 40] [--scratch-seeds 3] [--out results/bench_refinetune_exact]
        [--reuse benchmarks/results/search_refinetune.json ...]

The benchmark's 10-epoch finetune leaves every classifier at 0.20-0.38 top-1 (docs/automl.md, "What decides the
finetune figure"); a 40-epoch run of the same recipe levels off (over its last 5 epochs the val top-1 of each of the
30 selected encoders' finetunes moves by at most 0.031). The searches' own checkpoints are not kept in git, so this reads each arm's selected
configuration and epoch count from a committed report and pretrains it again exactly as its trial did: the demo
spec, the benchmark's epochs, the arm's overrides, the spec's train.seed (a search does not change it), one CPU
thread (a Ray trial's share with cpus_per_trial=1); TAO's momentum and backbone_multiplier are left at the spec's
values, as the TAO arm's AdamW ignores them. Pretraining on the CPU is deterministic, so the retrained encoder is
the selected one: its final train_loss and knn_acc are compared with the report's (`reproduced`, per encoder, in
the JSON; retrained in a newly built environment, 6 of 20 encoders matched train_loss within 6e-7 while knn_acc
differed by one or two val images, a cause not pinned down). The encoder is then finetuned with the benchmark's
recipe (benchmarks.search.downstream.RECIPE) for --finetune-epochs, top-1 on the digits' test split. The control:
the same finetune from a random initialisation (--scratch-seeds), what pretraining adds at all. Finished work in --out is read back, and so are the records of
an earlier refinetune JSON (--reuse) with the same selection and finetune length. Arms may come from several
reports (each from the first that holds it; PATH:ours=ours-v1 renames a report's arm), so that a new default is
judged beside the arms of an earlier benchmark without searching them again. Writes
benchmarks/results/search_refinetune.json with report.downstream's figures (paired by seed) and the Spearman of
the selected encoders' train_loss, knn_acc and probe with their finetune top-1.
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
    """The run's selected encoder trained again as its trial trained it (read back when `out` holds it)."""
    import torch

    from mae.actions import train as train_action
    from mae.layout import TrainLayout
    from mae.spec import load_spec

    train = out / "train"
    if TrainLayout(train).finished:  # a finished pretrain is read back
        return train
    config = {k: v for k, v in run["selected"]["config"].items() if k not in TAO_IGNORED}
    cfg = load_spec(
        DEMO_SPEC,
        [
            f"results_dir={out}",
            *data_overrides(data),
            f"train.num_epochs={epochs}",
            *ARMS[arm].overrides,
            *(f"{k}={v}" for k, v in config.items()),
        ],
        action="train",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the trial's thread count: float sums in another order drift after 3 epochs
    try:
        train_action.run(cfg)
    finally:
        torch.set_num_threads(threads)
    return train


def reproduction(run: dict, train: Path) -> dict:
    """The retrained encoder at the selected epoch against the trial's report: same train_loss and knn_acc?"""
    from mae.layout import TrainLayout

    sel = run["selected"]
    kpi = TrainLayout(train).epoch_metrics().get(sel["epoch"] - 1, {})  # a report counts epochs from 1
    same = all(
        kpi.get(k) is not None and sel.get(k) is not None and abs(float(kpi[k]) - float(sel[k])) <= 1e-5
        for k in ("train_loss", "knn_acc")
    )
    return {"train_loss": kpi.get("train_loss"), "knn_acc": kpi.get("knn_acc"), "reproduced": same}


def reusable(paths: list[str], finetune_epochs: int) -> tuple[dict, dict]:
    """Records of earlier refinetune JSONs at the same finetune length: (arm, seed) -> [record, ...] in the
    order of `paths` (the same arm name may mean another space in another JSON: the caller matches the
    selection), seed -> control (the first JSON that has it)."""
    runs: dict[tuple[str, int], list[dict]] = {}
    scratch: dict[int, dict] = {}
    for path in paths:
        old = json.loads(Path(path).read_text())
        if old.get("finetune_epochs") != finetune_epochs:
            continue
        for arm, recs in old["runs"].items():
            for r in recs:
                runs.setdefault((arm, r["seed"]), []).append(r)
        for r in old.get("no_pretraining", {}).get("runs", []):
            scratch.setdefault(r["seed"], r)
    return runs, scratch


def same_encoder(a: dict | None, b: dict | None) -> bool:
    """Two selections that train the same encoder: the same configuration for the same epochs."""
    return bool(a and b) and a["config"] == b["config"] and a["epoch"] == b["epoch"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.search.refinetune", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--report",
        nargs="+",
        default=[str(REPO / "benchmarks" / "results" / "search.json")],
        help="benchmark reports (an arm is taken from the first that has it); PATH:ARM=NAME,... renames that "
        "report's arms, e.g. an earlier default's `ours` as ours-v1",
    )
    p.add_argument("--arms", nargs="+", default=["ours", "tao", "random"])
    p.add_argument("--seeds", type=int, default=10, help="the report's first N seeds")
    p.add_argument("--finetune-epochs", type=int, default=40)
    p.add_argument("--out", default="results/bench_refinetune_exact", help="runs folder (kept; resumable)")
    p.add_argument(
        "--scratch-seeds",
        type=int,
        default=3,
        help="the control: the same finetune from a random initialisation, seeds 0..N-1 (0: none)",
    )
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "search_refinetune.json"))
    p.add_argument(
        "--reuse",
        nargs="+",
        default=[],
        help="earlier refinetune JSONs: an arm and seed whose selection and finetune length match are taken as is",
    )
    args = p.parse_args(argv)
    from mae.cli import setup_logging
    from mae.data.digits import build_digits_dataset
    from mae.fileio import atomic_write_text

    reports = [report.parse_report(r) for r in args.report]
    missing = [f for f in [*(path for path, _ in reports), *args.reuse] if not Path(f).is_file()]
    if missing:
        print(f"error: no benchmark report or refinetune JSON at {', '.join(missing)}", file=sys.stderr)
        return 2
    earlier, earlier_scratch = reusable(args.reuse, args.finetune_epochs)
    sources = report.arm_sources(reports)
    unknown = [a for a in args.arms if a not in sources or sources[a][0] not in ARMS]
    if unknown:
        print(
            f"error: {', '.join(unknown)} not in {', '.join(args.report)} (arms: {', '.join(sources)})",
            file=sys.stderr,
        )
        return 2
    epochs = {sources[a][2]["budget"]["epochs"] for a in args.arms}
    if len(epochs) != 1:
        print(f"error: the reports' arms pretrained for different epochs ({sorted(epochs)})", file=sys.stderr)
        return 2
    epochs = epochs.pop()
    setup_logging()
    t0 = time.time()
    root = Path(args.out).resolve()
    data = build_digits_dataset(root / "data")
    runs: dict[str, list[dict]] = {a: [] for a in args.arms}
    for seed in range(args.seeds):  # seed by seed, arms alternating: a stopped run leaves paired seeds
        for arm in args.arms:
            kind, source_runs, _, _ = sources[arm]  # kind: the arm's name in its report (ARMS' key)
            run = next(r for r in source_runs if r["seed"] == seed)
            rec = {"seed": seed, "selected": run["selected"], "source_finetune": run.get("finetune")}
            origin = run.get("from", kind).rpartition(":")[2]  # the arm's name in the report it came from
            old = next(
                (
                    c
                    for n in (arm, kind, origin)
                    for c in earlier.get((n, seed), [])
                    if c["selected"] == run["selected"]
                ),
                None,
            )
            # or this run's record of the same encoder in an arm trained the same way (ours and random often
            # select the same start-up configuration)
            old = old or next(
                (
                    runs[a][-1]
                    for a in runs
                    if runs[a]
                    and runs[a][-1]["seed"] == seed
                    and ARMS[sources[a][0]].overrides == ARMS[kind].overrides
                    and same_encoder(runs[a][-1]["selected"], run["selected"])
                ),
                None,
            )
            if old is not None and run["selected"] is not None:
                # the same encoder, already retrained and finetuned at this length
                rec = {**old, "selected": run["selected"], "source_finetune": run.get("finetune")}
            elif run["selected"] is not None:
                where = root / f"{arm}-{seed}"
                encoder = pretrain_selected(run, kind, epochs, data, where / "pretrain")
                rec["pretrain"] = reproduction(run, encoder)
                rec["probe"] = probe_top1(encoder, data, where / "probe")
                rec["finetune"] = finetune_top1(
                    encoder, data, where / "finetune", epochs=args.finetune_epochs
                )
            runs[arm].append(rec)
            top1 = (rec.get("finetune") or {}).get("top1")
            same = (rec.get("pretrain") or {}).get("reproduced")
            print(f"refinetune: {arm} seed {seed}: reproduced {same}, finetune top-1 {top1}", flush=True)
    scratch = []  # what pretraining adds at all: the recipe without an encoder (seed 0 is the arms' seed)
    for seed in range(args.scratch_seeds):
        res = earlier_scratch.get(seed) or {
            "seed": seed,
            **finetune_top1(None, data, root / f"scratch-{seed}", epochs=args.finetune_epochs, seed=seed),
        }
        scratch.append(res)
        print(f"refinetune: no pretraining, seed {seed}: finetune top-1 {res['top1']}", flush=True)
    out = {
        "command": "python -m benchmarks.search.refinetune " + " ".join(sys.argv[1:]),
        "report": [report.repo_relative(path) for path, _ in reports],
        "arms_from": {a: f"{report.repo_relative(sources[a][3])}:{sources[a][0]}" for a in args.arms},
        "pretrain_epochs": epochs,
        "finetune_epochs": args.finetune_epochs,
        "seeds": args.seeds,
        "wall_s": round(time.time() - t0, 1),  # this invocation's; work read back from --out is not counted
        "reproduced": {
            a: f"{sum(bool((r.get('pretrain') or {}).get('reproduced')) for r in rs)} of "
            f"{sum(r['selected'] is not None for r in rs)}"
            for a, rs in runs.items()
        },
        "figures": {
            "downstream": report.downstream(runs, args.arms),
            # a candidate default against every other arm (the same figures, paired by seed)
            "candidates_vs": report.candidates_vs(runs, args.arms),
            # over the distinct encoders (ours and random share some): does the search's objective, or knn_acc
            # or the probe, rank the encoders as the converged finetune does? (a loss that does: rho < 0)
            "selected_encoders_spearman_with_finetune_top1": report.selected_correlations(runs),
        },
        "runs": runs,
        "no_pretraining": {
            "finetune_top1": [r["top1"] for r in scratch],
            "median_finetune_top1": report.median([r["top1"] for r in scratch]),
            "runs": scratch,
        },
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.json), json.dumps(report.strict_json(out), indent=1) + "\n")
    print(json.dumps(out["figures"]["downstream"]["vs"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
