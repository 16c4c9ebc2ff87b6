"""`mae <action> -e spec.yaml [key=value ...]`: run one action on a spec.

User mistakes (a bad spec, a missing file, a wrong checkpoint) print one line per problem and exit non-zero
(2 for spec errors) without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from mae import __version__
from mae.config import ACTIONS, SHORTHANDS
from mae.errors import MAEError

ACTION_HELP = {
    "train": "pretrain (masked reconstruction) or finetune (classifier) per train.stage",
    "evaluate": "loss and top-1/top-5 of a classifier, or reconstruction loss of a pretrain checkpoint",
    "inference": "results.csv for a classifier, or reconstruction image grids for a pretrain checkpoint",
    "export": "export a checkpoint to ONNX, checked against PyTorch with onnxruntime",
    "gen_trt_engine": "build a TensorRT engine from an ONNX file (needs the 'deploy' extra and a GPU)",
}

OVERRIDES_EPILOG = (
    "overrides: dotted keys with YAML values, applied after the spec file, e.g.\n"
    "  train.optim.lr=1e-3  train.gpu_ids=[0,1]  dataset.train_data_sources=/data/images_train.tar.gz\n"
    "TAO shorthand keys: " + ", ".join(f"{k}->{v}" for k, v in SHORTHANDS.items()) + "\n"
    "Default specs with every key: schemas/spec_template_<action>.yaml"
)


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s: %(message)s"))
    for name in ("mae", "automl"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = False


def add_spec_arguments(parser: argparse.ArgumentParser, *, spec_required: bool = True) -> None:
    """The spec options shared by every command that runs on a spec."""
    parser.add_argument(
        "-e",
        "--experiment_spec",
        "--spec",
        dest="spec",
        required=spec_required,
        metavar="SPEC",
        help="YAML experiment spec (TAO's MAE spec format)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="validate the spec for this action, print it fully resolved and exit (runs nothing)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides (see below)")


def run_guarded(prog: str, fn: Callable[[], int]) -> int:
    """Run `fn`, turning user errors into one line per problem and their exit code."""
    try:
        return fn()
    except MAEError as e:
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"{prog}: error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """argparse, but returning its exit code instead of raising SystemExit (so main(argv) can be tested)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mae",
        description="Masked Autoencoder pretraining, finetuning and deployment (TAO-compatible specs).",
        epilog="Run `mae <action> --help` for an action's options. Search hyperparameters with `automl run`.",
    )
    parser.add_argument("--version", action="version", version=f"mae-automl {__version__}")
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    for action in ACTIONS:
        p = sub.add_parser(
            action,
            help=ACTION_HELP[action],
            description=f"mae {action}: {ACTION_HELP[action]}.",
            epilog=OVERRIDES_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_spec_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    setup_logging(args.verbose)

    def go() -> int:
        from mae.spec import dump_spec, load_spec

        cfg = load_spec(args.spec, args.overrides, action=args.action)
        if args.print_config:
            sys.stdout.write(dump_spec(cfg))
            return 0
        from mae.actions import run_action

        run_action(args.action, cfg)
        return 0

    return run_guarded("mae", go)


if __name__ == "__main__":
    sys.exit(main())
