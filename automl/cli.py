"""`automl run -e spec.yaml [--policy auto|off] ...`: search hyperparameters, then export the best model."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mae import __version__
from mae.cli import OVERRIDES_EPILOG, add_spec_arguments, parse_args, run_guarded, setup_logging
from mae.errors import NotBuiltError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="automl",
        description="Hyperparameter search for MAE training on Ray Tune + Optuna, tracked in MLflow.",
        epilog="Run `automl run --help` for the options of a search.",
    )
    parser.add_argument("--version", action="version", version=f"mae-automl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    run = sub.add_parser(
        "run",
        help="search hyperparameters for a train spec (or train it directly with --policy off)",
        description="automl run: search the train spec's hyperparameters, then export the best model.",
        epilog=OVERRIDES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--policy",
        default="auto",
        metavar="POLICY",
        help="'auto' (default): search when AutoML is enabled and runnable; 'off' or a plain-language request "
        "such as 'plain training' / 'no HPO': train the spec as written",
    )
    add_spec_arguments(run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    setup_logging(args.verbose)

    def go() -> int:
        from mae.spec import dump_spec, load_spec

        cfg = load_spec(args.spec, args.overrides, action="train")
        if args.print_config:
            sys.stdout.write(dump_spec(cfg))
            return 0
        raise NotBuiltError(
            "automl run is not built yet (search spaces: issue 7, Ray Tune runner: issue 8); "
            "the spec is valid (use --print-config to see it resolved)"
        )

    return run_guarded("automl", go)


if __name__ == "__main__":
    sys.exit(main())
