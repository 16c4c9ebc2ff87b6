"""The search space: searched parameters in sampling order, the constraints between them, and sampling.

A `SearchSpace` orders its parameters (automl.parameters) so that every parameter comes after those it depends on
(TAO's `parent_param` ones first among equals), narrows the range of a searched parent so that its dependants
always keep at least one valid value, and draws configurations with `sample` (numpy) or, through
`automl.plan.define_by_run`, with Optuna. Fixed values come from `bind(spec_values)` or `fixed=`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from automl.parameters import (
    INF,
    Bounds,
    Domain,
    Parameter,
    apply_relation,
    as_rng,
    capped,
    domain_of,
    fmt,
    is_number,
)
from mae.errors import ConfigError


@dataclass
class SearchSpace:
    """Searched parameters in sampling order, plus the fixed spec values their conditions may read.

    Build one with `automl.schema.load_search_space` or `automl.space.build_space`; `bind(spec_values)`
    returns a copy that knows the user's fixed values (dotted keys), checks every constraint can be met and
    narrows parents so that their dependants always have a valid value.
    """

    parameters: tuple[Parameter, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    _extra: dict[str, Bounds] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.parameters = tuple(_order(self.parameters))
        self._by_name = {p.name: p for p in self.parameters}

    # -- container protocol
    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def __iter__(self) -> Iterator[Parameter]:
        return iter(self.parameters)

    def __len__(self) -> int:
        return len(self.parameters)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Parameter:
        return self._by_name[name]

    def describe(self) -> list[str]:
        return [p.describe() for p in self.parameters]

    # -- derived spaces
    def bind(self, fixed: Mapping[str, Any]) -> SearchSpace:
        """A copy that reads `fixed` (dotted spec values) for keys it does not search; checked at once."""
        space = SearchSpace(self.parameters, {**self.fixed, **dict(fixed)}, self.origin)
        space._prepare()
        return space

    def without(self, names: Iterable[str]) -> SearchSpace:
        drop = set(names)
        return SearchSpace(
            tuple(p for p in self.parameters if p.name not in drop), dict(self.fixed), self.origin
        )

    # -- sampling
    def sample(self, rng: Any = None, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One valid configuration {dotted key: value} of the active parameters."""
        space = self.bind(fixed) if fixed else self
        space._prepare()
        gen = as_rng(rng)
        values: dict[str, Any] = {}
        for p in space.parameters:
            if space.active(p, values):
                values[p.name] = space.domain(p, values).sample(gen)
        return values

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The Optuna define-by-run body: parents first, conditional parameters only when active."""
        self._prepare()
        values: dict[str, Any] = {}
        for p in self.parameters:
            if self.active(p, values):
                values[p.name] = self.domain(p, values).suggest(trial, p.name)
        return values

    def check(self, values: Mapping[str, Any]) -> list[str]:
        """Problems of a configuration against this (bound) space: one line each; [] when valid."""
        self._prepare()
        problems = [f"{k}: not a searched parameter" for k in values if k not in self]
        seen: dict[str, Any] = {}
        for p in self.parameters:
            active = self.active(p, seen)
            if not active:
                if p.name in values:
                    problems.append(f"{p.name}={fmt(values[p.name])}: set although its `when` is not met")
                continue
            if p.name not in values:
                problems.append(f"{p.name}: missing")
                continue
            v = seen[p.name] = values[p.name]
            try:
                dom = self.domain(p, seen)
            except ConfigError as e:
                problems.extend(e.problems)
                continue
            if not dom.contains(v):
                problems.append(f"{p.name}={fmt(v)}: outside its domain ({p.describe()})")
        return problems

    # -- internals shared with automl.space.define_by_run
    def value_of(self, key: str, values: Mapping[str, Any], needed_by: str) -> Any:
        if key in values:
            return values[key]
        if key in self.fixed:
            return self.fixed[key]
        raise ConfigError(
            f"{needed_by}: needs the value of {key}, which is not searched; bind the spec's values "
            f"(SearchSpace.bind) or pass fixed={{'{key}': ...}}"
        )

    def active(self, p: Parameter, values: Mapping[str, Any]) -> bool:
        for key, allowed in (p.when or {}).items():
            if key in self and key not in values and self.active(self[key], values):
                raise ConfigError(f"{p.name}: `when` reads {key} before it is sampled")  # ordering bug
            if self.value_of(key, values, p.name) not in allowed:
                return False
        return True

    def static_bounds(self, p: Parameter) -> Bounds:
        b = Bounds(
            -INF if p.low is None else p.low,
            p.low_open,
            INF if p.high is None else p.high,
            p.high_open,
        )
        extra = (self._extra or {}).get(p.name)
        if extra is not None:
            b.raise_low(extra.lo, extra.lo_open)
            b.lower_high(extra.hi, extra.hi_open)
        return b

    def domain(self, p: Parameter, values: Mapping[str, Any]) -> Domain:
        b = self.static_bounds(p)
        rel = p.relation
        if rel is not None:
            other = self.value_of(p.depends_on, values, p.name)
            if not is_number(other):
                raise ConfigError(
                    f"{p.name}: its condition '{rel.text}' compares with {p.depends_on}={fmt(other)}, "
                    "which is not a number"
                )
            apply_relation(b, rel.op, other)
        dom = domain_of(p, b)
        if dom is None:
            where = f" with {p.depends_on}={fmt(values.get(p.depends_on, self.fixed.get(p.depends_on)))}"
            raise ConfigError(
                f"{p.name}: no valid value is left in {b.text()}{where if rel else ''} ({p.describe()})"
            )
        return dom

    def _prepare(self) -> None:
        """Check every dependency can be read, and narrow searched parents so dependants keep a value."""
        if self._extra is not None:
            return
        problems: list[str] = []
        for p in self.parameters:
            keys = ([p.depends_on] if p.relation is not None else []) + list(p.when or {})
            for key in keys:
                if key not in self and key not in self.fixed:
                    problems.append(
                        f"{p.name}: needs the value of {key}, which is not searched; bind the spec's values "
                        f"(SearchSpace.bind) or pass fixed={{'{key}': ...}}"
                    )
            for key, allowed in (p.when or {}).items():
                if key in self and self[key].choices is not None:
                    bad = [a for a in allowed if a not in self[key].choices]
                    if bad:
                        problems.append(
                            f"{p.name}: when {key} in {bad}: {key} never takes "
                            f"{'that value' if len(bad) == 1 else 'those values'}; its choices are "
                            f"{list(self[key].choices)}"
                        )
        if problems:
            raise ConfigError(problems)
        extra: dict[str, Bounds] = {}
        self._extra = extra
        for child in reversed(self.parameters):  # children before parents: extremes are final when read
            rel = child.relation
            if rel is None or child.depends_on not in self:
                continue
            dom = domain_of(child, capped(self.static_bounds(child)))
            if dom is None:
                continue  # reported below
            parent = self[child.depends_on]
            b = extra.setdefault(parent.name, Bounds())
            # child op parent must stay possible: parent must lie on the right side of the child's extreme
            if rel.op == "<":
                b.raise_low(dom.lowest(), True)
            elif rel.op == "<=":
                b.raise_low(dom.lowest(), False)
            elif rel.op == ">":
                b.lower_high(dom.highest(), True)
            else:
                b.lower_high(dom.highest(), False)
        for p in self.parameters:
            b = self.static_bounds(p)
            if domain_of(p, capped(b)) is None:
                why = ""
                if p.name in extra:
                    kids = [
                        c.name for c in self.parameters if c.relation is not None and c.depends_on == p.name
                    ]
                    why = f" once narrowed so that {', '.join(kids)} keep a valid value"
                problems.append(f"{p.name}: no valid value is left in {b.text()}{why} ({p.describe()})")
            elif p.relation is not None and p.depends_on not in self and p.depends_on in self.fixed:
                try:
                    self.domain(p, {})
                except ConfigError as e:
                    problems.extend(e.problems)
        if problems:
            self._extra = None
            raise ConfigError(problems)


def _order(parameters: Iterable[Parameter]) -> list[Parameter]:
    """Topological order over depends_on/when among searched parameters; parent_param ones first."""
    params = list(parameters)
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"{', '.join(dup)}: listed twice in the search space")
    index = {p.name: i for i, p in enumerate(params)}
    deps = {
        p.name: {k for k in ([p.depends_on] if p.depends_on else []) + list(p.when or {}) if k in index}
        for p in params
    }
    done: list[Parameter] = []
    placed: set[str] = set()
    while len(done) < len(params):
        ready = [p for p in params if p.name not in placed and deps[p.name] <= placed]
        if not ready:
            left = [n for n in names if n not in placed]
            cycle = " -> ".join(left + [left[0]])
            raise ConfigError(f"{left[0]}: circular dependency between searched parameters ({cycle})")
        nxt = min(ready, key=lambda p: (not p.parent, index[p.name]))
        done.append(nxt)
        placed.add(nxt.name)
    return done


class _Recorder:
    """Stands in for an Optuna trial while a domain replays a known value: answers with the latent value and
    records the distribution the domain asked for."""

    def __init__(self, latent: Any):
        self.latent, self.distribution = latent, None

    def suggest_float(self, name, low, high, *, log=False, step=None):
        from optuna.distributions import FloatDistribution

        self.distribution = FloatDistribution(low, high, log=log, step=step)
        return self.latent

    def suggest_int(self, name, low, high, *, step=1, log=False):
        from optuna.distributions import IntDistribution

        self.distribution = IntDistribution(low, high, log=log, step=step)
        return self.latent

    def suggest_categorical(self, name, choices):
        from optuna.distributions import CategoricalDistribution

        self.distribution = CategoricalDistribution(choices)
        return self.latent


def optuna_params(space: SearchSpace, values: Mapping[str, Any]) -> tuple[dict, dict] | None:
    """(params, distributions) as `automl.plan.define_by_run` would have suggested `values` in an Optuna trial,
    so that a known configuration can be added to a study; None when a value is missing or outside the space."""
    params: dict[str, Any] = {}
    dists: dict[str, Any] = {}
    seen: dict[str, Any] = {}
    for p in space.parameters:
        if not space.active(p, seen):
            continue
        if p.name not in values:
            return None
        v = values[p.name]
        dom = space.domain(p, seen)
        if not dom.contains(v):
            return None
        rec = _Recorder(dom.latent(v))
        if dom.suggest(rec, p.name) != v:
            return None  # a value the domain cannot give back exactly
        params[p.name], dists[p.name] = rec.latent, rec.distribution
        seen[p.name] = v
    return params, dists
