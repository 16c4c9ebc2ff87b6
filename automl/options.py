"""The options of `automl run` besides the spec: one pydantic model from which the CLI flags, their help and
their validation all come (tests/test_automl_options.py checks that the CLI and the model cannot drift).

Each field carries its flag's group, metavar and help in `json_schema_extra["cli"]`; `automl.cli` builds the
`automl run` parser from them and turns the parsed flags back into a SearchOptions. Out-of-range values are
reported with the flag's name (`--max-trials 0: must be >= 1`), every problem at once, as a ConfigError.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mae.errors import ConfigError

GROUPS = ("search", "budget", "resources", "schedulers", "output")


def _opt(
    default: Any,
    help: str,
    *,
    group: str,
    metavar: str | None = None,
    flag: str | None = None,
    nargs: str | None = None,
    **kw,
):
    """A field with its CLI metadata. `flag` overrides the flag's name (e.g. --no-deploy for deploy=False);
    a tuple field is a repeatable flag, or one flag taking several values with nargs="+"."""
    cli = {"group": group, "metavar": metavar, "flag": flag, "nargs": nargs}
    return Field(default, description=help, json_schema_extra={"cli": cli}, **kw)


class SearchOptions(BaseModel):
    """Everything `automl run` takes besides the spec and its overrides (the CLI's flags, one for one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = _opt(
        "auto",
        "'auto' (default): search when AutoML is enabled and runnable; 'off' or a plain-language request such as "
        "'plain training' / 'no HPO': train the spec as written",
        group="search",
        metavar="POLICY",
    )
    algorithm: str | None = _opt(
        None, "tpe (default), random, gp, cmaes, pbt, or TAO's names", group="search", metavar="NAME"
    )
    scheduler: str | None = _opt(None, "asha (default), fifo, hyperband, pbt", group="search", metavar="NAME")
    metric: str | None = _opt(
        None, "metric to optimize (default: the stage's, see docs)", group="search", metavar="NAME"
    )
    mode: Literal["min", "max"] | None = _opt(None, "with --metric: minimize or maximize", group="search")
    objectives: tuple[str, ...] = _opt(
        (),
        "METRIC:MODE to optimize (repeatable; two or more make the search multi-objective, e.g. "
        "--objective ACC_all:max --objective latency_ms:min); one is the same as --metric/--mode",
        group="search",
        metavar="METRIC:MODE",
        flag="--objective",
    )
    constraints: tuple[str, ...] = _opt(
        (),
        "'METRIC<=VALUE' or 'METRIC>=VALUE' a trial must meet (repeatable); deploy metrics are checked before "
        "a trial trains, and a configuration that cannot meet them is never trained",
        group="search",
        metavar="CONSTRAINT",
        flag="--constraint",
    )
    objective_weights: tuple[float, ...] = _opt(
        (),
        "scalarise the objectives as TAO's AutoML does: optimise sum(w_i * v_i), each v_i signed so that higher "
        "is better (one weight per --objective); the Pareto front is still reported",
        group="search",
        metavar="W",
        nargs="+",
    )
    pick: str | None = _opt(
        None,
        "the objective whose best feasible trial becomes best/ (default: the first objective)",
        group="search",
        metavar="METRIC",
    )
    latency_batch: int = _opt(
        1, "batch size of the measured latency_ms (default 1)", group="search", metavar="N", ge=1
    )
    params: tuple[str, ...] = _opt(
        (),
        "search NAME in DIST, e.g. train.optim.lr='loguniform(1e-5,1e-3)'; NAME=off stops searching it "
        "(repeatable)",
        group="search",
        metavar="NAME=DIST",
        flag="--param",
    )
    search_space: str | None = _opt(
        None, "a search-space file instead of the curated one", group="search", metavar="FILE"
    )
    allow_objective_change: bool = _opt(
        False,
        "search parameters that change how the metric is computed (see docs/automl_search_spaces.md)",
        group="search",
    )
    seed: int | None = _opt(None, "seed of the searcher (default: the spec's train.seed)", group="search")
    warm_start: tuple[str, ...] = _opt(
        (),
        "start a new search from the finished trials of earlier experiments (their results folders)",
        group="search",
        metavar="DIR",
        nargs="+",
    )
    max_trials: int = _opt(10, "trials to run (default: 10)", group="budget", metavar="N", ge=1)
    time_budget: float | None = _opt(
        None, "wall-clock limit of the search", group="budget", metavar="SECONDS", gt=0
    )
    gpu_hours: float | None = _opt(
        None,
        "limit on wall time x GPUs held, summed over trials (needs GPUs)",
        group="budget",
        metavar="H",
        gt=0,
    )
    max_concurrent: int | None = _opt(
        None, "trials running at the same time", group="budget", metavar="N", ge=1
    )
    extend: int | None = _opt(
        None, "add N trials to a finished experiment", group="budget", metavar="N", ge=1
    )
    max_retries: int = _opt(
        1,
        "retries of a failed trial (default: 1; NaN and a missing metric are not retried)",
        group="budget",
        metavar="N",
        ge=0,
    )
    max_consecutive_failures: int = _opt(
        3,
        "stop when N trials in a row end without reporting the metric (default: 3; 0: never)",
        group="budget",
        metavar="N",
        ge=0,
    )
    address: str | None = _opt(
        None, "an existing Ray cluster (e.g. auto, ray://head:10001)", group="resources", metavar="ADDR"
    )
    storage: str | None = _opt(
        None, "experiment storage: a folder or s3://bucket/prefix", group="resources", metavar="URI"
    )
    cpus_per_trial: float = _opt(
        1.0,
        "CPUs of a trial (or of each worker of a multi-GPU trial); default 1",
        group="resources",
        metavar="N",
        gt=0,
    )
    gpus_per_trial: float | None = _opt(
        None,
        "GPUs of a single-device trial; a fraction (e.g. 0.5) lets small models share a GPU",
        group="resources",
        metavar="G",
        gt=0,
    )
    grace_period: int = _opt(
        1,
        "asha/hyperband: epochs before a trial can be stopped (default 1)",
        group="schedulers",
        metavar="EPOCHS",
        ge=1,
    )
    reduction_factor: float = _opt(
        3.0,
        "asha/hyperband: keep the best 1/F at each rung (default 3)",
        group="schedulers",
        metavar="F",
        gt=1,
    )
    perturbation_interval: int | None = _opt(
        None,
        "pbt: epochs between exploit/explore steps (default: epochs / 4)",
        group="schedulers",
        metavar="EPOCHS",
        ge=1,
    )
    trial_callbacks: tuple[str, ...] = _opt(
        (),
        "an extra Lightning callback in every trial: FACTORY(spec) -> Callback, importable on every node "
        "(repeatable)",
        group="output",
        metavar="MODULE:FACTORY",
        flag="--trial-callback",
    )
    deploy: bool = _opt(
        True, "do not export the best model after the search", group="output", flag="--no-deploy"
    )
    verbose: bool = Field(
        False, description="debug logging and Ray's own output (the shared -v/--verbose flag)"
    )
    progress_interval_s: float = Field(30.0, gt=0, description="the progress table every so often (API only)")

    @model_validator(mode="after")
    def _combinations(self) -> SearchOptions:
        g = self.gpus_per_trial
        if g is not None and g > 1 and g != int(g):
            raise ValueError(f"--gpus-per-trial {g:g}: a fraction below 1 or a whole number")
        if self.mode and not self.metric:
            raise ValueError("--mode needs --metric (the default metric comes with its own mode)")
        if self.objectives and (self.metric or self.mode):
            raise ValueError("--objective and --metric/--mode say the same thing; use one of them")
        if self.objective_weights and len(self.objective_weights) != len(self.objectives):
            raise ValueError(
                f"--objective-weights: {len(self.objective_weights)} weights for {len(self.objectives)} objectives; "
                "give one per --objective"
            )
        if self.pick and not self.objectives:
            raise ValueError("--pick needs --objective (it chooses among the objectives)")
        return self

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(_problems(e, data)) from None

    def budget(self) -> dict[str, Any]:
        return {"time_budget_s": self.time_budget, "gpu_hours": self.gpu_hours}

    def replace(self, **changes: Any) -> SearchOptions:
        """A validated copy with some options changed."""
        return SearchOptions(**{**self.model_dump(exclude_unset=True), **changes})

    def explicit(self, name: str) -> bool:
        """Whether the caller set this option to something other than its default."""
        return (
            name in self.model_fields_set and getattr(self, name) != SearchOptions.model_fields[name].default
        )


