"""Pareto tools for multi-objective search: objectives, constraints, non-dominated sorting, crowding distance,
hypervolume and the Pareto plot. numpy only (matplotlib for the plot, imported when plotting).

How the runner uses it:

    objectives = [Objective.parse("ACC_all:max"), Objective.parse("latency_ms:min")]   # --objective
    constraints = [Constraint.parse("latency_ms<=2")]                                  # --constraint
    result = analyse({trial_id: {metric: value}}, objectives, constraints,
                     infeasible={trial_id: "latency_ms=3.1 > 2 before training"})
    result.front                       # feasible non-dominated trial ids -> summary.json `pareto`, best/pareto/
    result.pick()                      # --pick default: the best first objective among feasible trials
    hypervolume_of(result, reference)  # after each round, logged to the MLflow parent run
    plot_pareto(result, path, picked=...)  # the parent run's Pareto plot (PNG)

Conventions. Internally every objective is minimised: a `max` objective is negated (so is its reference
value). Constrained domination (Deb 2000): a feasible point dominates every infeasible one; of two infeasible
points the one with less violation dominates, equal violation falls back to Pareto dominance. The violation of a
trial is the sum over constraints of how far it misses each bound, relative to the bound (|bound|, or 1 when the
bound is 0), so constraints in different units add up. A NaN value (a diverged trial) is infeasible with infinite
violation and ranks last.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mae.errors import ConfigError, did_you_mean

MODES = ("min", "max")


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # "min" | "max"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"objective {self.metric}: mode {self.mode!r} must be 'min' or 'max'")

    @classmethod
    def parse(cls, text: str | Objective | tuple[str, str]) -> Objective:
        """'ACC_all:max' (also an Objective or a (metric, mode) pair) -> Objective."""
        if isinstance(text, Objective):
            return text
        if isinstance(text, tuple):
            return cls(*text)
        metric, sep, mode = str(text).rpartition(":")
        if not sep or not metric.strip() or mode.strip() not in MODES:
            raise ConfigError(
                f"--objective {text!r}: write METRIC:MODE with MODE min or max, e.g. ACC_all:max"
            )
        return cls(metric.strip(), mode.strip())

    @property
    def sign(self) -> float:
        """+1 for min, -1 for max: value * sign is minimised."""
        return 1.0 if self.mode == "min" else -1.0

    def __str__(self) -> str:
        return f"{self.metric}:{self.mode}"


_CONSTRAINT = re.compile(r"^\s*([^<>=\s]+)\s*(<=|>=)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str  # "<=" | ">="
    bound: float

    @classmethod
    def parse(cls, text: str | Constraint) -> Constraint:
        """'latency_ms<=2' or 'ACC_all>=0.9' -> Constraint."""
        if isinstance(text, Constraint):
            return text
        m = _CONSTRAINT.match(str(text))
        bound = _float(m.group(3)) if m else None
        if m is None or bound is None or not math.isfinite(bound):
            raise ConfigError(
                f"--constraint {text!r}: write METRIC<=VALUE or METRIC>=VALUE with a finite number, "
                "e.g. 'latency_ms<=2'"
            )
        return cls(m.group(1), m.group(2), bound)

    def violation(self, value: float) -> float:
        """How far `value` misses the bound, relative to |bound| (or 1 for a bound of 0); 0 when it holds;
        inf for NaN."""
        if value is None or math.isnan(value):
            return math.inf
        miss = value - self.bound if self.op == "<=" else self.bound - value
        return max(0.0, miss) / (abs(self.bound) or 1.0)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# --- low level: arrays of points, every column minimised ---------------------------------------------------


def to_minimisation(values, modes: Sequence[str]) -> np.ndarray:
    """[n, m] values -> [n, m] with the `max` columns negated."""
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[None, :]
    if values.shape[1] != len(modes):
        raise ValueError(f"{values.shape[1]} objective columns but {len(modes)} modes")
    signs = np.array([1.0 if m == "min" else -1.0 for m in modes])
    return values * signs


def domination_matrix(points, violation=None) -> np.ndarray:
    """D[i, j] = True when point i dominates point j (constrained domination, all columns minimised).

    points: [n, m], no NaN (replace by +inf and give those rows infinite violation); violation: [n] >= 0 or None.
    """
    p = np.asarray(points, dtype=float)
    if np.isnan(p).any():
        raise ValueError("points contain NaN: give such rows +inf values and an infinite violation")
    n = p.shape[0]
    le = (p[:, None, :] <= p[None, :, :]).all(axis=2)
    lt = (p[:, None, :] < p[None, :, :]).any(axis=2)
    pareto = le & lt
    if violation is None:
        return pareto
    v = np.asarray(violation, dtype=float).reshape(n)
    less = v[:, None] < v[None, :]
    same = v[:, None] == v[None, :]
    return less | (same & pareto)


def non_dominated_sort(points, violation=None) -> np.ndarray:
    """Pareto rank of each point: 0 for the non-dominated front, 1 for the front once 0 is removed, ..."""
    d = domination_matrix(points, violation)
    n = d.shape[0]
    ranks = np.full(n, -1, dtype=int)
    dominated_by = d.sum(axis=0)  # how many points dominate j
    rank = 0
    remaining = np.ones(n, dtype=bool)
    while remaining.any():
        front = remaining & (dominated_by == 0)
        ranks[front] = rank
        remaining &= ~front
        dominated_by = dominated_by - d[front].sum(axis=0)
        rank += 1
    return ranks


def crowding_distance(points) -> np.ndarray:
    """NSGA-II crowding distance of the points of one front: per objective, the gap between each point's two
    neighbours over the objective's range, summed; the extreme points (and fronts of <= 2) get inf."""
    p = np.asarray(points, dtype=float)
    n, m = p.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for k in range(m):
        order = np.argsort(p[:, k], kind="stable")
        col = p[order, k]
        dist[order[0]] = dist[order[-1]] = math.inf
        span = col[-1] - col[0]
        if not np.isfinite(span) or span <= 0:
            continue  # every point equal on this objective (or an inf in it): no information
        dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def crowding_by_front(points, ranks) -> np.ndarray:
    """Crowding distance of each point within its own front."""
    p = np.asarray(points, dtype=float)
    out = np.zeros(len(p))
    for r in np.unique(ranks):
        idx = np.flatnonzero(ranks == r)
        out[idx] = crowding_distance(p[idx])
    return out


