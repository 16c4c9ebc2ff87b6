"""Does train_loss (or knn_acc) predict what users get? Spearman of each with finetune top-1 on the test split.

    python -m benchmarks.search.correlation --runs DIR --epochs E [--configs 40] [--downstream finetune|probe]
    python -m benchmarks.search.correlation --pooled [JSON ...] [--epochs E]

The configurations are the trials of the benchmark's searches (`python -m benchmarks.search --out DIR`) that
trained the full `--epochs` with a finite loss: TAO's arm trains every trial to the end over its own space,
ours and random contribute the trials ASHA let finish in the curated space, so both spaces are covered at
the same training length. Up to --configs of them (every arm in turn, in a seeded order) have their final
encoder (last.ckpt) finetuned with the benchmark's one recipe (benchmarks.search.downstream), cached in DIR.
Written: benchmarks/results/correlation.json with each configuration, both Spearman coefficients and their
bootstrap 95% intervals.

--pooled trains nothing: it reads the committed benchmark reports (search.json, search_candidates.json,
search_warm.json by default) and pools the encoders their searches selected that trained the full --epochs
and were finetuned with the benchmark's recipe, each distinct encoder once (a seed and a configuration), over
both spaces (TAO's arm and ours, random, the candidates, warm starts). Written:
benchmarks/results/correlation_finetune.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.search.harness import finished, record_of  # noqa: E402


def full_length_trials(root: Path, epochs: int) -> list[dict]:
    """Every trial of every finished search under `root` that trained `epochs` epochs with a finite loss."""
    out, seen = [], set()
    for exp in sorted(p.parent for p in root.glob("*/automl")):
        if not finished(exp):
            continue
        arm = exp.name.rsplit("-", 1)[0]
        rec = record_of(exp)
        selected = rec["selected"] or {}
        for t in rec["trials"]:
            losses = t["train_loss"]
            # ours and random draw the same start-up configurations on a seed: count each configuration once
            key = json.dumps(t["config"], sort_keys=True)
            if len(losses) == epochs and losses[-1] is not None and key not in seen:
                seen.add(key)
                ckpt = t["last_checkpoint"]
                if ckpt is not None:
                    out.append(
                        {
                            "arm": arm,
                            "experiment": exp.name,
                            "trial_id": t["trial_id"],
                            "config": t["config"],
                            "train_loss": losses[-1],
                            "knn_acc": t["knn_acc"][-1] if t["knn_acc"] else None,
                            "checkpoint": ckpt,
                            # the search's selected encoder at its last epoch was finetuned by the benchmark
                            "benchmark_finetune": str(exp.parent / f"{exp.name}-finetune")
                            if selected.get("trial_id") == t["trial_id"] and selected.get("epoch") == epochs
                            else None,
                        }
                    )
    return out


def pick(trials: list[dict], n: int, seed: int = 0, *, cached_only: bool = False, done=None) -> list[dict]:
    """Up to n trials, every arm in turn (each arm's trials in a seeded order, those the benchmark already
    measured first: `done(trial)`), so both spaces are covered. cached_only: only those."""
    done = done or (lambda t: False)
    if cached_only:
        trials = [t for t in trials if done(t)]
    rng = np.random.default_rng(seed)
    by_arm: dict[str, list[dict]] = {}
    for t in trials:
        by_arm.setdefault(t["arm"], []).append(t)
    queues = {
        a: sorted((ts[i] for i in rng.permutation(len(ts))), key=lambda t: not done(t))
        for a, ts in sorted(by_arm.items())
    }
    out: list[dict] = []
    while len(out) < n and any(queues.values()):
        for q in queues.values():
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def _location(t: dict, root: Path) -> Path:
    """Where a configuration's downstream results are kept: the benchmark's own folder for a selected encoder."""
    if t.get("benchmark_finetune"):
        return Path(t["benchmark_finetune"])
    return root / "correlation" / f"{t['experiment']}-{t['trial_id']}"


def _done(t: dict, root: Path, downstream: str) -> bool:
    return (
        _location(t, root) / ("probe.json" if downstream == "probe" else "evaluate/results.json")
    ).exists()


def spearman(x: list[float], y: list[float], *, n_boot: int = 5000) -> dict:
    """Spearman's rho with a 95% bootstrap interval (pairs resampled)."""
    from scipy.stats import spearmanr

    xs, ys = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:  # no ranking to correlate
        return {"rho": None, "ci95": None, "n": int(len(xs))}
    rho = float(spearmanr(xs, ys).statistic)
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(xs), len(xs))
        if np.ptp(xs[i]) > 0 and np.ptp(ys[i]) > 0:
            boots.append(spearmanr(xs[i], ys[i]).statistic)
    return {
        "rho": rho,
        "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
        "n": int(len(xs)),
    }


DEFAULT_REPORTS = ("search.json", "search_candidates.json", "search_warm.json")


def pooled_runs(reports: list[Path], epochs: int) -> dict[str, list[dict]]:
    """The runs of every report, by arm, each search once (reports share arms: the same results folder), kept
    where the selected encoder trained `epochs` epochs and has a finetune figure."""
    runs: dict[str, list[dict]] = {}
    seen: set[str] = set()
    for path in reports:
        for arm, rs in json.loads(path.read_text())["runs"].items():
            for r in rs:
                sel = r.get("selected") or {}
                top1 = (r.get("finetune") or {}).get("top1")
                if r["results_dir"] in seen or sel.get("epoch") != epochs or top1 is None:
                    continue
                seen.add(r["results_dir"])
                runs.setdefault(arm, []).append(r)
    return runs


