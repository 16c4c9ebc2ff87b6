"""Search spaces for a run: curated files, --param overrides, Optuna define-by-run, trial specs.

    plan = plan_search("spec.yaml", ["train.num_epochs=20"], params=["train.optim.lr=loguniform(1e-5,1e-3)"])
    for notice in plan.notices: print(notice)
    searcher = OptunaSearch(space=define_by_run(plan.space), metric=plan.metric, mode=plan.mode)
    cfg = trial_spec("spec.yaml", ["train.num_epochs=20"], trial_config, trial_results_dir(...))

Where a run's parameters and ranges come from, last one wins:
  1. the schema (`schemas/train.schema.json`): automl_default_parameters, bounds, enums, weights, conditions;
  2. the curated file of the spec's stage, `search_spaces/<stage>.yaml` (or the user's own file), which
     chooses the parameters and narrows their ranges;
  3. `--param NAME=EXPR` overrides, one parameter each (EXPR below; `off` takes it out of the search).
Every range is checked against the schema's bounds and options. Then:
  - a parameter the user pins with an explicit override (`train.optim.lr=1e-3` on the command line) leaves
    the search, with a notice; values written in the spec file do not pin (they are the starting point);
  - the objective guard (automl._objective) refuses parameters that redefine the metric;
  - the space is bound to the user's spec values, which relational conditions read (warmup < num_epochs).

EXPR (in --param and in search-space files):
  uniform(a, b)  loguniform(a, b)      a float in [a, b], linear or log scale
  int(a, b)      logint(a, b)          an integer in [a, b] (both ends included)
  range(a, b)                          [a, b] with the schema's type and scale
  choice(x, y, ...)                    one of the values (a subset of the schema's enum, or numbers in bounds)
  choice(x: 0.7, y: 0.3)               weighted
  off                                  not searched
An end equal to an exclusive schema bound stays exclusive: uniform(0, 0.9) on `train.mask_ratio` (> 0) never
gives 0. Search-space files may also use mappings: {low, high, log, choices, weights, when}, where
`when: {train.optim.lr_scheduler: MultiStep}` searches the parameter only under that condition.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from automl._objective import (
    ALLOW_FLAG,
    HELD_OUT_METRICS,
    METRIC_MODES,
    guard_objective,
    objective_change_reason,
    resolve_objective,
)
from automl._params import Refinement, SearchSpace, fmt
from automl.schema import TRAIN_SCHEMA, read_schema
from mae.config import ExperimentConfig
from mae.errors import ConfigError, did_you_mean
from mae.spec import build_raw, check_action, flatten, get_path, parse_override, set_path, validate

__all__ = [
    "ALLOW_FLAG",
    "HELD_OUT_METRICS",
    "METRIC_MODES",
    "SEARCH_SPACES_DIR",
    "SearchPlan",
    "SpaceFile",
    "DefineByRun",
    "build_space",
    "define_by_run",
    "guard_objective",
    "objective_change_reason",
    "parse_expression",
    "parse_param",
    "pinned_keys",
    "plan_search",
    "read_space_file",
    "resolve_objective",
    "space_file_for_stage",
    "trial_results_dir",
    "trial_spec",
]

SEARCH_SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)
_FUNCS = ("uniform", "loguniform", "int", "logint", "range", "choice")
_FILE_KEYS = ("stage", "description", "parameters")
_MAPPING_KEYS = ("search", "low", "high", "log", "choices", "weights", "when")


# ------------------------------------------------------------------------------------------ expressions


def _scalar(text: str) -> Any:
    """'1e-5' -> 1e-05, '8' -> 8, 'true' -> True, 'cosine' -> 'cosine', "'a,b'" -> 'a,b'."""
    s = text.strip()
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    try:
        value = yaml.safe_load(s)
    except yaml.YAMLError:
        return s
    return value if isinstance(value, (str, bool, int, float)) or value is None else s


def _split_args(args: str) -> list[str]:
    """Split on commas outside quotes."""
    out, cur, quote = [], "", None
    for ch in args:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ",":
            out.append(cur)
            cur = ""
            continue
        cur += ch
    out.append(cur)
    return [a.strip() for a in out]


def parse_expression(expr: Any, name: str, source: str, *, explicit: bool = True) -> Refinement | None:
    """A search-space entry (EXPR string, mapping, or null = the schema's range) -> Refinement; 'off' -> None."""
    said = f"{name}={expr}" if isinstance(expr, str) else name
    ref = Refinement(source=source, text=said, explicit=explicit)
    if expr is None:
        return ref
    if isinstance(expr, Mapping):
        unknown = [k for k in expr if k not in _MAPPING_KEYS]
        if unknown:
            raise ConfigError(
                f"{name} ({source}): unknown key {unknown[0]!r}{did_you_mean(str(unknown[0]), _MAPPING_KEYS)}; "
                f"allowed: {', '.join(_MAPPING_KEYS)}"
            )
        if "search" in expr:
            if any(k in expr for k in ("low", "high", "log", "choices", "weights")):
                raise ConfigError(
                    f"{name} ({source}): give either `search: EXPR` or low/high/log/choices/weights"
                )
            inner = parse_expression(expr["search"], name, source, explicit=explicit)
            if inner is None:
                raise ConfigError(
                    f"{name} ({source}): `search: off` with `when` makes no sense; drop the entry"
                )
            ref = inner
        for key in ("low", "high"):
            if key in expr:
                v = expr[key]
                v = _scalar(v) if isinstance(v, str) else v
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ConfigError(f"{name} ({source}): {key}={v!r} must be a number")
                setattr(ref, key, v)
        if "log" in expr:
            if not isinstance(expr["log"], bool):
                raise ConfigError(f"{name} ({source}): log={expr['log']!r} must be true or false")
            ref.log = expr["log"]
        if "choices" in expr:
            if not isinstance(expr["choices"], list) or not expr["choices"]:
                raise ConfigError(f"{name} ({source}): choices must be a non-empty list")
            ref.choices = list(expr["choices"])
        if "weights" in expr:
            w = expr["weights"]
            if not isinstance(w, list) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in w
            ):
                raise ConfigError(f"{name} ({source}): weights={w!r} must be a list of numbers")
            ref.weights = [float(x) for x in w]
        if "when" in expr:
            when = expr["when"]
            if not isinstance(when, Mapping) or not when:
                raise ConfigError(
                    f"{name} ({source}): when must map keys to values, e.g. {{train.optim.lr_scheduler: MultiStep}}"
                )
            ref.when = {str(k): list(v) if isinstance(v, list) else [v] for k, v in when.items()}
        return ref
    if not isinstance(expr, str):
        raise ConfigError(
            f"{name} ({source}): {expr!r} is not a search range; write e.g. loguniform(1e-5, 1e-3), "
            "int(0, 10), choice(a, b) or a mapping {low, high, log, choices, weights, when}"
        )
    text = expr.strip()
    if text.lower() == "off":
        return None
    m = _CALL.match(text)
    func = m.group(1).lower() if m else None
    if func not in _FUNCS:
        raise ConfigError(
            f"{said} ({source}): not understood; write uniform(a, b), loguniform(a, b), int(a, b), logint(a, b), "
            "range(a, b), choice(x, y, ...), choice(x: 0.7, y: 0.3) or off"
            + (did_you_mean(func, _FUNCS) if func else "")
        )
    args = _split_args(m.group(2))
    if func == "choice":
        if not args or any(a == "" for a in args):
            raise ConfigError(
                f"{said} ({source}): choice needs one or more values, e.g. choice(cosine, MultiStep)"
            )
        items = [a.rpartition(":") for a in args]
        weighted = [sep != "" and isinstance(_scalar(w), (int, float)) for _, sep, w in items]
        if any(weighted) and not all(weighted):
            raise ConfigError(f"{said} ({source}): weigh every choice (x: 0.7, y: 0.3) or none")
        if all(weighted):
            ref.choices = [_scalar(v) for v, _, _ in items]
            ref.weights = [float(_scalar(w)) for _, _, w in items]
        else:
            ref.choices = [_scalar(a) for a in args]
        return ref
    if len(args) != 2:
        raise ConfigError(f"{said} ({source}): {func} takes two values, {func}(low, high)")
    lo, hi = (_scalar(a) for a in args)
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{said} ({source}): {v!r} is not a number")
    if func in ("int", "logint"):
        for v in (lo, hi):
            if not float(v).is_integer():
                raise ConfigError(f"{said} ({source}): {fmt(v)} is not an integer; {func} takes integers")
        lo, hi = int(lo), int(hi)
    ref.low, ref.high = lo, hi
    ref.kind = {"uniform": "float", "loguniform": "float", "int": "int", "logint": "int"}.get(func)
    ref.log = {"uniform": False, "loguniform": True, "int": False, "logint": True}.get(func)
    return ref


