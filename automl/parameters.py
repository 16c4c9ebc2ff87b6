"""Searched parameters and their value domains (automl.space.SearchSpace combines them into a space).

A `Parameter` is one searched spec key (dotted, e.g. `train.optim.lr`) with a kind (float, int, categorical,
bool) and a domain. Bounds carry their strictness (`low_open`: the value must be > low). Numeric domains are
one of: a range (uniform or log-uniform), integer multiples of `step` (TAO's `"/ 32"`), integer powers of
`power` (TAO's `"^ 2"`, each power equally likely), or an explicit list of `choices` (optionally weighted).

Constraints between parameters:
  relational `condition`  `"< depends_on"` etc.: the value is compared with the value of `depends_on`, which is
                          either searched (then sampled first) or a fixed value from the user's spec.
  `when`                  {key: allowed values}: the parameter is searched only when each key's value is
                          allowed (e.g. a MultiStep-only knob); otherwise the spec's value stays.

A `SearchSpace` orders its parameters so that every parameter comes after those it depends on (TAO's
`parent_param` ones first among equals), narrows the range of a searched parent so that its dependants always
keep at least one valid value, and draws configurations with `sample` (numpy) or, through
`automl.space.define_by_run`, with Optuna. Fixed values come from `bind(spec_values)` or `fixed=`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from mae.errors import ConfigError

KINDS = ("float", "int", "categorical", "bool")
RELATIONAL = (">", ">=", "<", "<=")
INF = math.inf


# ------------------------------------------------------------------------------------------ conditions


@dataclass(frozen=True)
class Condition:
    """A parsed TAO `math_cond`: `op` is one of > >= < <= ^ /; `operand` None means 'the depends_on value'."""

    op: str
    operand: float | None
    text: str

    @property
    def relative(self) -> bool:
        return self.operand is None

    def __str__(self) -> str:
        return self.text


MATH_COND_FORMS = "'> 0.0', '>= 0', '< 1', '<= 1', '^ 2', '/ 32', '> depends_on', '<= depends_on'"


def parse_math_cond(text: str, name: str) -> Condition:
    """'> 0.0' -> Condition('>', 0.0); '^ 2' -> Condition('^', 2); '< depends_on' -> Condition('<', None)."""
    s = str(text).strip()
    for op in (">=", "<=", ">", "<", "^", "/"):
        if s.startswith(op):
            rest = s[len(op) :].strip()
            break
    else:
        raise ConfigError(f"{name}: math_cond {text!r} is not understood; allowed forms: {MATH_COND_FORMS}")
    if rest == "depends_on":
        if op not in RELATIONAL:
            raise ConfigError(f"{name}: math_cond {text!r}: only > >= < <= compare with depends_on")
        return Condition(op, None, s)
    try:
        value = float(rest)
    except ValueError:
        raise ConfigError(
            f"{name}: math_cond {text!r} is not understood; allowed forms: {MATH_COND_FORMS}"
        ) from None
    if op == "^" and (value != int(value) or value < 2):
        raise ConfigError(f"{name}: math_cond {text!r}: the base of a power must be an integer >= 2")
    if op == "/" and not value > 0:
        raise ConfigError(f"{name}: math_cond {text!r}: the step of a multiple must be > 0")
    return Condition(op, value, s)


# ---------------------------------------------------------------------------------------- number text


def fmt(x: Any) -> str:
    if isinstance(x, float):
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return repr(x)
    return repr(x) if isinstance(x, str) else str(x)


def interval_text(lo: float, lo_open: bool, hi: float, hi_open: bool) -> str:
    return f"{'(' if lo_open or math.isinf(lo) else '['}{fmt(lo)}, {fmt(hi)}{')' if hi_open or math.isinf(hi) else ']'}"


# ----------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Parameter:
    """One searched key. See the module docstring for the meaning of each field."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    low_open: bool = False
    high_open: bool = False
    log: bool = False
    choices: tuple | None = None
    weights: tuple[float, ...] | None = None  # probabilities of `choices` (normalised), or None = uniform
    power: int | None = None
    step: float | int | None = None
    depends_on: str | None = None
    condition: Condition | None = None
    when: Mapping[str, tuple] | None = None
    parent: bool = False
    default: Any = None
    source: str = "schema"  # where the range came from
    explicit: bool = False  # the user asked for this parameter (a --param or their own search-space file)

    @property
    def relation(self) -> Condition | None:
        """The relational condition against depends_on, if any."""
        return self.condition if self.condition is not None and self.condition.relative else None

    def describe(self) -> str:
        if self.choices is not None:
            if self.weights is None:
                what = ", ".join(fmt(c) for c in self.choices)
            else:
                what = ", ".join(
                    f"{fmt(c)}: {w:.3g}" for c, w in zip(self.choices, self.weights, strict=True)
                )
            text = f"{self.name}: {self.kind} one of {{{what}}}"
        else:
            text = f"{self.name}: {self.kind} in {interval_text(self.low, self.low_open, self.high, self.high_open)}"
            if self.power:
                text += f", powers of {self.power}"
            if self.step:
                text += f", multiples of {fmt(self.step)}"
            if self.log:
                text += ", log scale"
        if self.relation is not None:
            text += f", {self.relation.op} {self.depends_on}"
        if self.when:
            text += ", when " + " and ".join(
                f"{k} in {list(v)}" if len(v) > 1 else f"{k} == {fmt(v[0])}" for k, v in self.when.items()
            )
        return f"{text} ({self.source})"


