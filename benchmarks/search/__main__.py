"""python -m benchmarks.search [--quick] [--seeds N] [--trials N] [--epochs N] [--arms ...] [--out DIR] [--json F]

Runs every arm (benchmarks.search.arms) on every seed with the same budget, finetunes each search's selected
encoder with one recipe (benchmarks.search.downstream), and writes one JSON of every run with the figures
(benchmarks.search.report) and a PNG of the anytime curves. Searches and finetunes already finished in --out
are read back, so an interrupted benchmark continues where it stopped.

--quick: a tiny harness check (2 seeds, 2 trials of 1 epoch, a 1-epoch finetune), not a result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.search import report  # noqa: E402
from benchmarks.search.arms import ARMS  # noqa: E402
from benchmarks.search.harness import Budget, run_search, start_ray  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny harness check (<= 2 min)")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--arms", nargs="+", default=["ours", "tao", "random"], choices=sorted(ARMS))
    p.add_argument("--out", default="results/bench_search", help="experiments folder (kept; resumable)")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "search.json"))
    p.add_argument(
        "--phase",
        choices=("all", "search", "finetune", "probe", "report"),
        default="all",
        help="search: only the searches; finetune / probe: the selected encoders' finetunes and probes, or "
        "only their probes, each as soon as its search has finished (run beside a search phase); report: the "
        "JSON and PNG from finished work, training nothing; all: everything, then the JSON",
    )
    p.add_argument("--png", default=None, help="curves PNG (default: beside the JSON, <name>_curves.png)")
    p.add_argument(
        "--with-report",
        nargs="+",
        default=[],
        metavar="PATH[:ARM=NAME,...]",
        help="report phase: also the arms of earlier reports of the same budget (e.g. tao, or a previous "
        "default's ours renamed ours-v1), so that a new default is compared without searching them again",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.trials, args.epochs, args.finetune_epochs = 2, 1, 1, 1
    from mae.cli import setup_logging
    from mae.data.digits import build_digits_dataset

    setup_logging()
    t0 = time.time()
    root = Path(args.out).resolve()
    data = build_digits_dataset(root / "data")
    # One MLflow store per phase for the whole benchmark: creating a store's tables costs seconds, paid once
    # here instead of once per search and per finetune (each phase its own file: SQLite has one writer).
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / f'mlflow-{args.phase}.db'}")
    budget = Budget(args.trials, args.epochs, args.concurrent)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    if args.phase in ("finetune", "probe"):
        finetune_all(args.arms, seeds, data, root, args.finetune_epochs, probe_only=args.phase == "probe")
        return 0
    args.described = {}
    if args.phase == "report":
        runs = read_all(args.arms, seeds, data, root, args.finetune_epochs)
        problem = add_earlier(runs, args, budget, seeds)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    else:
        start_ray(args.concurrent)
        ft_epochs = args.finetune_epochs if args.phase == "all" else None
        runs = run_all(args.arms, seeds, budget, data, root, ft_epochs)
    if args.phase == "search":
        return 0
    out = summarize(runs, args, budget, time.time() - t0)
    json_path = Path(args.json)
    png = Path(args.png) if args.png else json_path.with_name(json_path.stem + "_curves.png")
    out["png"] = report.repo_relative(png)
    report.plot_curves(
        runs,
        png,
        f"MAE pretraining search, {args.trials} trials x {args.epochs} epochs, {len(out['seeds'])} seeds",
    )
    from mae.fileio import atomic_write_text

    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(report.strict_json(out), indent=1, default=str) + "\n")
    print_figures(out)
    print(f"\n{json_path} and {png} in {time.time() - t0:.0f} s")
    return 0


def add_earlier(runs: dict, args, budget: Budget, seeds: list[int]) -> str | None:
    """--with-report: each earlier report's arms that this run lacks, on the same seeds and budget."""
    parsed = [report.parse_report(t) for t in args.with_report]
    missing = [path for path, _ in parsed if not Path(path).is_file()]
    if missing:
        return f"no benchmark report at {', '.join(missing)}"
    for name, (kind, rs, data, path) in report.arm_sources(parsed).items():
        if name in runs:
            continue
        theirs = {k: data["budget"][k] for k in ("trials", "epochs", "concurrent")}
        if theirs != {"trials": budget.trials, "epochs": budget.epochs, "concurrent": budget.concurrent}:
            return f"{path} searched another budget ({theirs}); compare arms of the same budget only"
        runs[name] = [{**r, "arm": name, "from": f"{path}:{kind}"} for r in rs if r["seed"] in seeds]
        args.described[name] = f"{ARMS[kind].description if kind in ARMS else kind}; from {path}:{kind}"
    return None


def run_all(arms, seeds, budget, data, root: Path, finetune_epochs: int | None) -> dict[str, list[dict]]:
    """Every arm on every seed (finished searches are read back), each selected encoder finetuned unless
    `finetune_epochs` is None."""
    runs: dict[str, list[dict]] = {a: [] for a in arms}
    for seed in seeds:
        for name in arms:
            arm = ARMS[name]
            extra = None
            if arm.warm_from:
                # the source: that arm's search on the next seed, run here if needed (the benchmark's own
                # runs of seed + 1 serve, so a warm seed costs one search)
                src_seed = seed + 1
                src = root / f"{arm.warm_from}-{src_seed}"
                run_search(arm.warm_from, src_seed, budget, data, src)
                extra = {"warm_start": (str(src),)}
            rec = run_search(arm, seed, budget, data, root / f"{name}-{seed}", extra_options=extra)
            if finetune_epochs is not None:
                rec["probe"] = probe_selected(rec, data, root)
                rec["finetune"] = finetune_selected(rec, data, root, finetune_epochs)
            runs[name].append(rec)
            print(
                f"bench: {name} seed {seed}: best train_loss {rec['best']}, {rec['trial_epochs']} trial-epochs, "
                f"{rec['failed']} failed, top-1 {(rec.get('finetune') or {}).get('top1')} ({rec['wall_s']} s)",
                flush=True,
            )
    return runs


