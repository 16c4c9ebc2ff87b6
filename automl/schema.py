"""Read a train schema, ours or TAO's dialect, into a `SearchSpace`.

    space = load_search_space("schemas/train.schema.json")            # the schema's automl_default_parameters
    space = load_search_space(path, ["train.optim.lr", "train.mask_ratio"])
    space.bind(spec_values).sample(rng)                                 # {dotted key: value}

What is read in either dialect (types, bounds and Infinity, math_cond, depends_on, parent_param,
option_weights, the automl_* lists, our log_scale and automl_range) is described once, in
docs/automl_search_spaces.md under "What the reader understands".

Every problem is reported at once, one line each, naming the parameter.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from automl.parameters import (
    RELATIONAL,
    Bounds,
    Condition,
    Parameter,
    Refinement,
    apply_relation,
    capped,
    domain_of,
    fmt,
    parse_math_cond,
)
from automl.space import SearchSpace
from mae.errors import ConfigError, did_you_mean
from mae.resources import schema_dir

__all__ = [
    "Condition",
    "Parameter",
    "Refinement",
    "Schema",
    "SearchSpace",
    "TRAIN_SCHEMA",
    "load_search_space",
    "read_schema",
]

TRAIN_SCHEMA = schema_dir() / "train.schema.json"

_FLOAT_TYPES = {"number", "float"}
_INT_TYPES = {"integer", "int"}
_BOOL_TYPES = {"boolean", "bool"}
_STRING_TYPES = {"string", "str", "categorical", "enum"}
_NEVER_TYPES = {"array", "list", "collection", "object", "dict", "const"}


def _truthy(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.strip().lower() in ("true", "yes", "1"))


def _falsy(v: Any) -> bool:
    return v is False or (isinstance(v, str) and v.strip().lower() in ("false", "no", "0"))


def _number(value: Any) -> float | int | None:
    """A schema number: int/float, or TAO's Infinity spellings. None for absent/empty; ValueError otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            raise ValueError
        return value
    if isinstance(value, str):
        s = value.strip().lower().lstrip("+")
        if s in ("inf", "infinity"):
            return math.inf
        if s in ("-inf", "-infinity"):
            return -math.inf
        f = float(s)
        if math.isnan(f):
            raise ValueError
        return int(f) if f.is_integer() and "." not in s and "e" not in s else f
    raise ValueError