def hypervolume(points, reference) -> float:
    """Exact hypervolume dominated by `points` (every column minimised) and bounded by `reference`.

    Points that do not beat the reference on every objective add nothing. 2 objectives: a sweep, O(n log n).
    More: slices along the last objective, each an exact hypervolume one dimension lower (O(n^(m-1)); fine for
    the 3 objectives and few hundred trials a search has).
    """
    p = np.asarray(points, dtype=float)
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if p.size == 0:
        return 0.0
    if p.ndim == 1:
        p = p[None, :]
    if p.shape[1] != ref.size:
        raise ValueError(f"points have {p.shape[1]} objectives but the reference point has {ref.size}")
    if np.isnan(p).any() or not np.isfinite(ref).all():
        raise ValueError("hypervolume needs points without NaN and a finite reference point")
    p = p[(p < ref).all(axis=1)]
    if len(p) == 0:
        return 0.0
    p = p[non_dominated_sort(p) == 0]
    return float(_hv(p, ref))


def _hv(p: np.ndarray, ref: np.ndarray) -> float:
    m = p.shape[1]
    if m == 1:
        return float(ref[0] - p[:, 0].min())
    if m == 2:
        p = p[np.lexsort((p[:, 1], p[:, 0]))]  # by x, then y
        area, y_prev = 0.0, ref[1]
        for x, y in p:
            if y < y_prev:
                area += (ref[0] - x) * (y_prev - y)
                y_prev = y
        return area
    p = p[np.argsort(p[:, -1], kind="stable")]
    total = 0.0
    for i in range(len(p)):
        top = p[i + 1, -1] if i + 1 < len(p) else ref[-1]
        depth = top - p[i, -1]
        if depth > 0:  # the slab [z_i, z_i+1) is covered by the first i+1 points' projections
            total += _hv(p[: i + 1, :-1], ref[:-1]) * depth
    return total


# --- trials --------------------------------------------------------------------------------------------------


@dataclass
class RankedTrial:
    trial_id: str
    values: dict[str, float]  # objectives and constraint metrics, as reported
    rank: int  # Pareto rank under constrained domination (0: not dominated)
    crowding: float  # crowding distance within its rank
    violation: float  # 0 for a feasible trial
    feasible: bool
    reason: str | None = None  # why it is infeasible