def flag_of(name: str) -> str:
    """The CLI flag of a field (`max_trials` -> `--max-trials`)."""
    field = SearchOptions.model_fields[name]
    cli = (field.json_schema_extra or {}).get("cli") or {}  # type: ignore[union-attr]
    return cli.get("flag") or "--" + name.replace("_", "-")


def _problems(e: ValidationError, data: Mapping[str, Any]) -> list[str]:
    out = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:  # a model-level rule writes the whole line
            out.append(msg)
            continue
        name = loc[0]
        if name not in SearchOptions.model_fields:
            out.append(f"{name}: not an option of automl run")
            continue
        value = data.get(name)
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        out.append(f"{flag_of(name)} {shown}: {_short(msg)}")
    return out


def _short(msg: str) -> str:
    for long, short in (
        ("Input should be greater than or equal to ", "must be >= "),
        ("Input should be greater than ", "must be > "),
        ("Input should be less than or equal to ", "must be <= "),
        ("Input should be ", "must be "),
    ):
        if msg.startswith(long):
            return short + msg[len(long) :]
    return msg[:1].lower() + msg[1:]


# ------------------------------------------------------------------------------------------------ the CLI


def _number(kind: type):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None

    parse.__name__ = kind.__name__
    return parse


def _kind(annotation: Any) -> tuple[str, Any]:
    """(argparse style, value type or choices) of a field's annotation."""
    text = str(annotation)
    if annotation is bool:
        return "flag", None
    if "tuple[float" in text:
        return "append", _number(float)
    if "tuple" in text:
        return "append", str
    if "Literal" in text:
        import typing

        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        choices = typing.get_args(args[0]) if args and typing.get_origin(args[0]) is Literal else args
        return "choice", tuple(choices)
    if "float" in text:
        return "value", _number(float)
    if "int" in text:
        return "value", _number(int)
    return "value", str


