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


def _positive_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


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
    run.add_argument(
        "--policy",
        default="auto",
        metavar="POLICY",
        help="'auto' (default): search when AutoML is enabled and runnable; 'off' or a plain-language request "
        "such as 'plain training' / 'no HPO': train the spec as written",
    )
    g = run.add_argument_group("search")
    g.add_argument(
        "--algorithm", metavar="NAME", help="tpe (default), random, gp, cmaes, pbt, or TAO's names"
    )
    g.add_argument("--scheduler", metavar="NAME", help="asha (default), fifo, hyperband, pbt")
    g.add_argument("--metric", metavar="NAME", help="metric to optimize (default: the stage's, see docs)")
    g.add_argument("--mode", choices=("min", "max"), help="with --metric: minimize or maximize")
    g.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=DIST",
        help="search NAME in DIST, e.g. train.optim.lr='loguniform(1e-5,1e-3)'; NAME=off stops searching it",
    )
    g.add_argument("--search-space", metavar="FILE", help="a search-space file instead of the curated one")
    g.add_argument(
        "--allow-objective-change",
        action="store_true",
        help="search parameters that change how the metric is computed (see docs/automl_search_spaces.md)",
    )
    g.add_argument("--seed", type=int, help="seed of the searcher (default: the spec's train.seed)")
    b = run.add_argument_group("budget")
    b.add_argument("--max-trials", type=int, default=10, metavar="N", help="trials to run (default: 10)")
    b.add_argument(
        "--time-budget", type=_positive_float, metavar="SECONDS", help="wall-clock limit of the search"
    )
    b.add_argument(
        "--gpu-hours",
        type=_positive_float,
        metavar="H",
        help="limit on wall time x GPUs held, summed over trials (needs GPUs)",
    )
    b.add_argument("--max-concurrent", type=int, metavar="N", help="trials running at the same time")
    b.add_argument("--extend", type=int, metavar="N", help="add N trials to a finished experiment")
    b.add_argument(
        "--max-retries", type=int, default=1, metavar="N", help="retries of a failed trial (default: 1)"
    )
    b.add_argument(
        "--max-consecutive-failures",
        type=int,
        default=3,
        metavar="N",
        help="stop when N trials in a row end without reporting the metric (default: 3; 0: never)",
    )
    r = run.add_argument_group("resources")
    r.add_argument("--address", metavar="ADDR", help="an existing Ray cluster (e.g. auto, ray://head:10001)")
    r.add_argument("--storage", metavar="URI", help="experiment storage: a folder or s3://bucket/prefix")
    r.add_argument(
        "--cpus-per-trial",
        type=_positive_float,
        default=1.0,
        metavar="N",
        help="CPUs of a trial (or of each worker of a multi-GPU trial); default 1",
    )
    r.add_argument(
        "--gpus-per-trial",
        type=_positive_float,
        metavar="G",
        help="GPUs of a single-device trial; a fraction (e.g. 0.5) lets small models share a GPU",
    )
    s = run.add_argument_group("schedulers")
    s.add_argument("--grace-period", type=int, default=1, metavar="EPOCHS", help="asha/hyperband (default 1)")
    s.add_argument(
        "--reduction-factor",
        type=_positive_float,
        default=3.0,
        metavar="F",
        help="asha/hyperband (default 3)",
    )
    s.add_argument("--perturbation-interval", type=int, metavar="EPOCHS", help="pbt (default: epochs / 4)")
    run.add_argument(
        "--trial-callback",
        action="append",
        default=[],
        metavar="MODULE:FACTORY",
        help="an extra Lightning callback in every trial: FACTORY(spec) -> Callback, importable on every node",
    )
    run.add_argument("--no-deploy", action="store_true", help="do not export the best model after the search")
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


def options_from_args(args: argparse.Namespace):
    from automl.runner import SearchOptions

    return SearchOptions(
        policy=args.policy,
        algorithm=args.algorithm,
        scheduler=args.scheduler,
        max_trials=args.max_trials,
        time_budget=args.time_budget,
        gpu_hours=args.gpu_hours,
        max_concurrent=args.max_concurrent,
        metric=args.metric,
        mode=args.mode,
        address=args.address,
        storage=args.storage,
        params=tuple(args.param),
        search_space=args.search_space,
        allow_objective_change=args.allow_objective_change,
        seed=args.seed,
        extend=args.extend,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_retries=args.max_retries,
        max_consecutive_failures=args.max_consecutive_failures,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        perturbation_interval=args.perturbation_interval,
        trial_callbacks=tuple(args.trial_callback),
        deploy=not args.no_deploy,
        verbose=args.verbose,
    )


def _run(args: argparse.Namespace) -> int:
    from mae.errors import ConfigError
    from mae.spec import dump_spec, load_spec

    if args.mode and not args.metric:
        raise ConfigError("--mode needs --metric (the default metric comes with its own mode)")
    if args.print_config:
        cfg = load_spec(args.spec, args.overrides, action="train")
        sys.stdout.write(dump_spec(cfg))
        return 0
    from automl.runner import run

    result = run(args.spec, args.overrides, options_from_args(args))
    if result.route == "automl" and result.summary and result.summary.get("best") is None:
        return 1  # no trial reported the metric: said in the summary
    return 0


def _status(args: argparse.Namespace) -> int:
    from automl.runner import experiment_status, format_status

    status = experiment_status(args.results_dir)
    if args.json:
        print(json.dumps({k: v for k, v in status.items() if k != "state"}, indent=1, default=str))
    else:
        print(format_status(status))
    return 0


def _ui(args: argparse.Namespace) -> int:
    from automl.runner import find_experiment
    from automl.tracking import free_port, ui_command

    files = find_experiment(args.results_dir)
    port = args.port or free_port(args.host)
    cmd = ui_command(files.results_dir, host=args.host, port=port)
    print(
        f"automl: MLflow UI of {files.results_dir} on http://{args.host}:{port} (Ctrl-C to stop)", flush=True
    )
    import subprocess

    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=10)
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    setup_logging(args.verbose)
    handler = {"run": _run, "status": _status, "ui": _ui}[args.command]
    return run_guarded("automl", lambda: handler(args))


if __name__ == "__main__":
    sys.exit(main())