@dataclass
class ParetoResult:
    objectives: list[Objective]
    constraints: list[Constraint]
    trials: list[RankedTrial]  # in the order given
    front: list[str] = field(default_factory=list)  # feasible rank-0 trial ids, by the first objective

    def by_id(self) -> dict[str, RankedTrial]:
        return {t.trial_id: t for t in self.trials}

    def pick(self, metric: str | None = None) -> str | None:
        """The feasible trial best on `metric` (an objective; default the first), ties by Pareto rank then
        order; None when no trial is feasible."""
        obj = self.objectives[0] if metric is None else _objective_named(self.objectives, metric)
        feasible = [t for t in self.trials if t.feasible]
        if not feasible:
            return None
        best = min(feasible, key=lambda t: (obj.sign * t.values[obj.metric], t.rank))
        return best.trial_id


def _objective_named(objectives: Sequence[Objective], metric: str) -> Objective:
    for o in objectives:
        if o.metric == metric:
            return o
    names = [o.metric for o in objectives]
    raise ConfigError(f"--pick {metric}: not an objective{did_you_mean(metric, names)}; objectives: {names}")


def analyse(
    trials: Mapping[str, Mapping[str, float]],
    objectives: Iterable[Objective | str | tuple[str, str]],
    constraints: Iterable[Constraint | str] = (),
    *,
    infeasible: Mapping[str, str] | None = None,
) -> ParetoResult:
    """Rank trials ({trial_id: {metric: value}}) by constrained domination and find the feasible front.

    `infeasible` flags trials known to be infeasible whatever their values say (e.g. refused before training),
    with the reason; their missing values count as the worst. Any other trial missing an objective or
    constraint metric is a ConfigError naming the metric.
    """
    objectives = [Objective.parse(o) for o in objectives]
    constraints = [Constraint.parse(c) for c in constraints]
    if not objectives:
        raise ConfigError("at least one objective is needed (--objective METRIC:MODE)")
    flagged = dict(infeasible or {})
    ids = list(trials)
    needed = [o.metric for o in objectives] + [c.metric for c in constraints]
    rows, violations, reasons = [], [], []
    for tid in ids:
        values = trials[tid]
        missing = [k for k in dict.fromkeys(needed) if k not in values]
        if missing and tid not in flagged:
            raise missing_metric_error(tid, missing[0], values)
        vec = [math.nan if _isnan(values.get(o.metric)) else float(values[o.metric]) for o in objectives]
        viol = 0.0
        why = []
        for c in constraints:
            value = _num(values.get(c.metric))
            v = c.violation(value)
            if v > 0:
                viol += v
                why.append(f"{c.metric}={value:g} violates {c}")
        if any(_isnan(values.get(o.metric)) for o in objectives):
            viol = math.inf
            why.append("an objective is NaN or missing")
        if tid in flagged:
            viol = viol if viol > 0 else math.inf
            why.insert(0, flagged[tid])
        rows.append(vec)
        violations.append(viol)
        reasons.append("; ".join(why) or None)
    points = to_minimisation(
        np.array(rows, dtype=float).reshape(len(ids), len(objectives)), [o.mode for o in objectives]
    )
    points = np.where(np.isnan(points), math.inf, points)
    viol = np.array(violations, dtype=float)
    ranks = non_dominated_sort(points, viol) if ids else np.zeros(0, dtype=int)
    crowd = crowding_by_front(points, ranks) if ids else np.zeros(0)
    ranked = [
        RankedTrial(
            trial_id=tid,
            values={k: _num(trials[tid].get(k)) for k in dict.fromkeys(needed) if k in trials[tid]},
            rank=int(ranks[i]),
            crowding=float(crowd[i]),
            violation=float(viol[i]),
            feasible=bool(viol[i] == 0),
            reason=reasons[i],
        )
        for i, tid in enumerate(ids)
    ]
    front = [t for t in ranked if t.feasible and t.rank == 0]
    first = objectives[0]
    front.sort(key=lambda t: first.sign * t.values[first.metric])
    return ParetoResult(objectives, constraints, ranked, [t.trial_id for t in front])


def missing_metric_error(trial_id: str, metric: str, reported: Mapping[str, object]) -> ConfigError:
    """'trial X reported no metric Y' with the metrics it did report and the closest name."""
    names = sorted(str(k) for k in reported)
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return ConfigError(
        f"trial {trial_id} reported no {metric!r}{did_you_mean(metric, names)}; it reported: {shown or 'nothing'}; "
        "check --objective/--constraint"
    )