@dataclass
class Refinement:
    """A narrower search range for one parameter, from a search-space file or a --param override."""

    low: float | int | None = None
    high: float | int | None = None
    log: bool | None = None
    choices: list | None = None
    weights: list[float] | None = None
    when: dict[str, list] | None = None
    kind: str | None = None  # the kind the expression implies (uniform -> float, int -> int), checked
    per_batch: int | None = None  # low/high hold at this many images per optimizer step (build_space scales)
    source: str = ""
    text: str = ""  # the user's words, for messages
    explicit: bool = True


# -------------------------------------------------------------------------------------------- domains


class Domain:
    """The values a parameter may take once its bounds are known. Subclasses sample and suggest."""

    def sample(self, rng: np.random.Generator) -> Any:
        raise NotImplementedError

    def suggest(self, trial: Any, name: str) -> Any:
        raise NotImplementedError

    def latent(self, value: Any) -> Any:
        """What `suggest` asks Optuna for when it yields `value` (to replay a known configuration)."""
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        raise NotImplementedError

    def lowest(self) -> Any:
        raise NotImplementedError

    def highest(self) -> Any:
        raise NotImplementedError


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


@dataclass
class _FloatRange(Domain):
    lo: float
    hi: float
    log: bool

    def sample(self, rng):
        if self.lo == self.hi:
            return float(self.lo)
        if self.log:
            v = math.exp(rng.uniform(math.log(self.lo), math.log(self.hi)))
        else:
            v = rng.uniform(self.lo, self.hi)
        return float(min(max(v, self.lo), self.hi))

    def suggest(self, trial, name):
        return float(trial.suggest_float(name, self.lo, self.hi, log=self.log))

    def latent(self, value):
        return float(value)

    def contains(self, value):
        return is_number(value) and self.lo <= value <= self.hi

    def lowest(self):
        return self.lo

    def highest(self):
        return self.hi


@dataclass
class _IntRange(Domain):
    lo: int
    hi: int
    log: bool
    step: int = 1

    def sample(self, rng):
        if self.log:  # as Optuna does: log-uniform over [lo - 0.5, hi + 0.5], rounded
            v = round(math.exp(rng.uniform(math.log(self.lo - 0.5), math.log(self.hi + 0.5))))
            return int(min(max(v, self.lo), self.hi))
        n = (self.hi - self.lo) // self.step
        return int(self.lo + self.step * int(rng.integers(0, n + 1)))

    def suggest(self, trial, name):
        return int(trial.suggest_int(name, self.lo, self.hi, step=self.step, log=self.log))

    def latent(self, value):
        return int(value)

    def contains(self, value):
        return (
            isinstance(value, (int, np.integer))
            and not isinstance(value, bool)
            and self.lo <= value <= self.hi
            and (value - self.lo) % self.step == 0
        )

    def lowest(self):
        return self.lo

    def highest(self):
        return self.hi


