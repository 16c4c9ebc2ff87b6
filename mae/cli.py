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
    add_cache_parser(sub)
    return parser


def add_cache_parser(sub: argparse._SubParsersAction) -> None:
    """`mae cache list|clear`: the shared data cache (prepared archives and S3 sources)."""
    p = sub.add_parser(
        "cache",
        help="list or clear the shared data cache (extracted archives, S3 downloads)",
        description="mae cache: list or clear the shared data cache. Its folder is $MAE_CACHE_DIR (default "
        "~/.cache/mae-automl); $MAE_CACHE_MAX_GB caps its size, evicting the least recently used entries "
        "that no running process uses.",
    )
    p.add_argument(
        "--cache-dir", metavar="DIR", help="the cache folder (default: $MAE_CACHE_DIR or ~/.cache)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    what = p.add_subparsers(dest="cache_command", metavar="<command>", required=True)
    what.add_parser("list", help="every entry: size, last use, whether a running process uses it, source")
    clear = what.add_parser(
        "clear", help="remove entries no running process uses (all, or those named)", description=None
    )
    clear.add_argument(
        "names", nargs="*", metavar="NAME", help="entry names or sources as written (default: every entry)"
    )


def cache_command(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from mae.data import cache as C
    from mae.data.sources import default_cache_dir

    folder = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if args.cache_command == "list":
        entries = C.list_entries(folder)
        total = sum(e.bytes for e in entries)
        cap = C.cap_bytes()
        limit = f", cap {C.human(cap)} ({C.CAP_ENV})" if cap is not None else f", no cap (set {C.CAP_ENV})"
        print(f"{folder}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {C.human(total)}{limit}")
        for e in reversed(entries):  # most recently used first
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
            state = "in use" if e.in_use else ""
            print(f"  {C.human(e.bytes):>9}  {used}  {state:6}  {e.name}  {e.source}")
        return 0
    removed, kept, unknown = C.clear(folder, args.names or None)
    for name in unknown:
        print(f"mae: warning: {name}: no such cache entry (see `mae cache list`)", file=sys.stderr)
    print(
        f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} ({C.human(sum(e.bytes for e in removed))})"
        + (f"; kept {len(kept)} in use by running processes" if kept else "")
    )
    return 1 if unknown and not removed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    setup_logging(args.verbose)
    if args.action == "cache":
        return run_guarded("mae", lambda: cache_command(args))

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