def finetune_selected(rec: dict, data, root: Path, epochs: int) -> dict | None:
    from benchmarks.search.downstream import finetune_top1

    sel = rec["selected"]
    if sel is None:
        return None
    return finetune_top1(
        sel["checkpoint"], data, root / f"{rec['arm']}-{rec['seed']}-finetune", epochs=epochs
    )


def read_all(arms, seeds, data, root: Path, finetune_epochs: int) -> dict[str, list[dict]]:
    """The report phase: finished searches with their finished finetunes and probes; nothing is trained."""
    from benchmarks.search.harness import finished, record_of

    runs: dict[str, list[dict]] = {a: [] for a in arms}
    for seed in seeds:
        for name in arms:
            out = root / f"{name}-{seed}"
            if not finished(out):
                continue
            rec = {**record_of(out), "arm": name, "seed": seed}
            where = root / f"{name}-{seed}-finetune"
            if (where / "probe.json").exists():
                rec["probe"] = json.loads((where / "probe.json").read_text())
            if (where / "evaluate" / "results.json").exists():
                rec["finetune"] = finetune_selected(rec, data, root, finetune_epochs)
            runs[name].append(rec)
    return runs


def probe_selected(rec: dict, data, root: Path) -> dict | None:
    from benchmarks.search.downstream import probe_top1

    sel = rec["selected"]
    if sel is None:
        return None
    return probe_top1(sel["checkpoint"], data, root / f"{rec['arm']}-{rec['seed']}-finetune")


def finetune_all(arms, seeds, data, root: Path, epochs: int, *, probe_only: bool = False) -> None:
    """The finetune (or probe) phase: each search's selected encoder as soon as the search has finished."""
    from benchmarks.search.harness import finished, record_of

    todo = [(name, seed) for seed in seeds for name in arms]
    while todo:
        ready = [(n, s) for n, s in todo if finished(root / f"{n}-{s}")]
        if not ready:
            time.sleep(10)
            continue
        for name, seed in ready:
            rec = {**record_of(root / f"{name}-{seed}"), "arm": name, "seed": seed}
            pr = probe_selected(rec, data, root)
            ft = None if probe_only else finetune_selected(rec, data, root, epochs)
            print(f"bench: {name} seed {seed}: probe {pr}, finetune {ft}", flush=True)
            todo.remove((name, seed))


def summarize(runs, args, budget: Budget, seconds: float) -> dict:
    arms = list(runs)
    figures: dict = {"downstream": report.downstream(runs, arms)}
    figures["selected_encoders_spearman_with_finetune_top1"] = report.selected_correlations(runs)
    if any(a.startswith("cand-") for a in arms):
        figures["candidates_vs"] = report.candidates_vs(runs, arms)
    for arm in arms:
        if arm != "tao" and "tao" in runs:
            figures.setdefault("trial_epochs_to_tao_best", {})[arm] = report.time_to_tao(runs, arm)
        if arm != "ours" and "ours" in runs:
            figures.setdefault("equal_trial_epochs", {})[arm] = report.equal_epochs(runs, arm)
    figures["best_train_loss"] = {
        a: {"median": report.median([r["best"] for r in rs]), "per_seed": [r["best"] for r in rs]}
        for a, rs in runs.items()
    }
    return {
        "command": "python -m benchmarks.search " + " ".join(sys.argv[1:]),
        "budget": {
            "trials": budget.trials,
            "epochs": budget.epochs,
            "concurrent": budget.concurrent,
            "finetune_epochs": args.finetune_epochs,
        },
        "arms": {a: args.described.get(a) or ARMS[a].description for a in arms},
        "seeds": sorted({r["seed"] for rs in runs.values() for r in rs}),
        "wall_s": round(seconds, 1),
        "figures": figures,
        "runs": runs,
    }


def print_figures(out: dict) -> None:
    f = out["figures"]
    print("\nsearch benchmark:", json.dumps(out["budget"]))
    for arm, d in f["downstream"]["per_arm"].items():
        shown = ", ".join(f"{k} {d[f'median_{k}']}" for k in report.DOWNSTREAM)
        print(f"  {arm:8} medians: {shown}, knn_acc {d['median_knn_acc']}")
    for arm, vs in f["downstream"]["vs"].items():
        for k, d in vs.items():
            print(
                f"  ours - {arm} {k}: median {d['median_diff']} ci95 {d['ci95']}; ours >= {arm}: {d['ours_ge']} "
                f"(wins, ties, losses: {d['ours_wins_ties_losses']})"
            )
    for scope, d in f["selected_encoders_spearman_with_finetune_top1"].items():
        shown = ", ".join(f"{k} {v['rho'] and round(v['rho'], 2)} (n {v['n']})" for k, v in d.items())
        print(f"  Spearman with finetune top-1 over the selected encoders, {scope}: {shown}")
    for arm, d in f.get("trial_epochs_to_tao_best", {}).items():
        print(
            f"  {arm} / tao trial-epochs to TAO's best: median {d['median_ratio']} ci95 {d['ci95']} ({d['reached']})"
        )
    for arm, d in f.get("equal_trial_epochs", {}).items():
        print(f"  ours vs {arm} at equal trial-epochs: ours wins {d['ours_wins']}")


if __name__ == "__main__":
    sys.exit(main())