@dataclass
class _Powers(Domain):
    """base**e for e in [e_lo, e_hi], each power equally likely. Optuna searches the exponent."""

    base: int
    e_lo: int
    e_hi: int
    integer: bool

    def _value(self, e: int) -> Any:
        return int(self.base**e) if self.integer else float(self.base) ** e

    def values(self) -> list:
        return [self._value(e) for e in range(self.e_lo, self.e_hi + 1)]

    def sample(self, rng):
        return self._value(int(rng.integers(self.e_lo, self.e_hi + 1)))

    def suggest(self, trial, name):
        return self._value(trial.suggest_int(name, self.e_lo, self.e_hi))

    def latent(self, value):
        return next(e for e in range(self.e_lo, self.e_hi + 1) if self._value(e) == value)

    def contains(self, value):
        return is_number(value) and any(value == v for v in self.values())

    def lowest(self):
        return self._value(self.e_lo)

    def highest(self):
        return self._value(self.e_hi)


@dataclass
class _FloatMultiples(Domain):
    """n * step for n in [n_lo, n_hi] (floats). Optuna searches n, so no rounding drift reaches the value."""

    step: Decimal
    n_lo: int
    n_hi: int

    def _value(self, n: int) -> float:
        return float(self.step * n)

    def sample(self, rng):
        return self._value(int(rng.integers(self.n_lo, self.n_hi + 1)))

    def suggest(self, trial, name):
        return self._value(trial.suggest_int(name, self.n_lo, self.n_hi))

    def latent(self, value):
        return int(round(Decimal(repr(float(value))) / self.step))

    def contains(self, value):
        if not is_number(value):
            return False
        n = round(Decimal(repr(float(value))) / self.step)
        return self.n_lo <= n <= self.n_hi and math.isclose(self._value(n), value, rel_tol=1e-12)

    def lowest(self):
        return self._value(self.n_lo)

    def highest(self):
        return self._value(self.n_hi)


@dataclass
class _Choices(Domain):
    """A list of values. Weighted or ordered lists are searched in Optuna as a uniform u in [0, 1] mapped
    through the cumulative weights (inverse CDF): Optuna has no weighted categorical, and a categorical
    whose choices change between trials (an ordered list cut by a relation) is not allowed there."""

    values: list
    probs: list[float] | None  # None: unordered and unweighted -> Optuna's suggest_categorical
    numeric: bool

    def _cdf(self) -> list[float]:
        probs = self.probs if self.probs is not None else [1.0 / len(self.values)] * len(self.values)
        return list(np.cumsum(probs))

    def pick(self, u: float) -> Any:
        """Inverse CDF: the first value whose cumulative weight exceeds u (zero-weight values never)."""
        cdf = self._cdf()  # zero-weight values were dropped by domain_of, so no interval is empty
        return self.values[min(bisect.bisect_right(cdf, u * cdf[-1]), len(self.values) - 1)]

    def sample(self, rng):
        return self.pick(float(rng.random()))

    def suggest(self, trial, name):
        if self.probs is None and not self.numeric:
            return trial.suggest_categorical(name, list(self.values))
        return self.pick(trial.suggest_float(name, 0.0, 1.0))

    def latent(self, value):
        """The value itself for a plain categorical; else the middle of its stretch of the inverse CDF."""
        if self.probs is None and not self.numeric:
            return value
        i = next(i for i, v in enumerate(self.values) if v == value)
        cdf = self._cdf()
        lo = cdf[i - 1] if i else 0.0
        return float((lo + cdf[i]) / 2 / cdf[-1])

    def contains(self, value):
        if self.numeric:
            return is_number(value) and any(value == v for v in self.values)
        return any(value == v and type(value) is type(v) for v in self.values)  # True is not 1

    def lowest(self):
        return min(self.values)

    def highest(self):
        return max(self.values)


# ---------------------------------------------------------------------------------- bounds arithmetic


