"""python -m benchmarks.multi_objective [--quick] [--seeds N] [--trials N] [--epochs N] [--arms ...] [--out DIR]

Measures the deploy profile once, sets the latency limit X from it, runs every arm (harness.ARMS) on every
seed with the same budget, and writes one JSON of every run with the figures (report) and a PNG. Searches
already finished in --out are read back, so an interrupted benchmark continues where it stopped.

--quick: a harness check (<= 2 min on an idle 2-core machine), not a result: the architecture pinned to ViT
micro (3 shapes to measure), ours and weighted-balanced, 2 seeds, 2 trials of 1 epoch; the JSON goes beside the runs unless --json is given.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.multi_objective import harness, report  # noqa: E402
from benchmarks.multi_objective.harness import ARMS, Budget  # noqa: E402
from benchmarks.search import report as search_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.multi_objective", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--quick", action="store_true", help="harness check: 2 seeds, 2 trials of 1 epoch, ViT micro"
    )
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--arms", nargs="+", default=None, choices=list(ARMS), help="default: all (--quick: two)")
    p.add_argument(
        "--feasible-shapes",
        type=int,
        default=4,
        help="the latency limit X lets this many of the fastest measured shapes through",
    )
    p.add_argument(
        "--recipe",
        choices=("searched", "fixed"),
        default="fixed",
        help="fixed: the from-scratch recipe pinned (harness.FIXED_RECIPE), the shapes, weight decay and "
        "schedule searched; searched: the whole finetune space as well",
    )
    p.add_argument(
        "--out", default=None, help="runs folder, kept and resumable (default: results/bench_multi_objective)"
    )
    p.add_argument("--json", default=None, help="default: benchmarks/results/multi_objective.json")
    p.add_argument("--png", default=None, help="default: beside the JSON, <name>.png")
    args = p.parse_args(argv)
    pins: list[str] = list(harness.FIXED_RECIPE) if args.recipe == "fixed" else []
    if args.quick:
        args.seeds, args.trials, args.epochs, args.feasible_shapes = 2, 2, 1, 2
        pins.append("model.arch=vit_micro_patch4")
        args.arms = args.arms or ["ours", "weighted-balanced"]
    args.arms = args.arms or list(ARMS)
    root = Path(args.out or ("results/bench_multi_objective" + ("_quick" if args.quick else ""))).resolve()
    json_path = Path(
        args.json
        or (
            root / "multi_objective_quick.json"
            if args.quick
            else REPO / "benchmarks/results/multi_objective.json"
        )
    )
    png = Path(args.png) if args.png else json_path.with_suffix(".png")

    from benchmarks.search.harness import start_ray
    from mae.cli import setup_logging
    from mae.data.digits import build_digits_dataset

    setup_logging()
    t0 = time.time()
    data = build_digits_dataset(root / "data")
    spec = harness.write_spec(root)
    profile = harness.measure_profile(spec, data, root, pins)
    limit = harness.latency_limit(profile, args.feasible_shapes)
    feasible = sorted(k for k, m in profile.items() if m["latency_ms"] <= limit)
    print(f"bench: latency limit X = {limit:g} ms: feasible {', '.join(feasible)}", flush=True)
    budget = Budget(args.trials, args.epochs, args.concurrent)
    harness.check_root(root, {"budget": vars(budget), "limit_ms": limit, "pins": pins})
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    start_ray(args.concurrent)
    runs: dict[str, list[dict]] = {a: [] for a in args.arms}
    for seed in seeds:  # seed-major: an interrupted benchmark still has whole pairs
        for name in args.arms:
            rec = harness.run_search(
                ARMS[name],
                seed,
                budget,
                spec,
                data,
                root / f"{name}-{seed}",
                limit=limit,
                profile_file=root / harness.PROFILE_FILE,
                pins=pins,
            )
            runs[name].append(rec)
            print(
                f"bench: {name} seed {seed}: final HV {rec['final_hv']:.4g}, front {len(rec['front'])}, "
                f"{rec['trial_epochs']} trial-epochs, {rec['infeasible']} infeasible, {rec['failed']} failed "
                f"({rec['wall_s']} s)",
                flush=True,
            )
    out = summarize(runs, args, budget, limit, profile, pins, time.time() - t0)
    out["png"] = str(png.relative_to(REPO) if png.is_relative_to(REPO) else png)
    report.plot(
        runs,
        png,
        f"digits finetune, {args.trials} trials x {args.epochs} epochs, {len(seeds)} seeds: "
        f"median hypervolume (IQR band)",
        limit,
    )
    from mae.fileio import atomic_write_text

    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(search_report.strict_json(out), indent=1) + "\n")
    print_table(out)
    print(f"\n{json_path} and {png} in {time.time() - t0:.0f} s")
    return 0


def summarize(
    runs, args, budget: Budget, limit: float, profile: dict, pins: list[str], seconds: float
) -> dict:
    figures: dict = {"per_arm": report.per_arm(runs), "infeasible_proposed": report.infeasible(runs)}
    curves = report.median_curves(runs)
    for arm in runs:
        if arm != "ours" and "ours" in runs:
            figures.setdefault("vs", {})[arm] = {
                **report.compare(runs, arm),
                "median_curve_ours_ge": report.median_curve_share(curves, arm),
            }
    return {
        "command": "python -m benchmarks.multi_objective " + " ".join(sys.argv[1:]),
        "budget": {"trials": budget.trials, "epochs": budget.epochs, "concurrent": budget.concurrent},
        "objectives": list(harness.OBJECTIVES),
        "constraint": f"latency_ms<={limit:g}",
        "hypervolume_reference": {"ACC_all": 0.0, "latency_ms": limit},
        "pins": pins,
        "profile": {k: {m: round(v, 4) for m, v in d.items()} for k, d in profile.items()},
        "arms": {
            a: {"description": ARMS[a].description, "objective_weights": list(ARMS[a].weights(limit))}
            for a in runs
        },
        "automl_code": sorted({r["automl_code"] or "unknown" for rs in runs.values() for r in rs}),
        "seeds": sorted({r["seed"] for rs in runs.values() for r in rs}),
        "wall_s": round(seconds, 1),
        "figures": figures,
        "median_curves": curves,
        "runs": runs,
    }


def print_table(out: dict) -> None:
    f = out["figures"]
    print(f"\nmulti-objective benchmark: {json.dumps(out['budget'])}, {out['constraint']}")
    if len(out["automl_code"]) > 1:
        print(f"  warning: the runs used {len(out['automl_code'])} versions of automl/ (edited meanwhile)")
    print(
        f"  {'arm':18} {'final HV: median [IQR]':>30} {'trial-epochs (median)':>22} {'infeasible proposed':>20}"
    )
    for arm, d in f["per_arm"].items():
        q = d["final_hv_quartiles"] or [math.nan] * 3
        hv = f"{q[1]:.4g} [{q[0]:.4g}, {q[2]:.4g}]"
        inf = f["infeasible_proposed"][arm]
        print(f"  {arm:18} {hv:>30} {report.median(d['trial_epochs']):>22g} {inf['total']:>20}")
    for arm, d in f.get("vs", {}).items():
        print(
            f"  ours vs {arm}: final HV ours >= in {d['ours_final_ge']} seeds; at equal trial-epochs "
            f"{d['ours_ge_at_equal_trial_epochs']}; median curve ours >= at {d['median_curve_ours_ge']} "
            f"trial-epochs; trial-epochs for ours to reach {arm}'s final HV: median "
            f"{d[f'median_ours_epochs_to_{arm}_final']} ({arm} itself: {d[f'median_{arm}_epochs_to_own_final']})"
        )


if __name__ == "__main__":
    from mae.errors import MAEError

    try:
        sys.exit(main())
    except MAEError as e:  # a user mistake: its message, no traceback
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