def _integral(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


class Schema:
    """A parsed schema: its leaves (dotted name -> JSON node), containers and AutoML lists."""

    def __init__(self, data: Mapping, path: str | os.PathLike = "<schema>"):
        self.path = str(path)
        self.file = Path(self.path).name
        self.data = data
        self.fields: dict[str, dict] = {}
        self.containers: set[str] = set()
        problems: list[str] = []
        if not isinstance(data, Mapping) or not isinstance(data.get("properties"), Mapping):
            raise ConfigError(f"{self.path}: not a spec schema (no top-level 'properties' object)")
        self._walk(data, "", problems)
        self.default_parameters = self._list("automl_default_parameters", problems)
        disabled = self._list("automl_disabled_parameters", problems)
        # TAO lists containers as disabled too; only leaves are disabled (containers are never searched).
        self.disabled = {n for n in disabled if n in self.fields}
        for name in self.default_parameters:
            if name in self.containers:
                problems.append(
                    f"{name}: listed in automl_default_parameters of {self.file} but is a container; "
                    "list its leaves"
                )
            elif name not in self.fields:
                problems.append(
                    f"{name}: listed in automl_default_parameters of {self.file} but is not a parameter of it"
                    f"{did_you_mean(name, self.fields)}"
                )
            elif name in self.disabled:
                problems.append(
                    f"{name}: listed in both automl_default_parameters and automl_disabled_parameters "
                    f"of {self.file}"
                )
        if problems:
            raise ConfigError(problems)

    def _walk(self, node: Mapping, prefix: str, problems: list[str]) -> None:
        for name, sub in node.get("properties", {}).items():
            key = f"{prefix}{name}"
            if isinstance(sub, list) and all(isinstance(v, str) for v in sub):
                # NVIDIA's schemas keep a list of section names here (e.g. `properties.automl_disabled_
                # parameters`): TAO's container list, not a field; containers are never searched anyway
                continue
            if not isinstance(sub, Mapping):
                problems.append(f"{key}: the schema entry in {self.file} is not an object")
            elif isinstance(sub.get("properties"), Mapping):
                self.containers.add(key)
                self._walk(sub, key + ".", problems)
            else:
                self.fields[key] = dict(sub)

    def _list(self, keyword: str, problems: list[str]) -> list[str]:
        def collect(node: Mapping) -> list:
            out = list(node.get(keyword) or [])
            for sub in node.get("properties", {}).values():
                if isinstance(sub, Mapping) and isinstance(sub.get("properties"), Mapping):
                    out.extend(collect(sub))
            return out

        raw = self.data.get(keyword)
        if raw is None:
            raw = collect(self.data)
        if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
            problems.append(f"{self.file}: {keyword} must be a list of dotted parameter names")
            return []
        return list(dict.fromkeys(raw))

    # ------------------------------------------------------------------------------------ searchability

    def not_searchable(self, name: str) -> str | None:
        """Why `name` cannot be searched (one line), or None when it can."""
        if name not in self.fields:
            if name in self.containers:
                leaves = [k for k in self.fields if k.startswith(name + ".")][:3]
                return (
                    f"{name}: is a group of settings, not a parameter; name its leaves "
                    f"(e.g. {', '.join(leaves)})"
                )
            return f"{name}: not a parameter of {self.file}{did_you_mean(name, self.fields)}"
        node = self.fields[name]
        if name in self.disabled or _falsy(node.get("automl_enabled")):
            return f"{name}: AutoML is disabled for this parameter in {self.file}; it cannot be searched"
        return self._kind(name, node)[1]

    def searchable(self) -> list[str]:
        return [n for n in self.fields if self.not_searchable(n) is None]

    def _kind(self, name: str, node: Mapping) -> tuple[str | None, str | None]:
        """(kind, None) or (None, why not searchable)."""
        raw = node.get("type")
        types = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
        types = [t for t in types if t != "null"]
        enum = node.get("enum")
        if "const" in node or types == ["const"]:
            return None, f"{name}: is a constant in {self.file}; it cannot be searched"
        if any(t in _NEVER_TYPES or str(t).startswith("list_") for t in types):
            return (
                None,
                f"{name}: a {'/'.join(types)} value is not searched (only numbers, booleans and enums)",
            )
        if not types:
            if isinstance(enum, list) and enum:
                types = ["ordered"]
            else:
                return None, f"{name}: has no type in {self.file}; it cannot be searched"
        if len(types) > 1:
            if set(types) <= _FLOAT_TYPES | _INT_TYPES:
                return "float", None
            return None, f"{name}: has several types {types} in {self.file}; it cannot be searched"
        t = types[0]
        if t in _FLOAT_TYPES:
            return "float", None
        if t in _INT_TYPES or t == "ordered_int":
            return "int", None
        if t in _BOOL_TYPES:
            return "bool", None
        if t in _STRING_TYPES or t == "ordered":
            if not isinstance(enum, list) or not enum:
                return None, f"{name}: a free-form {t} (no enum) is not searched"
            if t == "ordered" and all(_integral(v) and not isinstance(v, bool) for v in enum):
                return "int", None
            if t == "ordered" and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in enum):
                return "float", None
            return "categorical", None
        return None, f"{name}: type {t!r} in {self.file} is not understood"

    # ---------------------------------------------------------------------------------------- parameters

    def parameter(self, name: str, ref: Refinement | None = None) -> Parameter:
        """The searched parameter `name`, with the schema's domain narrowed by `ref` (validated inside it)."""
        why = self.not_searchable(name)
        if why:
            raise ConfigError(f"{ref.text} ({ref.source}): {why}" if ref and ref.text else why)
        node = self.fields[name]
        kind = self._kind(name, node)[0]
        here = f"{name} (in {self.file})"  # a problem of the schema
        said = here if ref is None else f"{ref.text or name} ({ref.source})"  # a problem of the refinement
        problems: list[str] = []

        bounds = self._validation_bounds(node, here, problems)
        cond, power, step = self._math_cond(node, kind, here, bounds, problems)
        depends_on = self._depends_on(node, cond, here, problems)
        choices, weights = self._schema_choices(node, kind, here, bounds, problems)
        if ref is not None and (ref.choices is not None or ref.weights is not None):
            choices, weights = self._refine_choices(
                name, kind, said, ref, choices, weights, bounds, power, step, problems
            )
        search = self._search_range(node, ref, name, kind, here, said, bounds, choices, problems)
        log = ref.log if ref is not None and ref.log is not None else _truthy(node.get("log_scale"))
        if choices is None and kind in ("float", "int") and not problems:
            self._check_scale(name, kind, here, said, search, cond, log, power, step, problems)
        when = self._when(ref, said, problems)
        if problems:
            raise ConfigError(problems)

        # numeric choices keep the validation bounds (relations filter them); a range keeps the search range
        numeric = kind in ("float", "int")
        box = search if choices is None else (bounds if numeric else None)
        param = Parameter(
            name=name,
            kind=kind,
            low=box.lo if box else None,
            high=box.hi if box else None,
            low_open=box.lo_open if box else False,
            high_open=box.hi_open if box else False,
            log=bool(log) and choices is None,
            choices=tuple(choices) if choices is not None else None,
            weights=tuple(weights) if weights is not None else None,
            power=power if choices is None else None,
            step=step if choices is None else None,
            depends_on=depends_on,
            condition=cond,
            when=when,
            parent=_truthy(node.get("parent_param")),
            default=node.get("default"),
            source=ref.source if ref is not None and ref.source else self.file,
            explicit=bool(ref is not None and ref.explicit),
        )
        if domain_of(param, capped(Bounds(*_bounds_of(param)))) is None:
            rule = (
                f" satisfies math_cond {cond.text!r}"
                if cond is not None and not cond.relative
                else " is left"
            )
            raise ConfigError(f"{said}: no value in {search.text()}{rule}")
        return param

    def _validation_bounds(self, node: Mapping, here: str, problems: list[str]) -> Bounds:
        """minimum/maximum/exclusiveMinimum/exclusiveMaximum (draft 2020 numbers or draft 4 booleans)."""
        bounds = Bounds()
        for key, low in (
            ("minimum", True),
            ("maximum", False),
            ("exclusiveMinimum", True),
            ("exclusiveMaximum", False),
        ):
            value = node.get(key)
            if isinstance(value, bool):  # draft 4: `exclusiveMinimum: true` qualifies `minimum`
                continue
            try:
                v = _number(value)
            except ValueError:
                problems.append(f"{here}: {key}={value!r} is not a number (or Infinity)")
                continue
            if v is not None:
                strict = key.startswith("exclusive") or node.get("exclusive" + key.capitalize()) is True
                (bounds.raise_low if low else bounds.lower_high)(v, strict)
        return bounds

    def _math_cond(
        self, node: Mapping, kind: str, here: str, bounds: Bounds, problems: list[str]
    ) -> tuple[Condition | None, int | None, float | int | None]:
        """(condition, power, step); bound forms ("> 0.0") are folded into `bounds`."""
        mc = node.get("math_cond")
        if mc in (None, ""):
            return None, None, None
        try:
            cond = parse_math_cond(mc, here)
        except ConfigError as e:
            problems.extend(e.problems)
            return None, None, None
        if cond.relative:
            return cond, None, None
        if cond.op in RELATIONAL:
            apply_relation(bounds, cond.op, cond.operand)
            return cond, None, None
        if cond.op == "^":
            return cond, int(cond.operand), None
        step = cond.operand
        if kind == "int":
            if not float(step).is_integer():
                problems.append(f"{here}: math_cond {cond.text!r}: an integer needs an integer step")
            step = int(step)
        return cond, None, step

    def _depends_on(
        self, node: Mapping, cond: Condition | None, here: str, problems: list[str]
    ) -> str | None:
        depends_on = node.get("depends_on") or None
        if cond is not None and cond.relative and not depends_on:
            problems.append(f"{here}: math_cond {cond.text!r} needs depends_on (the key it compares with)")
        if depends_on is None:
            return None
        if not isinstance(depends_on, str) or depends_on not in self.fields:
            problems.append(
                f"{here}: depends_on={depends_on!r} is not a parameter of {self.file}"
                f"{did_you_mean(str(depends_on), self.fields)}"
            )
        elif (
            cond is not None
            and cond.relative
            and self._kind(depends_on, self.fields[depends_on])[0]
            not in (
                "float",
                "int",
            )
        ):
            problems.append(
                f"{here}: math_cond {cond.text!r} compares with {depends_on}, which is not a number"
            )
        return depends_on

    def _schema_choices(
        self, node: Mapping, kind: str, here: str, bounds: Bounds, problems: list[str]
    ) -> tuple[list | None, list[float] | None]:
        """The enum (for a bool without one: [false, true]) and its normalised option_weights."""
        if bounds.lo > bounds.hi:
            problems.append(f"{here}: its bounds {bounds.text()} are empty")
        choices: list | None = None
        enum = node.get("enum")
        if kind == "bool":
            choices = list(enum) if isinstance(enum, list) and enum else [False, True]
            if not all(isinstance(c, bool) for c in choices):
                problems.append(f"{here}: enum {choices} of a boolean must hold true/false")
        elif isinstance(enum, list) and enum:
            choices = list(enum)
            if kind == "int" and not all(_integral(c) and not isinstance(c, bool) for c in choices):
                problems.append(f"{here}: enum {choices} of an integer parameter must hold integers")
            elif kind == "int":
                choices = [int(c) for c in choices]
            if kind in ("float", "int") and [c for c in choices if not bounds.admits(c)]:
                bad = [c for c in choices if not bounds.admits(c)]
                problems.append(f"{here}: enum values {bad} lie outside its bounds {bounds.text()}")
        raw = node.get("option_weights")
        if raw in (None, ""):
            return choices, None
        if choices is None:
            problems.append(f"{here}: option_weights need an enum to weigh")
            return choices, None
        try:
            weights = [float(w) for w in raw]
        except (TypeError, ValueError):
            problems.append(f"{here}: option_weights={raw!r} must be a list of numbers")
            return choices, None
        return choices, _check_weights(here, weights, choices, problems)

    def _refine_choices(self, name, kind, said, ref, choices, weights, bounds, power, step, problems):
        """A refinement's choices (a subset of the enum, or numbers inside the bounds) and weights."""
        new = list(ref.choices) if ref.choices is not None else list(choices or [])
        if ref.choices is not None:
            if choices is not None:
                bad = [c for c in new if not any(_same(c, s) for s in choices)]
                if bad:
                    problems.append(
                        f"{said}: {', '.join(fmt(b) for b in bad)} {'is' if len(bad) == 1 else 'are'} not "
                        f"allowed for {name}{did_you_mean(str(bad[0]), [str(c) for c in choices])}; allowed: "
                        f"{', '.join(fmt(c) for c in choices)}"
                    )
                    return choices, weights
                if ref.weights is None and weights is not None:
                    # keep the schema's weights of the values kept
                    kept = [weights[next(i for i, s in enumerate(choices) if _same(c, s))] for c in new]
                    weights = kept if sum(kept) > 0 else None
                elif ref.weights is None:
                    weights = None
            elif kind in ("float", "int"):
                for c in new:
                    number = isinstance(c, (int, float)) and not isinstance(c, bool)
                    if not number or (kind == "int" and not _integral(c)):
                        problems.append(
                            f"{said}: {fmt(c)} is not a{'n integer' if kind == 'int' else ' number'}"
                        )
                    elif not bounds.admits(c):
                        problems.append(f"{said}: {fmt(c)} is outside the schema's bounds {bounds.text()}")
                    elif power and not _is_power(c, power):
                        problems.append(f"{said}: {fmt(c)} is not a power of {power} (math_cond '^ {power}')")
                    elif step and not _is_multiple(c, step):
                        problems.append(
                            f"{said}: {fmt(c)} is not a multiple of {fmt(step)} (math_cond '/ {fmt(step)}')"
                        )
                new = [int(c) if kind == "int" and _integral(c) else c for c in new]
                weights = None
            else:
                problems.append(f"{said}: {name} has no enum to choose from")
        if len({(repr(c), type(c)) for c in new}) != len(new):
            problems.append(f"{said}: a choice is listed twice")
        if ref.weights is not None:
            weights = _check_weights(said, [float(w) for w in ref.weights], new, problems)
        return new, weights

    def _search_range(
        self, node, ref, name, kind, here, said, bounds: Bounds, choices, problems: list[str]
    ) -> Bounds:
        """automl_range (ours), else the validation bounds (TAO); then the refinement's low/high."""
        search = Bounds(bounds.lo, bounds.lo_open, bounds.hi, bounds.hi_open)
        ar = node.get("automl_range")
        if ar is not None and choices is None:
            try:
                lo, hi = (_number(v) for v in ar)
                if lo is None or hi is None:
                    raise ValueError
            except (TypeError, ValueError):
                problems.append(f"{here}: automl_range={ar!r} must be [low, high] numbers")
            else:
                self._set_range(search, bounds, lo, hi, f"{here}: automl_range={ar!r}", kind, problems)
        if ref is None:
            return search
        if ref.kind is not None and ref.kind != kind and choices is None:
            hint = {
                "int": "int(low, high) or logint(low, high)",
                "float": "uniform(low, high) or loguniform(low, high)",
            }
            what = {"int": "an integer", "float": "a float"}.get(kind, f"a {kind}")
            problems.append(f"{said}: {name} is {what} parameter; use " + hint.get(kind, "choice(...)"))
        elif ref.low is not None or ref.high is not None:
            if choices is not None and ref.choices is None:
                problems.append(f"{said}: {name} takes one of {choices}; narrow it with choice(...)")
            else:
                lo = search.lo if ref.low is None else ref.low
                hi = search.hi if ref.high is None else ref.high
                self._set_range(search, bounds, lo, hi, said, kind, problems)
        return search

    @staticmethod
    def _check_scale(name, kind, here, said, search: Bounds, cond, log, power, step, problems) -> None:
        """A numeric range must be finite (unless a relation bounds that end) and fit its scale."""
        op = cond.op if cond is not None and cond.relative else None
        capped_low, capped_high = op in (">", ">="), op in ("<", "<=")  # the depends_on value bounds that end
        if math.isinf(search.lo) and not capped_low or math.isinf(search.hi) and not capped_high:
            problems.append(
                f"{here}: the search range {search.text()} is unbounded (an Infinity bound and no "
                f"automl_range); give a range in a search-space file or --param {name}="
                + ("int(low, high)" if kind == "int" else "uniform(low, high)")
            )
        elif log and (power or step):
            problems.append(f"{said}: a log scale cannot be combined with math_cond {cond.text!r}")
        elif log and kind == "float" and not search.lo > 0:
            problems.append(
                f"{said}: a log scale needs a range above 0, got {search.text()}; give a positive low, "
                f"e.g. --param {name}=loguniform(1e-5, {fmt(search.hi)})"
            )
        elif log and kind == "int" and search.lo < 1:
            problems.append(f"{said}: a log scale on integers needs low >= 1, got {search.text()}")
        elif power and kind == "float" and not search.lo > 0:
            problems.append(f"{said}: powers of {power} need a range above 0, got {search.text()}")

    def _when(self, ref: Refinement | None, said: str, problems: list[str]) -> dict[str, tuple] | None:
        if ref is None or not ref.when:
            return None
        when = {}
        for key, allowed in ref.when.items():
            if key not in self.fields:
                problems.append(
                    f"{said}: when names {key!r}, not a parameter of {self.file}{did_you_mean(key, self.fields)}"
                )
            when[key] = tuple(allowed if isinstance(allowed, (list, tuple)) else [allowed])
        return when

    @staticmethod
    def _set_range(search: Bounds, bounds: Bounds, lo, hi, said: str, kind: str, problems: list[str]) -> None:
        """Narrow `search` to [lo, hi], which must lie inside the validation `bounds` (an end that equals an
        exclusive bound stays exclusive)."""
        ok = True
        for end, value in (("low", lo), ("high", hi)):
            if kind == "int" and not math.isinf(value) and not _integral(value):
                problems.append(f"{said}: {end}={fmt(value)} must be an integer")
                ok = False
            elif not (bounds.admits(value) or value in (bounds.lo, bounds.hi)):
                problems.append(f"{said}: {end}={fmt(value)} is outside the schema's bounds {bounds.text()}")
                ok = False
        if ok and lo > hi:
            problems.append(f"{said}: low={fmt(lo)} is above high={fmt(hi)}")
            ok = False
        if ok:
            search.lo, search.lo_open = lo, lo == bounds.lo and bounds.lo_open
            search.hi, search.hi_open = hi, hi == bounds.hi and bounds.hi_open

    # ----------------------------------------------------------------------------------------- the space

    def search_space(
        self,
        parameters: Iterable[str] | None = None,
        refinements: Mapping[str, Refinement | None] | None = None,
    ) -> SearchSpace:
        """The space of `parameters` (None: automl_default_parameters) plus any refined ones."""
        names = list(self.default_parameters if parameters is None else parameters)
        refinements = dict(refinements or {})
        names += [n for n in refinements if n not in names]
        problems: list[str] = []
        params: list[Parameter] = []
        for name in names:
            try:
                params.append(self.parameter(name, refinements.get(name)))
            except ConfigError as e:
                problems.extend(e.problems)
        if problems:
            raise ConfigError(problems)
        return SearchSpace(tuple(params), origin=self.path)