@dataclass
class Bounds:
    lo: float = -INF
    lo_open: bool = False
    hi: float = INF
    hi_open: bool = False

    def raise_low(self, value: float, open_: bool) -> None:
        if value > self.lo or (value == self.lo and open_):
            self.lo, self.lo_open = value, open_

    def lower_high(self, value: float, open_: bool) -> None:
        if value < self.hi or (value == self.hi and open_):
            self.hi, self.hi_open = value, open_

    def admits(self, v: float) -> bool:
        above = v > self.lo or (v == self.lo and not self.lo_open)
        below = v < self.hi or (v == self.hi and not self.hi_open)
        return above and below

    def text(self) -> str:
        return interval_text(self.lo, self.lo_open, self.hi, self.hi_open)


_BIG = 1e300


def capped(b: Bounds) -> Bounds:
    """`b` with infinite ends replaced by huge finite ones: for emptiness checks and extremes of a parameter
    whose open end is bounded at sampling time by its relation (e.g. warmup_epochs < num_epochs, max Infinity)."""
    return Bounds(max(b.lo, -_BIG), b.lo_open, min(b.hi, _BIG), b.hi_open)


def apply_relation(b: Bounds, op: str, other: float) -> None:
    """Bounds of x such that `x op other` holds."""
    if op in (">", ">="):
        b.raise_low(other, op == ">")
    else:
        b.lower_high(other, op == "<")


def _closed_int(b: Bounds) -> tuple[float, float]:
    lo = -INF if math.isinf(b.lo) else (math.floor(b.lo) + 1 if b.lo_open else math.ceil(b.lo))
    hi = INF if math.isinf(b.hi) else (math.ceil(b.hi) - 1 if b.hi_open else math.floor(b.hi))
    return lo, hi


def _closed_float(b: Bounds) -> tuple[float, float]:
    lo = math.nextafter(b.lo, INF) if b.lo_open else b.lo
    hi = math.nextafter(b.hi, -INF) if b.hi_open else b.hi
    return lo, hi


def domain_of(p: Parameter, b: Bounds) -> Domain | None:
    """The domain of `p` within bounds `b` (its own range already in `b`), or None when nothing is left."""
    if p.choices is not None:
        numeric = p.kind in ("float", "int")
        keep = [i for i, c in enumerate(p.choices) if not numeric or b.admits(c)]
        if p.weights is not None:
            keep = [i for i in keep if p.weights[i] > 0] or []
        if not keep:
            return None
        values = [p.choices[i] for i in keep]
        if p.weights is not None:
            total = sum(p.weights[i] for i in keep)
            probs = [p.weights[i] / total for i in keep]
        else:
            probs = [1.0 / len(values)] * len(values) if numeric else None
        return _Choices(values, probs, numeric)
    if p.kind == "int":
        lo, hi = _closed_int(b)
    else:
        lo, hi = _closed_float(b)
    if p.power:
        return _powers(p, lo, hi)
    if p.step:
        if p.kind == "int":
            k = int(p.step)
            first, last = -(-int(lo) // k) * k, int(hi) // k * k
            return _IntRange(first, last, False, k) if first <= last else None
        k = Decimal(repr(float(p.step)))
        n_lo = math.ceil(Decimal(repr(lo)) / k)
        n_hi = math.floor(Decimal(repr(hi)) / k)
        return _FloatMultiples(k, n_lo, n_hi) if n_lo <= n_hi else None
    if lo > hi:
        return None
    if p.kind == "int":
        return _IntRange(int(lo), int(hi), p.log)
    return _FloatRange(float(lo), float(hi), p.log)


def _powers(p: Parameter, lo: float, hi: float) -> _Powers | None:
    base = int(p.power)
    integer = p.kind == "int"
    if hi < 1 and integer or hi <= 0:
        return None
    e_lo = 0 if lo <= 1 and integer else math.floor(math.log(max(lo, 1e-300), base)) - 1
    while base**e_lo < lo:
        e_lo += 1
    e_hi = math.ceil(math.log(hi, base)) + 1
    while base**e_hi > hi:
        e_hi -= 1
    return _Powers(base, e_lo, e_hi, integer) if e_lo <= e_hi else None


# ---------------------------------------------------------------------------------------- the space


def as_rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")