def parse_param(text: str) -> tuple[str, Refinement | None]:
    """'--param' value 'train.optim.lr=loguniform(1e-5,1e-3)' -> (name, Refinement); 'NAME=off' -> (name, None)."""
    name, sep, expr = text.partition("=")
    name = name.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
        raise ConfigError(
            f"--param {text!r}: expected NAME=EXPR with a dotted name, e.g. train.optim.lr=loguniform(1e-5,1e-3)"
        )
    from mae.spec import canonical_key

    name = canonical_key(name)
    return name, parse_expression(expr.strip(), name, "--param")


# -------------------------------------------------------------------------------------- space files


@dataclass
class SpaceFile:
    """A search-space file: the parameters it searches, in order, with their refinements."""

    path: Path
    stage: str | None
    description: str
    refinements: dict[str, Refinement]


def space_file_for_stage(stage: str) -> Path | None:
    """The curated file for a train.stage (`search_spaces/<stage>.yaml`), or None when there is none."""
    path = SEARCH_SPACES_DIR / f"{stage}.yaml"
    return path if path.is_file() else None


def read_space_file(path: str | os.PathLike, *, curated: bool | None = None) -> SpaceFile:
    """Parse a search-space file (checked against the schema when the space is built)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search-space file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"search-space file {p}: invalid YAML{where}: {problem} "
            "(quote expressions that contain ': ', e.g. \"choice(a: 0.7, b: 0.3)\")"
        ) from None
    if not isinstance(data, Mapping) or not isinstance(data.get("parameters"), Mapping):
        raise ConfigError(
            f"search-space file {p}: expected a mapping with `parameters: {{name: range, ...}}`"
        )
    problems = [
        f"search-space file {p}: unknown key {k!r}{did_you_mean(str(k), _FILE_KEYS)}; allowed: {', '.join(_FILE_KEYS)}"
        for k in data
        if k not in _FILE_KEYS
    ]
    if curated is None:
        curated = p.resolve().parent == SEARCH_SPACES_DIR
    source = f"search_spaces/{p.name}" if curated else str(p)
    refinements: dict[str, Refinement] = {}
    for name, expr in data["parameters"].items():
        try:
            ref = parse_expression(expr, str(name), source, explicit=not curated)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        if ref is None:
            problems.append(
                f"{name} ({source}): `off` in a search-space file: leave the parameter out instead"
            )
            continue
        refinements[str(name)] = ref
    stage = data.get("stage")
    if stage is not None and stage not in ("pretrain", "finetune"):
        problems.append(f"search-space file {p}: stage={stage!r}: allowed pretrain, finetune")
    if problems:
        raise ConfigError(problems)
    return SpaceFile(p, stage, str(data.get("description") or ""), refinements)


def build_space(
    schema_path: str | os.PathLike = TRAIN_SCHEMA,
    *,
    stage: str | None = None,
    space_file: str | os.PathLike | None = None,
    params: Iterable[str] = (),
    fixed: Mapping[str, Any] | None = None,
) -> SearchSpace:
    """The schema's space refined by a search-space file (default: the curated one for `stage`, if any) and
    by --param overrides; bound to `fixed` spec values when given."""
    schema = read_schema(schema_path)
    sf: SpaceFile | None = None
    if space_file is not None:
        sf = read_space_file(space_file)
    elif stage is not None and space_file_for_stage(stage) is not None:
        sf = read_space_file(space_file_for_stage(stage), curated=True)
    problems: list[str] = []
    if sf is not None and sf.stage is not None and stage is not None and sf.stage != stage:
        problems.append(
            f"search-space file {sf.path} is for train.stage={sf.stage}, but the spec trains stage {stage}"
        )
    names = list(sf.refinements) if sf is not None else list(schema.default_parameters)
    refinements: dict[str, Refinement | None] = dict(sf.refinements) if sf is not None else {}
    for text in params:
        try:
            name, ref = parse_param(text)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        if ref is None:
            if name not in names:
                problems.append(f"--param {text}: {name} is not searched, so there is nothing to turn off")
            else:
                names.remove(name)
                refinements.pop(name, None)
            continue
        refinements[name] = ref
        if name not in names:
            names.append(name)
    if problems:
        raise ConfigError(problems)
    space = schema.search_space(names, {n: r for n, r in refinements.items() if n in names})
    return space.bind(fixed) if fixed is not None else space


# -------------------------------------------------------------------------------------------- optuna


class DefineByRun:
    """The define-by-run function of a bound space: `f(trial) -> {dotted key: value}`. A class rather than a
    closure so that it pickles: Ray Tune's OptunaSearch pickles its state, this function included, into the
    experiment checkpoint that crash recovery restores."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        values = self.space.suggest(trial)
        trial.set_user_attr("automl_config", values)
        return values


