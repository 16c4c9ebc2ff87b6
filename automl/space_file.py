"""Search-space files and `--param` expressions: the user's words for which parameters to search, and how.

Where a run's parameters and ranges come from, last one wins:
  1. the schema (`schemas/train.schema.json`): automl_default_parameters, bounds, enums, weights, conditions;
  2. the curated file of the spec's stage, `search_spaces/<stage>.yaml` (or the user's own file), which
     chooses the parameters and narrows their ranges;
  3. `--param NAME=EXPR` overrides, one parameter each (EXPR below; `off` takes it out of the search).
Every range is checked against the schema's bounds and options.

EXPR (in --param and in search-space files):
  uniform(a, b)  loguniform(a, b)      a float in [a, b], linear or log scale
  int(a, b)      logint(a, b)          an integer in [a, b] (both ends included)
  range(a, b)                          [a, b] with the schema's type and scale
  choice(x, y, ...)                    one of the values (a subset of the schema's enum, or numbers in bounds)
  choice(x: 0.7, y: 0.3)               weighted
  off                                  not searched
An end equal to an exclusive schema bound stays exclusive: uniform(0, 0.9) on `train.mask_ratio` (> 0) never
gives 0. Search-space files may also use mappings: {low, high, log, choices, weights, when, per_batch}, where
`when: {train.optim.lr_scheduler: MultiStep}` searches the parameter only under that condition and
`per_batch: 256` (or `loguniform(a, b) per 256` as an EXPR) makes the range follow the batch: a and b hold for
256 images per optimizer step and are scaled linearly to the spec's batch (MAE's lr = base_lr * batch / 256).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from automl.parameters import Refinement, fmt
from automl.schema import TRAIN_SCHEMA, read_schema
from automl.space import SearchSpace
from mae.errors import ConfigError, did_you_mean
from mae.resources import search_spaces_dir

__all__ = [
    "SEARCH_SPACES_DIR",
    "SpaceFile",
    "build_space",
    "parse_expression",
    "parse_param",
    "read_space_file",
    "space_file_for_stage",
]

SEARCH_SPACES_DIR = search_spaces_dir()
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)
_FUNCS = ("uniform", "loguniform", "int", "logint", "range", "choice")
_FILE_KEYS = ("stage", "description", "parameters")
_MAPPING_KEYS = ("search", "low", "high", "log", "choices", "weights", "when", "per_batch")
_PER = re.compile(r"^(.*\))\s+per\s+(\S+)\s*$", re.S)  # 'loguniform(1e-5, 1e-3) per 256'
BATCH_KEYS = ("dataset.batch_size", "train.accum_grad_batches", "train.num_gpus", "train.num_nodes")


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


def _per_batch(value: Any, name: str, source: str) -> int:
    v = _scalar(value) if isinstance(value, str) else value
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 1 or not float(v).is_integer():
        raise ConfigError(
            f"{name} ({source}): per_batch={value!r} must be a whole number of images, e.g. 256"
        )
    return int(v)


def scale_to_batch(ref: Refinement, name: str, batch: int) -> Refinement:
    """A `per_batch` range turned into the range at `batch` images per optimizer step (the linear scaling
    rule of MAE and its kin, lr = base_lr * batch / 256); the schema then checks it as any other range."""
    if ref.low is None or ref.high is None:
        raise ConfigError(f"{ref.text or name} ({ref.source}): per_batch needs both low and high")
    factor = batch / ref.per_batch
    lo, hi = ref.low * factor, ref.high * factor
    scaled = f"[{fmt(ref.low)}, {fmt(ref.high)}] per {ref.per_batch} images, scaled to {batch} per step"
    return replace(
        ref, low=lo, high=hi, text=f"{ref.text or name}, {scaled}", source=f"{ref.source}: {scaled}"
    )


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
        if "per_batch" in expr:
            ref.per_batch = _per_batch(expr["per_batch"], name, source)
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
    per = _PER.match(text)
    if per:
        text = per.group(1)
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
    if per:
        if func not in ("uniform", "loguniform", "range"):
            raise ConfigError(
                f"{said} ({source}): `per N` scales a float range; {func}(...) cannot follow the batch"
            )
        ref.per_batch = _per_batch(per.group(2), name, source)
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
    batch: int | None = None,
) -> SearchSpace:
    """The schema's space refined by a search-space file (default: the curated one for `stage`, if any) and
    by --param overrides; bound to `fixed` spec values when given. `batch` (images per optimizer step) turns
    ranges given `per_batch` images into absolute ones; without it they stay as written."""
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
    if batch is not None:
        for name, ref in refinements.items():
            if ref is not None and ref.per_batch is not None and name in names:
                searched = [k for k in BATCH_KEYS if k in names]
                if searched:
                    problems.append(
                        f"{ref.text or name} ({ref.source}): follows the batch, but {searched[0]} is searched; "
                        f"give {name} an absolute range (--param {name}='loguniform(a, b)') or pin {searched[0]}"
                    )
                    continue
                try:
                    refinements[name] = scale_to_batch(ref, name, batch)
                except ConfigError as e:
                    problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    space = schema.search_space(names, {n: r for n, r in refinements.items() if n in names})
    return space.bind(fixed) if fixed is not None else space