def pooled_main(reports: list[Path], epochs: int, json_path: Path) -> int:
    """Spearman of the selected encoders' train_loss, knn_acc, probes and lr with their finetune top-1."""
    from benchmarks.search.report import distinct_selected, repo_relative, selected_correlations, strict_json
    from mae.fileio import atomic_write_text

    missing = [str(p) for p in reports if not p.is_file()]
    if missing:
        print(f"error: no benchmark report at {', '.join(missing)}", file=sys.stderr)
        return 2
    runs = pooled_runs(reports, epochs)
    figures = selected_correlations(runs)
    tao = selected_correlations({"tao": runs.get("tao", [])})["all_arms"]
    out = {
        "command": "python -m benchmarks.search.correlation " + " ".join(sys.argv[1:]),
        "reports": [repo_relative(p) for p in reports],
        "epochs": epochs,
        "downstream": "finetune",
        "searches_per_arm": {a: len(rs) for a, rs in sorted(runs.items())},
        # one entry per distinct encoder (seed, configuration): n in each figure; a lower loss is better, so a
        # loss that predicts finetune top-1 has a NEGATIVE rho, knn_acc and the probes a POSITIVE one
        "spearman_with_finetune_top1": {**figures, "tao_space": tao},
        "encoders": [
            {
                "arm": x["arm"],
                "seed": x["r"]["seed"],
                "config": x["sel"]["config"],
                "train_loss": x["sel"]["train_loss"],
                "knn_acc": x["sel"]["knn_acc"],
                "probe_top1": (x["r"].get("probe") or {}).get("probe_top1"),
                "finetune_top1": x["r"]["finetune"]["top1"],
            }
            for x in distinct_selected(runs)
        ],
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(strict_json(out), indent=1) + "\n")
    print(json.dumps(out["spearman_with_finetune_top1"], indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    from benchmarks.search.downstream import finetune_top1, probe_top1

    if "--pooled" in (argv if argv is not None else sys.argv[1:]):
        q = argparse.ArgumentParser(
            prog="python -m benchmarks.search.correlation --pooled", description=__doc__.split("\n\n")[0]
        )
        q.add_argument(
            "--pooled", nargs="*", metavar="JSON", help="benchmark reports (default: the committed)"
        )
        q.add_argument(
            "--epochs", type=int, default=3, help="the benchmark's --epochs (full training length)"
        )
        q.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "correlation_finetune.json"))
        a = q.parse_args(argv)
        reports = [Path(x) for x in a.pooled] or [
            REPO / "benchmarks" / "results" / n for n in DEFAULT_REPORTS
        ]
        return pooled_main(reports, a.epochs, Path(a.json))

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.search.correlation", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--runs", required=True, help="the benchmark's --out folder")
    p.add_argument(
        "--epochs", type=int, required=True, help="the benchmark's --epochs (full training length)"
    )
    p.add_argument("--configs", type=int, default=40)
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument(
        "--downstream",
        choices=("finetune", "probe"),
        default="finetune",
        help="what users get, measured on the test split: the finetune recipe's top-1, or a linear probe's",
    )
    p.add_argument(
        "--cached-only", action="store_true", help="only configurations already measured (nothing is trained)"
    )
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "correlation.json"))
    args = p.parse_args(argv)
    from mae.cli import setup_logging
    from mae.data.digits import build_digits_dataset
    from mae.fileio import atomic_write_text

    setup_logging()
    t0 = time.time()
    root = Path(args.runs).resolve()
    data = build_digits_dataset(root / "data")
    chosen = pick(
        full_length_trials(root, args.epochs),
        args.configs,
        cached_only=args.cached_only,
        done=lambda t: _done(t, root, args.downstream),
    )
    for c in chosen:
        where = _location(c, root)
        if args.downstream == "probe":
            pr = probe_top1(c["checkpoint"], data, where)
            c["top1"], c["val_probe_top1"] = pr["probe_top1"], pr["val_probe_top1"]
        else:
            c["top1"] = finetune_top1(c["checkpoint"], data, where, epochs=args.finetune_epochs)["top1"]
        print(
            f"correlation: {c['experiment']} {c['trial_id']} loss {c['train_loss']:.4f} top-1 {c['top1']:.3f}",
            flush=True,
        )
    top1 = [c["top1"] for c in chosen]
    out = {
        "command": "python -m benchmarks.search.correlation " + " ".join(sys.argv[1:]),
        "epochs": args.epochs,
        "downstream": args.downstream,
        "finetune_epochs": args.finetune_epochs if args.downstream == "finetune" else None,
        "configs": len(chosen),
        "per_arm": {a: sum(c["arm"] == a for c in chosen) for a in sorted({c["arm"] for c in chosen})},
        # lower loss = better: a useful objective has a NEGATIVE rho with top-1; knn_acc a POSITIVE one
        "spearman_train_loss_vs_top1": spearman([c["train_loss"] for c in chosen], top1),
        "spearman_knn_acc_vs_top1": spearman(
            [c["knn_acc"] if c["knn_acc"] is not None else np.nan for c in chosen], top1
        ),
        "spearman_val_probe_vs_top1": spearman([c.get("val_probe_top1", np.nan) for c in chosen], top1),
        "wall_s": round(time.time() - t0, 1),
        "configurations": chosen,
    }
    for name in ("ours", "tao"):
        sub = [c for c in chosen if c["arm"] == name]
        if len(sub) >= 3:
            out[f"spearman_train_loss_vs_top1_{name}_space"] = spearman(
                [c["train_loss"] for c in sub], [c["top1"] for c in sub]
            )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.json), json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k.startswith("spearman")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