def define_by_run(space: SearchSpace, fixed: Mapping[str, Any] | None = None) -> DefineByRun:
    """An Optuna define-by-run function for `space` (bound to `fixed` spec values), returning the trial's
    configuration {dotted key: value}.

    Parents are suggested before their dependants, and a parameter whose `when` is not met is not suggested.
    Real values are suggested directly (suggest_float/suggest_int with log and step), except:
      - weighted or ordered choices: a uniform u = suggest_float(name, 0, 1) mapped through the cumulative
        weights (inverse CDF); under random sampling each value has exactly its weight, and TPE learns which
        stretch of u is good. The cost: TPE sees the choices laid out on a line in the listed order, so
        neighbours share evidence, and a low-weight value is a narrow stretch that TPE explores little;
      - powers (`^ 2`): the exponent, suggest_int(name, e_lo, e_hi), so each power is equally likely;
      - float multiples (`/ 0.05`): the integer multiplier.
    For these, Optuna's own records (`trial.params`) hold the latent value under the parameter's name; the
    returned dict, which Ray Tune's OptunaSearch merges over the captured suggestions, holds the real one, and
    so does the trial's user attribute `automl_config`. Dotted names pass through Ray Tune unchanged (it splits
    only on '/'). The function pickles (Ray checkpoints the searcher with it).
    """
    return DefineByRun(space.bind(fixed or {}))