def add_options_to_parser(parser: argparse.ArgumentParser) -> None:
    """The `automl run` flags, one per SearchOptions field with CLI metadata, in their groups."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for name, field in SearchOptions.model_fields.items():
        cli = (field.json_schema_extra or {}).get("cli")  # type: ignore[union-attr]
        if cli is None:
            continue
        target = groups[cli["group"]]
        flag = flag_of(name)
        style, kind = _kind(field.annotation)
        kw: dict[str, Any] = {"dest": name, "help": field.description, "default": argparse.SUPPRESS}
        if cli.get("metavar"):
            kw["metavar"] = cli["metavar"]
        if style == "flag":
            kw["action"] = "store_false" if field.default is True else "store_true"
            kw.pop("metavar", None)
        elif style == "append" and cli.get("nargs"):
            kw.update(action="extend", nargs=cli["nargs"], type=kind)
        elif style == "append":
            kw.update(action="append", type=kind)
        elif style == "choice":
            kw["choices"] = kind
        else:
            kw["type"] = kind
        target.add_argument(flag, **kw)


def options_from_args(args: argparse.Namespace) -> SearchOptions:
    """SearchOptions from parsed flags: only the flags given are set (the rest keep the model's defaults)."""
    given = {name: getattr(args, name) for name in SearchOptions.model_fields if hasattr(args, name)}
    for name, value in given.items():
        if isinstance(value, list):
            given[name] = tuple(value)
    return SearchOptions(**given)
