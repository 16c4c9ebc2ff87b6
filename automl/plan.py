"""The plan of a search: the spec resolved once, its space (automl.space_file), the objective, trial specs.

    plan = plan_search("spec.yaml", ["train.num_epochs=20"], params=["train.optim.lr=loguniform(1e-5,1e-3)"])
    for notice in plan.notices: print(notice)
    searcher = OptunaSearch(space=define_by_run(plan.space), metric=plan.metric, mode=plan.mode)
    cfg = trial_spec(plan.spec, trial_config, trial_results_dir(...))

What the plan does after the space is built (automl.space_file):
  - a parameter the user pins with an explicit override (`train.optim.lr=1e-3` on the command line) leaves
    the search, with a notice; values written in the spec file do not pin (they are the starting point);
  - the objective guard (automl.objective) refuses parameters that redefine the metric;
  - the space is bound to the user's spec values, which relational conditions read (warmup < num_epochs);
  - sampled trials are checked to give valid specs.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from automl.multi_objective import WEIGHTED, Goals, deploy_parameters
from automl.objective import (
    guard_objective,
    resolve_objective,
)
from automl.parameters import fmt
from automl.pareto import Objective
from automl.schema import TRAIN_SCHEMA
from automl.space import SearchSpace
from automl.space_file import build_space, parse_param, space_file_for_stage
from mae.config import ExperimentConfig
from mae.errors import ConfigError
from mae.metrics import METRIC_MODES
from mae.spec import build_raw, check_action, flatten, get_path, parse_override, set_path, validate

__all__ = [
    "DefineByRun",
    "ResolvedSpec",
    "SearchPlan",
    "absolute_overrides",
    "define_by_run",
    "max_epochs",
    "pinned_keys",
    "plan_search",
    "preflight_data",
    "trial_results_dir",
    "trial_spec",
]

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


@dataclass(frozen=True)
class ResolvedSpec:
    """The user's spec with every override applied, resolved once by the plan and shared by every trial
    (trials do not re-read the user's files or re-parse the overrides)."""

    raw: dict[str, Any]  # the spec as a nested dict, overrides applied, not yet validated
    pinned: dict[str, Any] = field(default_factory=dict)  # keys the user's explicit overrides pinned
    missing: tuple[str, ...] = ()  # `???` keys still to be supplied

    @classmethod
    def of(cls, spec: str | os.PathLike | Mapping | None, overrides: Iterable[str] = ()) -> ResolvedSpec:
        """Read the user's spec once and apply the overrides (interpolations see them)."""
        overrides = list(overrides)
        raw, missing = build_raw(spec, overrides)
        return cls(raw, pinned_keys(overrides), tuple(missing))


def trial_spec(
    spec: ResolvedSpec,
    values: Mapping[str, Any],
    trial_dir: str | os.PathLike,
    extra: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """The spec one trial trains: the user's spec and every override they gave (data sources, GPUs, parent
    checkpoints), the trial's values on top except where the user pinned a key, `extra` dotted keys last,
    writing to `trial_dir`. Validated like any spec (ConfigError otherwise)."""
    data = _trial_raw(spec.raw, spec.pinned, values, os.fspath(trial_dir))
    for key, value in (extra or {}).items():
        set_path(data, key, value)
    cfg = validate(data)
    check_action(cfg, "train", list(spec.missing), check_paths=False)
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
    spec: ResolvedSpec  # the same, unvalidated, from which each trial's spec is built
    goals: Goals  # the objectives (the first is metric/mode) and constraints
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
    objectives: Sequence[str] = (),
    constraints: Sequence[str] = (),
    latency_batch: int = 1,
    pick: str | None = None,
    objective_weights: Sequence[float] = (),
) -> SearchPlan:
    """Load the user's spec, build its stage's search space, drop pinned parameters, guard the objective,
    bind the spec's values and check that sampled trials give valid specs. With `objectives` (METRIC:MODE,
    the first one stands for `metric`/`mode`) and `constraints`, the plan's `goals` say what is optimised;
    two or more objectives also search the architecture (automl.multi_objective.deploy_parameters)."""
    overrides = list(overrides)
    params = list(params)
    raw, missing = build_raw(spec, overrides)
    cfg = validate(raw)
    check_action(cfg, "train", missing, check_paths=False)  # paths are checked where the trials run
    stage = cfg.train.stage
    chosen = Path(space_file) if space_file is not None else space_file_for_stage(stage)
    # ranges written per 256 images follow the images per optimizer step, as MAE's recipes scale lr
    batch = cfg.dataset.batch_size * cfg.train.accum_grad_batches * cfg.train.num_gpus * cfg.train.num_nodes
    space = build_space(schema_path, stage=stage, space_file=space_file, params=params, batch=batch)
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

    if objectives:
        first = Objective.parse(objectives[0])
        metric, mode = first.metric, first.mode
    else:
        metric, mode = resolve_objective(cfg, raw, metric, mode, skill_metric)
    goals = Goals.of(
        objectives,
        constraints,
        metric=metric,
        mode=mode,
        latency_batch=latency_batch,
        pick=pick,
        weights=objective_weights,
    )
    for name in goals.training_metrics():  # each training metric must be one this spec reports
        resolve_objective(cfg, raw, name, METRIC_MODES[name], skill_metric)
        space, guard_notices = guard_objective(space, name, stage, allow=allow_objective_change)
        notices += [n for n in guard_notices if n not in notices]
    if goals.several:
        extra = deploy_parameters(cfg, pinned_all)
        space = SearchSpace((*space.parameters, *extra), origin=space.origin)
        for p in extra:
            notices.append(
                f"{p.name}: searched in {list(p.choices)} (a multi-objective search trades it off)"
            )
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
    if goals.weights:  # TAO's scalarisation: the searcher and scheduler see one number
        metric, mode = WEIGHTED, "max"
    resolved = ResolvedSpec(raw, pinned_all, tuple(missing))
    return SearchPlan(space, metric, mode, stage, chosen, cfg, resolved, goals, pinned, notices)


# ------------------------------------------------------------------------------------- before Ray starts


def absolute_overrides(raw: Mapping[str, Any]) -> list[str]:
    """Overrides that make the spec's local paths absolute, so trials (whose working directory differs) and
    other nodes read the same files."""
    out = []
    for key in (
        "dataset.train_data_sources",
        "dataset.val_data_sources",
        "train.pretrained_model_path",
    ):
        value = get_path(raw, key)
        if isinstance(value, str) and value and "://" not in value and not os.path.isabs(value):
            out.append(f"{key}={os.path.abspath(os.path.expanduser(value))}")
        elif isinstance(value, list) and any(
            isinstance(v, str) and "://" not in v and not os.path.isabs(v) for v in value
        ):
            fixed = [
                v if "://" in v or os.path.isabs(v) else os.path.abspath(os.path.expanduser(v)) for v in value
            ]
            out.append(f"{key}={json.dumps(fixed)}")
    return out


def preflight_data(cfg) -> None:
    """Before starting Ray: every local data source exists and a folder holds at least one image (found by a
    scan that stops at the first one), so a typo fails in a second instead of in every trial."""
    from mae.data.sources import is_image_name
    from mae.errors import DataError

    problems = []
    for key in ("train_data_sources", "val_data_sources"):
        value = getattr(cfg.dataset, key)
        for src in [value] if isinstance(value, str) else (value or []):
            if not src or "://" in src:
                continue
            p = Path(os.path.expanduser(src))
            if not p.exists():
                problems.append(f"dataset.{key}={src!r}: no such file or folder")
            elif p.is_dir() and not any(is_image_name(name) for _, _, names in os.walk(p) for name in names):
                problems.append(f"dataset.{key}={src!r}: the folder holds no images")
    if problems:
        raise DataError("\n".join(problems))


def max_epochs(plan: SearchPlan) -> int:
    """The most epochs a trial may train (num_epochs may itself be searched)."""
    if "train.num_epochs" in plan.space:
        p = plan.space["train.num_epochs"]
        return int(p.high if p.choices is None else max(p.choices))
    return int(plan.config.train.num_epochs)