# ---------------------------------------------------------------------------------------- trial specs


def pinned_keys(overrides: Iterable[str]) -> dict[str, Any]:
    """{canonical dotted key: value} of the user's explicit command-line overrides (shorthands resolved)."""
    pinned: dict[str, Any] = {}
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError:
            continue  # reported when the spec is loaded
        pinned[key] = value
    return pinned


def trial_results_dir(results_dir: str | os.PathLike, trial_id: str) -> str:
    """`<results_dir>/automl/trials/<trial_id>`: where one trial trains (a train results folder)."""
    if not trial_id or not re.fullmatch(r"[A-Za-z0-9_.-]+", trial_id) or trial_id in (".", ".."):
        raise ConfigError(f"trial id {trial_id!r}: use letters, digits, '_', '-' and '.' only")
    return os.path.join(os.fspath(results_dir), "automl", "trials", trial_id)


def _trial_raw(raw: dict, pinned: Mapping[str, Any], values: Mapping[str, Any], trial_dir: str) -> dict:
    data = copy.deepcopy(raw)
    for key, value in values.items():
        if key not in pinned:  # the user's explicit override wins (such keys left the search already)
            set_path(data, key, value)
    # Each trial trains in its own folder and never resumes from another run's checkpoint; a crashed trial
    # resumes from the latest checkpoint in its own folder (train's default).
    set_path(data, "train.results_dir", trial_dir)
    set_path(data, "train.resume_training_checkpoint_path", None)
    if get_path(data, "wandb.run_id") is not None:
        set_path(data, "wandb.run_id", None)
    return data