def _isnan(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _num(v) -> float:
    return math.nan if v is None else float(v)


def hypervolume_of(result: ParetoResult, reference: Mapping[str, float] | Sequence[float]) -> float:
    """Hypervolume of the feasible front in the objectives' own units; `reference` per objective ({metric: value}
    or a sequence in objective order), a value every useful trial beats (e.g. ACC_all 0, latency_ms the limit)."""
    objs = result.objectives
    ref = [reference[o.metric] for o in objs] if isinstance(reference, Mapping) else list(reference)
    by = result.by_id()
    vals = [[by[t].values[o.metric] for o in objs] for t in result.front]
    modes = [o.mode for o in objs]
    pts = to_minimisation(np.array(vals, dtype=float).reshape(len(vals), len(objs)), modes)
    return hypervolume(pts, to_minimisation(np.array([ref], dtype=float), modes)[0])


# --- plot ----------------------------------------------------------------------------------------------------


def pareto_figure(result: ParetoResult, *, picked: str | None = None, title: str | None = None):
    """A matplotlib Figure of the first two objectives: every trial, the front (joined as a staircase),
    infeasible trials, the picked trial, and the constraint bounds on the plotted metrics. Each marker set
    carries a label ("feasible", "Pareto front", "infeasible", "picked") that the legend shows."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if len(result.objectives) < 2:
        raise ConfigError("a Pareto plot needs two objectives (give --objective twice)")
    ox, oy = result.objectives[:2]
    by = result.by_id()
    if picked is not None and picked not in by:
        raise ConfigError(f"picked trial {picked!r} is not among the trials{did_you_mean(picked, list(by))}")
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    ax = fig.add_subplot()

    unplotted = 0

    def xy(ids, count=True):  # points without both values (refused before training, diverged) cannot be drawn
        nonlocal unplotted
        pts = [(by[i].values.get(ox.metric, math.nan), by[i].values.get(oy.metric, math.nan)) for i in ids]
        pts = np.array(pts, dtype=float).reshape(len(pts), 2)
        keep = np.isfinite(pts).all(axis=1)
        unplotted += int((~keep).sum()) if count else 0
        return pts[keep]

    front = set(result.front)
    others = [t.trial_id for t in result.trials if t.feasible and t.trial_id not in front]
    bad = [t.trial_id for t in result.trials if not t.feasible]
    if others:
        p = xy(others)
        ax.scatter(p[:, 0], p[:, 1], c="0.6", s=24, label="feasible")
    p = xy(bad)
    if len(p):
        ax.scatter(p[:, 0], p[:, 1], c="tab:red", marker="x", s=30, label="infeasible")
    if result.front:
        p = xy(sorted(result.front, key=lambda i: ox.sign * by[i].values[ox.metric]))
        ax.step(p[:, 0], p[:, 1], where="post", c="tab:blue", lw=1, alpha=0.6)
        ax.scatter(p[:, 0], p[:, 1], c="tab:blue", s=36, label="Pareto front", zorder=3)
    if picked is not None and len(p := xy([picked], count=False)):
        ax.scatter(
            p[:, 0],
            p[:, 1],
            marker="*",
            s=220,
            facecolors="none",
            edgecolors="black",
            label="picked",
            zorder=4,
        )
    for c in result.constraints:
        if c.metric == ox.metric:
            ax.axvline(c.bound, ls="--", c="tab:red", lw=0.8)
        elif c.metric == oy.metric:
            ax.axhline(c.bound, ls="--", c="tab:red", lw=0.8)
    arrow = {"min": "lower is better", "max": "higher is better"}
    ax.set_xlabel(f"{ox.metric} ({arrow[ox.mode]})")
    ax.set_ylabel(f"{oy.metric} ({arrow[oy.mode]})")
    note = f" ({unplotted} without values not shown)" if unplotted else ""
    ax.set_title(title or f"Pareto front: {len(result.front)} of {len(result.trials)} trials{note}")
    ax.grid(alpha=0.3)
    if ax.collections:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def plot_pareto(
    result: ParetoResult, path: str | Path, *, picked: str | None = None, title: str | None = None
) -> Path:
    """Write `pareto_figure` as a PNG at `path` (atomically)."""
    from mae.fileio import atomic_write_bytes

    fig = pareto_figure(result, picked=picked, title=title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())
