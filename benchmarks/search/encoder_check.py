"""Is the summary's encoder check right? For every finished search of the benchmark that it flags, the linear
probe's test top-1 of the selected encoder against the flagged one.

    python -m benchmarks.search.encoder_check --runs DIR

The check is the product's (`automl.report.encoder_check`): among the trials at the selected trial's epoch, the
one with the highest knn_acc, when it beats the selected trial's by >= KNN_MARGIN. The probe is the benchmark's
(benchmarks.search.downstream.probe_top1: logistic regression on the frozen encoder's standardised pooled
features, fitted on the train split, top-1 on the test split), cached beside each search in DIR.
Written: benchmarks/results/encoder_check.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def check_all(root: Path, data: dict[str, Path]) -> list[dict]:
    from automl.ledger import best_trial
    from automl.report import encoder_check
    from benchmarks.search.downstream import probe_top1
    from benchmarks.search.harness import finished
    from mae.layout import TUNE_CHECKPOINT_FILE, ExperimentLayout

    rows = []
    for exp in sorted(p.parent for p in root.glob("*/automl")):
        if not finished(exp):
            continue
        files = ExperimentLayout(exp)
        state, settings = files.read("state") or {}, files.read("experiment") or {}
        best = best_trial(state, settings.get("mode", "min"))
        flag = encoder_check(state, best, settings.get("metric")) if best else None
        if flag is None:
            rows.append({"experiment": exp.name, "flagged": None})
            continue
        # the selected encoder's probe is the one the search benchmark already cached (probe_selected's folder)
        selected = probe_top1(
            Path(best["best"]["checkpoint"]) / TUNE_CHECKPOINT_FILE, data, root / f"{exp.name}-finetune"
        )
        rival = probe_top1(
            Path(flag["checkpoint"]) / TUNE_CHECKPOINT_FILE, data, root / f"{exp.name}-check-flagged"
        )
        rows.append(
            {
                "experiment": exp.name,
                "selected": best["trial_id"],
                "flagged": flag["trial_id"],
                "epoch": flag["epoch"],
                "knn_gap": flag["knn_acc"] - flag["selected_knn_acc"],
                "selected_probe_top1": selected["probe_top1"],
                "flagged_probe_top1": rival["probe_top1"],
            }
        )
        print(f"encoder check: {exp.name}: {rows[-1]}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.search.encoder_check", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--runs", required=True, help="the search benchmark's --out folder")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "encoder_check.json"))
    args = p.parse_args(argv)
    from mae.data.digits import build_digits_dataset
    from mae.fileio import atomic_write_text

    t0 = time.time()
    root = Path(args.runs)
    rows = check_all(root, build_digits_dataset(root / "data"))
    flagged = [r for r in rows if r["flagged"]]
    diffs = [r["flagged_probe_top1"] - r["selected_probe_top1"] for r in flagged]
    out = {
        "command": "python -m benchmarks.search.encoder_check " + " ".join(argv or sys.argv[1:]),
        "searches": len(rows),
        "flagged": len(flagged),
        "flagged_better": sum(d > 0 for d in diffs),
        "flagged_worse": sum(d < 0 for d in diffs),
        "median_probe_gain": statistics.median(diffs) if diffs else None,
        "wall_s": round(time.time() - t0, 1),
        "rows": rows,
    }
    atomic_write_text(Path(args.json), json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
