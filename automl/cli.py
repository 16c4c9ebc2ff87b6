"""`automl run|status|ui`: search a train spec's hyperparameters on Ray Tune, follow it, compare its trials.

automl run -e spec.yaml [--policy auto|off] [--algorithm NAME] [--scheduler NAME] [--max-trials N]
           [--time-budget SECONDS] [--gpu-hours H] [--max-concurrent N] [--metric NAME --mode min|max]
           [--address ADDR] [--param NAME=DIST ...] [--search-space FILE] [--seed N] [--extend N]
           [key=value ...]
automl status RESULTS_DIR
automl ui RESULTS_DIR [--port P]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from automl.options import add_options_to_parser, options_from_args
from mae import __version__
from mae.cli import OVERRIDES_EPILOG, add_spec_arguments, parse_args, run_guarded, setup_logging

RUN_EPILOG = (
    "algorithms: tpe (default), random, gp, cmaes (Optuna samplers), pbt (Population Based Training);\n"
    "  TAO's names: bayesian (-> gp + fifo), hyperband (-> random + hyperband), asha (-> random + asha),\n"
    "  bohb (-> tpe + hyperband), pbt\n"
    "schedulers: asha (default), fifo, hyperband, pbt\n"
    "rerun the same command to resume an interrupted search; --extend N adds N trials to a finished one\n\n"
    + OVERRIDES_EPILOG
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="automl",
        description="Hyperparameter search for MAE training on Ray Tune + Optuna, tracked in MLflow.",
        epilog="Run `automl <command> --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"mae-automl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    run = sub.add_parser(
        "run",
        help="search hyperparameters for a train spec (or train it directly with --policy off)",
        description="automl run: search the train spec's hyperparameters, then export the best model.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options_to_parser(run)
    add_spec_arguments(run)

    status = sub.add_parser(
        "status",
        help="trials so far and the best so far of an experiment (also while it runs)",
        description="automl status: the trials of the experiment in RESULTS_DIR and the best so far.",
    )
    status.add_argument("results_dir", metavar="RESULTS_DIR")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    ui = sub.add_parser(
        "ui",
        help="serve the MLflow UI of an experiment on 127.0.0.1",
        description="automl ui: the MLflow UI over RESULTS_DIR's tracking store, to compare trials.",
    )
    ui.add_argument("results_dir", metavar="RESULTS_DIR")
    ui.add_argument("--port", type=int, default=5000, help="port (default: 5000; 0 picks a free one)")
    ui.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    ui.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _run(args: argparse.Namespace) -> int:
    from mae.spec import dump_spec, load_spec

    options = options_from_args(args)  # every flag checked before anything is read
    if args.print_config:
        cfg = load_spec(args.spec, args.overrides, action="train")
        sys.stdout.write(dump_spec(cfg))
        return 0
    from automl.runner import run

    result = run(args.spec, args.overrides, options)
    if result.route == "automl" and result.summary and result.summary.get("best") is None:
        return 1  # no trial reported the metric: said in the summary
    return 0


def _status(args: argparse.Namespace) -> int:
    from automl.report import experiment_status, format_status

    status = experiment_status(args.results_dir)
    if args.json:
        print(json.dumps({k: v for k, v in status.items() if k != "state"}, indent=1, default=str))
    else:
        print(format_status(status))
    return 0


def _ui(args: argparse.Namespace) -> int:
    from automl.experiment import find_experiment
    from automl.ui import serve_ui

    files = find_experiment(args.results_dir)
    return serve_ui(files.results_dir, host=args.host, port=args.port)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    setup_logging(args.verbose)
    handler = {"run": _run, "status": _status, "ui": _ui}[args.command]
    return run_guarded("automl", lambda: handler(args))


if __name__ == "__main__":
    sys.exit(main())
