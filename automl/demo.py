"""The README's main job: a real small dataset, an AutoML search, and the best model exported.

    python -m automl.demo [--out DIR]

Builds scikit-learn's 1,797 real handwritten digits (10 classes) as `images_{train,val,test}.tar.gz` of
class folders (32x32 RGB PNGs), runs `automl run --policy auto` on examples/demo.yaml (MAE pretraining of a
ViT micro with 4-px patches, 8 trials of up to 5 epochs, ASHA) and prints the best trial, its exported ONNX
model and the MLflow UI command. Rerunning it shows the finished search again (`--extend N` adds trials).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mae.cli import run_guarded, setup_logging
from mae.data.digits import build_digits_dataset
from mae.layout import ExperimentLayout

DEMO_SPEC = Path(__file__).resolve().parent.parent / "examples" / "demo.yaml"
# The demo's budget: 8 trials of up to 5 epochs, two at a time, ASHA stopping the weak ones early, and a
# wall-clock cap so that the job stays well inside 15 minutes on a 2-core CPU machine.
SEARCH = ["--max-trials", "8", "--max-concurrent", "2", "--time-budget", "600", "--seed", "0"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m automl.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_results", help="results folder (default: %(default)s)")
    parser.add_argument("--extend", type=int, metavar="N", help="add N trials to the demo's finished search")
    args = parser.parse_args(argv)
    setup_logging()

    def go() -> int:
        from mae.spec import load_spec

        out = Path(args.out).resolve()
        t0 = time.time()
        paths = build_digits_dataset(out / "data")
        print(f"[1/3] dataset: {', '.join(str(p) for p in paths.values())} ({time.time() - t0:.1f} s)")
        overrides = [
            f"results_dir={out}",
            f"dataset.train_data_sources={paths['train']}",
            f"dataset.val_data_sources={paths['val']}",
            f"dataset.test_data_sources={paths['test']}",
        ]
        load_spec(DEMO_SPEC, overrides, action="train")
        print(f"      spec {DEMO_SPEC} is valid for train")
        from automl.cli import main as automl_main

        search = [*SEARCH, *(["--extend", str(args.extend)] if args.extend else [])]
        print(f"[2/3] AutoML search: automl run -e {DEMO_SPEC.name} --policy auto {' '.join(search)}")
        rc = automl_main(["run", "-e", str(DEMO_SPEC), "--policy", "auto", *search, *overrides])
        if rc != 0:
            return rc
        files = ExperimentLayout(out)
        summary = json.loads(files.summary.read_text())
        best, deploy = summary.get("best") or {}, summary.get("deploy") or {}
        print(
            f"[3/3] best model: trial {best.get('trial_id')}, {summary['metric']}={best.get('value', float('nan')):.4f} "
            f"after epoch {best.get('epoch')}"
        )
        for key in ("checkpoint", "spec", "onnx_file", "engine"):
            if deploy.get(key):
                print(f"      {key}: {deploy[key]}")
        for line in deploy.get("skipped", []):
            print(f"      {line}")
        print(f"      summary: {files.summary}")
        print(f"Done in {time.time() - t0:.0f} s. Compare the trials in MLflow: automl ui {out}")
        return 0

    return run_guarded("demo", go)


if __name__ == "__main__":
    sys.exit(main())