def _bounds_of(p: Parameter) -> tuple:
    lo = -math.inf if p.low is None else p.low
    hi = math.inf if p.high is None else p.high
    return lo, p.low_open, hi, p.high_open


def _is_power(v: float, base: int) -> bool:
    if v <= 0:
        return False
    e = round(math.log(v, base))
    return math.isclose(base**e, v, rel_tol=1e-12)


def _is_multiple(v: float, step: float) -> bool:
    n = round(v / step)
    return math.isclose(n * step, v, rel_tol=1e-9, abs_tol=1e-12)


def _check_weights(said: str, weights: list[float], choices: list, problems: list[str]) -> list[float] | None:
    if len(weights) != len(choices):
        problems.append(
            f"{said}: {len(weights)} option_weights for {len(choices)} choices {choices}; give one per choice"
        )
        return None
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        problems.append(f"{said}: option_weights={weights} must be >= 0 with a positive sum")
        return None
    total = sum(weights)
    return [w / total for w in weights]


def read_schema(path: str | os.PathLike = TRAIN_SCHEMA) -> Schema:
    """Parse a schema file (JSON; TAO's bare `Infinity` literals are accepted)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"schema {str(p)!r} does not exist; run `make schemas` (python -m mae.schemas)")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"schema {p}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"schema {p}: cannot be read ({e})") from None
    return Schema(data, p)


def load_search_space(
    schema_path: str | os.PathLike = TRAIN_SCHEMA,
    parameters: Iterable[str] | None = None,
    refinements: Mapping[str, Refinement | None] | None = None,
) -> SearchSpace:
    """The search space of `parameters` (None: the schema's automl_default_parameters), with optional
    narrower ranges per parameter (see automl.space for search-space files and --param)."""
    return read_schema(schema_path).search_space(parameters, refinements)