def trial_spec(
    user_spec: str | os.PathLike | Mapping | None,
    user_overrides: Iterable[str],
    values: Mapping[str, Any],
    trial_dir: str | os.PathLike,
) -> ExperimentConfig:
    """The spec one trial trains: the user's spec and every override they gave (data sources, GPUs, parent
    checkpoints), the trial's values on top except where the user pinned a key, writing to `trial_dir`.
    Validated like any spec (ConfigError otherwise)."""
    overrides = list(user_overrides)
    raw, missing = build_raw(user_spec, overrides)
    cfg = validate(_trial_raw(raw, pinned_keys(overrides), values, os.fspath(trial_dir)))
    check_action(cfg, "train", missing, check_paths=False)
    return cfg


# ------------------------------------------------------------------------------------------ the plan


@dataclass
class SearchPlan:
    """Everything the runner needs to start a search, checked."""

    space: SearchSpace  # bound to the user's spec values
    metric: str
    mode: str
    stage: str
    space_file: Path | None
    config: ExperimentConfig  # the user's spec as loaded (with overrides)
    pinned: dict[str, Any] = field(default_factory=dict)  # searched keys the user pinned -> value
    notices: list[str] = field(default_factory=list)


def plan_search(
    spec: str | os.PathLike | Mapping | None,
    overrides: Iterable[str] = (),
    *,
    params: Iterable[str] = (),
    space_file: str | os.PathLike | None = None,
    schema_path: str | os.PathLike = TRAIN_SCHEMA,
    metric: str | None = None,
    mode: str | None = None,
    allow_objective_change: bool = False,
    skill_metric: str = "train_loss",
    check_samples: int = 16,
) -> SearchPlan:
    """Load the user's spec, build its stage's search space, drop pinned parameters, guard the objective,
    bind the spec's values and check that sampled trials give valid specs."""
    overrides = list(overrides)
    params = list(params)
    raw, missing = build_raw(spec, overrides)
    cfg = validate(raw)
    check_action(cfg, "train", missing, check_paths=False)  # paths are checked where the trials run
    stage = cfg.train.stage
    chosen = Path(space_file) if space_file is not None else space_file_for_stage(stage)
    space = build_space(schema_path, stage=stage, space_file=space_file, params=params)
    notices: list[str] = []
    if chosen is None:
        notices.append(f"no search_spaces/{stage}.yaml: searching the schema's automl_default_parameters")

    # the user's explicit overrides pin a parameter
    pinned_all = pinned_keys(overrides)
    from_param = {parse_param(t)[0] for t in params}
    pinned = {k: v for k, v in pinned_all.items() if k in space}
    clash = sorted(k for k in pinned if k in from_param)
    if clash:
        raise ConfigError(
            [
                f"{k}: pinned by your override {k}={fmt(pinned[k])} and searched by --param; keep one"
                for k in clash
            ]
        )
    for key, value in pinned.items():
        notices.append(f"{key}: pinned by your override {key}={fmt(value)}; left out of the search")
    space = space.without(pinned)

    metric, mode = resolve_objective(cfg, raw, metric, mode, skill_metric)
    space, guard_notices = guard_objective(space, metric, stage, allow=allow_objective_change)
    notices += guard_notices
    if len(space) == 0:
        raise ConfigError(
            "nothing is left to search: every parameter was pinned or left out; see the notices"
        )

    space = space.bind(flatten(cfg.model_dump()))
    if cfg.train.resume_training_checkpoint_path:
        notices.append(
            "train.resume_training_checkpoint_path is ignored by trials: each trial trains from the start in its "
            "own folder (and resumes only its own checkpoints)"
        )
    if cfg.wandb.run_id:
        notices.append("wandb.run_id is ignored by trials: each trial is its own W&B run")

    # sampled trials must give valid specs (cross-field rules such as min_scale <= max_scale)
    rng = np.random.default_rng(0)
    problems: dict[str, None] = {}
    for _ in range(check_samples):
        values = space.sample(rng)
        try:
            validate(_trial_raw(raw, pinned_all, values, "trial"))
        except ConfigError as e:
            for line in e.problems:
                problems.setdefault(f"a sampled trial is not a valid spec: {line}", None)
    if problems:
        raise ConfigError(list(problems))
    return SearchPlan(space, metric, mode, stage, chosen, cfg, pinned, notices)
