"""Multi-objective and constrained search: what is optimised, the deploy profile of every model shape the space
can produce (measured before any trial trains), the Optuna searcher that knows the constraints, MO-ASHA, and
the architecture a deploy-aware search may choose.

    goals = Goals.from_options(options, plan)     # --objective ACC_all:max --objective latency_ms:min ...
    profiles = profile_shapes(goals, plan, files) # {shape: {latency_ms, throughput_ips, params_m, ...}}

Deploy metrics (mae.metrics.DEPLOY_METRIC_MODES) depend on the architecture and the input size, not on the
weights: each distinct (arch, input size) is exported and timed once per experiment, before Ray starts (so no
training disturbs the timings), and cached in `automl/deploy_profile.json`. A trial looks its shape up; if a
constraint on a deploy metric fails, the trial reports itself infeasible (with the reason) and returns without
training, and the searcher learns that the configuration is infeasible (Optuna's trial constraints).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from automl.pareto import Constraint, Objective
from mae.errors import ConfigError, did_you_mean
from mae.metrics import DEPLOY_METRIC_MODES, METRIC_MODES

INFEASIBLE = "infeasible"  # result key: 1.0 when a trial was refused before training
INFEASIBLE_REASON = "infeasible_reason"
VIOLATION = "constraint_violation"
WEIGHTED = "weighted_score"  # --objective-weights: sum of w_i * v_i, each v_i signed so that higher is better
ARCH = "model.arch"
INPUT_SIZE = "dataset.augmentation.input_size"
_BIG = 1e12  # an unmet constraint whose metric is missing or NaN: Optuna takes no NaN


@dataclass(frozen=True)
class Goals:
    """The objectives (first = the ledger's metric and best/'s default pick) and the constraints."""

    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...] = ()
    latency_batch: int = 1
    pick: str | None = None
    weights: tuple[float, ...] = ()  # --objective-weights: the search optimises WEIGHTED instead

    @classmethod
    def of(
        cls,
        objectives: Sequence[str],
        constraints: Sequence[str],
        *,
        metric: str,
        mode: str,
        latency_batch: int = 1,
        pick: str | None = None,
        weights: Sequence[float] = (),
    ) -> Goals:
        objs = tuple(Objective.parse(o) for o in objectives) or (Objective(metric, mode),)
        cons = tuple(Constraint.parse(c) for c in constraints)
        known = {**METRIC_MODES, **DEPLOY_METRIC_MODES}
        problems = []
        for name, flag in [
            *((o.metric, "--objective") for o in objs),
            *((c.metric, "--constraint") for c in cons),
        ]:
            if name not in known:
                problems.append(
                    f"{flag} {name}: not a metric this product reports{did_you_mean(name, known)}; known: "
                    f"{', '.join(known)}"
                )
        if len({o.metric for o in objs}) != len(objs):
            problems.append(f"--objective names a metric twice: {', '.join(str(o) for o in objs)}")
        if pick is not None and pick not in {o.metric for o in objs}:
            problems.append(f"--pick {pick}: not an objective ({', '.join(o.metric for o in objs)})")
        if problems:
            raise ConfigError(problems)
        return cls(objs, cons, latency_batch, pick, tuple(float(w) for w in weights))

    @property
    def metric(self) -> str:
        return self.objectives[0].metric

    @property
    def mode(self) -> str:
        return self.objectives[0].mode

    @property
    def multi(self) -> bool:
        """Several objectives searched as such (not scalarised by weights)."""
        return len(self.objectives) > 1 and not self.weights

    @property
    def several(self) -> bool:
        """Several objectives, searched as such or scalarised: the architecture is searched, a front reported."""
        return len(self.objectives) > 1

    def weighted(self, metrics: Mapping[str, float]) -> float | None:
        """sum(w_i * v_i), each value signed so that higher is better; None until every objective is there."""
        if not self.weights or any(o.metric not in metrics for o in self.objectives):
            return None
        return float(
            sum(
                w * -o.sign * float(metrics[o.metric])
                for w, o in zip(self.weights, self.objectives, strict=True)
            )
        )

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]

    @property
    def named(self) -> list[str]:
        """Every metric an objective or constraint names."""
        return list(dict.fromkeys([*self.metrics, *(c.metric for c in self.constraints)]))

    @property
    def needs_deploy(self) -> bool:
        """Deploy metrics are measured when a goal names one, and in every multi-objective search (its child
        runs log them)."""
        return self.several or any(m in DEPLOY_METRIC_MODES for m in self.named)

    def training_metrics(self) -> list[str]:
        return [m for m in self.named if m in METRIC_MODES]

    def before_training(self, deploy: Mapping[str, float]) -> tuple[float, str | None]:
        """(violation, reason) of the constraints on deploy metrics, known before a trial trains."""
        total, why = 0.0, []
        for c in self.constraints:
            if c.metric in DEPLOY_METRIC_MODES and c.metric in deploy:
                v = c.violation(float(deploy[c.metric]))
                if v > 0:
                    total += v
                    why.append(f"{c.metric}={float(deploy[c.metric]):.4g} violates {c}")
        return total, ("; ".join(why) + " (measured before training)") if why else None

    def describe(self) -> dict[str, Any]:
        return {
            "objectives": [str(o) for o in self.objectives],
            "constraints": [str(c) for c in self.constraints],
            "latency_batch": self.latency_batch,
            "pick": self.pick or self.metric,
            **({"weights": list(self.weights)} if self.weights else {}),
        }


def constraint_values(constraints: Sequence[Constraint], result: Mapping[str, Any]) -> dict[str, float]:
    """{constraint: violation} for Optuna (<= 0 feasible); a missing or NaN metric counts as a large violation."""
    out = {}
    for c in constraints:
        value = result.get(c.metric)
        try:
            v = c.violation(float(value)) if value is not None else math.inf
        except (TypeError, ValueError):
            v = math.inf
        out[str(c)] = min(v, _BIG)
    if result.get(INFEASIBLE):
        out["feasible before training"] = max(float(result.get(VIOLATION) or 1.0), 1e-9)
    return out


class Feasibility:
    """Refuses a proposed configuration whose shape's deploy metrics already break a constraint, before it
    becomes a trial; keeps the refusals (with their reasons) in `path` for the summary. Picklable."""

    MAX_REFUSALS = (
        200  # proposals refused in a row before the searcher gives up (the trial then refuses itself)
    )

    def __init__(
        self, goals: Goals, deploy: Mapping[str, Mapping[str, float]], arch: str, input_size: int, path
    ):
        self.goals, self.deploy = goals, dict(deploy)
        self.arch, self.input_size, self.path = arch, int(input_size), str(path)

    def reason(self, config: Mapping[str, Any]) -> tuple[float, str | None, dict]:
        key = shape_key(config.get(ARCH, self.arch), config.get(INPUT_SIZE, self.input_size))
        metrics = dict(self.deploy.get(key) or {})
        violation, why = self.goals.before_training(metrics) if metrics else (0.0, None)
        return violation, why, metrics

    def record(self, config: Mapping[str, Any], reason: str, metrics: Mapping[str, float]) -> None:
        import json
        from pathlib import Path

        from mae.fileio import atomic_write_json

        path = Path(self.path)
        try:
            refused = json.loads(path.read_text())
        except (OSError, ValueError):
            refused = []
        refused.append({"config": dict(config), "reason": reason, "deploy": dict(metrics)})
        atomic_write_json(path, refused)


def make_constrained_search(
    constraints: Sequence[Constraint],
    metrics: Sequence[str],
    feasibility: Feasibility | None = None,
    **kwargs,
):
    """Ray Tune's OptunaSearch that (1) refuses, at proposal time, configurations whose deploy metrics break a
    constraint (Optuna is told they are infeasible and asked again, so they never become trials), (2) gives
    Optuna each finished trial's constraint values (constrained TPE ranks infeasible configurations after
    feasible ones), and (3) tells a multi-objective study a trial that reported no objective as pruned rather
    than as a broken complete trial."""
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class ConstrainedOptunaSearch(OptunaSearch):
        def suggest(self, trial_id: str):
            config = super().suggest(trial_id)
            if feasibility is None:
                return config
            for _ in range(Feasibility.MAX_REFUSALS):
                if not isinstance(config, dict):
                    return config
                violation, reason, deploy = feasibility.reason(config)
                if reason is None:
                    return config
                ot_trial = self._ot_trials.pop(trial_id)
                for key, value in constraint_values(
                    constraints, {**deploy, INFEASIBLE: 1.0, VIOLATION: violation}
                ).items():
                    ot_trial.set_constraint(key, value)
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
                feasibility.record(config, reason, deploy)
                config = super().suggest(trial_id)
            return config

        def on_trial_result(self, trial_id: str, result: dict):
            # a trial refused before training reports deploy metrics only: nothing to prune on
            if isinstance(self.metric, str) and self.metric not in result:
                return
            super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and trial_id not in self._completed_trials and result:
                for key, value in constraint_values(constraints, result).items():
                    ot_trial.set_constraint(key, value)
                if any(result.get(m) is None for m in metrics):
                    result = None  # Ray would tell Optuna [None, ...] as a complete trial
            super().on_trial_complete(trial_id, result, error)

    return ConstrainedOptunaSearch(**kwargs)


# --------------------------------------------------------------------------- the searchable architecture


def _granularity(arch: str) -> int:
    from mae.models.archs import get_arch

    spec = get_arch(arch)
    return int(spec.settings.get("patch_size", 32)) if spec.family == "vit" else 32


def arch_choices(arch: str) -> list[str]:
    """Archs of the spec's family and patch size (what a deploy-aware search may trade accuracy for latency
    with), smallest first."""
    from mae.models.archs import ARCHS, get_arch

    mine = get_arch(arch)
    same = [
        name
        for name, spec in ARCHS.items()
        if spec.family == mine.family and spec.settings.get("patch_size") == mine.settings.get("patch_size")
    ]
    return sorted(same, key=_model_size)


def _model_size(name: str) -> tuple:
    from mae.models.archs import get_arch

    s = get_arch(name).settings
    return (s.get("embed_dim", 0) * s.get("depth", sum(s.get("depths", s.get("stages", (0,))))), name)


def input_size_choices(arch: str, size: int) -> list[int]:
    """Input sizes at or below the spec's, in steps the architecture accepts: 1/2, 3/4 and all of it."""
    g = _granularity(arch)
    sizes = {max(g, round(size * f / g) * g) for f in (0.5, 0.75, 1.0)}
    return sorted(s for s in sizes if s <= size and s >= 2 * g or s == size)


def deploy_parameters(cfg, pinned: Mapping[str, Any]):
    """The architecture parameters a multi-objective search adds (unless the user pinned them)."""
    from automl.parameters import Parameter

    out = []
    if ARCH not in pinned:
        choices = tuple(arch_choices(cfg.model.arch))
        if len(choices) > 1:
            out.append(
                Parameter(
                    ARCH, "categorical", choices=choices, source="multi-objective", default=cfg.model.arch
                )
            )
    if INPUT_SIZE not in pinned:
        sizes = tuple(input_size_choices(cfg.model.arch, cfg.dataset.augmentation.input_size))
        if len(sizes) > 1:
            out.append(
                Parameter(
                    INPUT_SIZE, "categorical", choices=sizes, source="multi-objective", default=sizes[-1]
                )
            )
    return out


# ------------------------------------------------------------------------------------------- profiles


def shape_key(arch: str, input_size: int) -> str:
    return f"{arch}@{int(input_size)}"


def shapes(plan) -> list[tuple[str, int]]:
    """Every (arch, input size) a trial of the plan can train."""
    cfg = plan.config
    archs = list(plan.space[ARCH].choices) if ARCH in plan.space else [cfg.model.arch]
    sizes = (
        list(plan.space[INPUT_SIZE].choices)
        if INPUT_SIZE in plan.space
        else [cfg.dataset.augmentation.input_size]
    )
    return [(a, int(s)) for a in archs for s in sizes]


def profile_shapes(goals: Goals, plan, cache_path) -> dict[str, dict[str, float]]:
    """Deploy metrics of every shape (measured now, or read from the experiment's cache), printed one line each."""
    from mae.deploy.profile import ModelSpec, ProfileCache, ProfileSettings, deploy_metrics

    cfg = plan.config
    cache = ProfileCache(cache_path)
    settings = ProfileSettings(batch=goals.latency_batch)
    out = {}
    for arch, size in shapes(plan):
        spec = ModelSpec(
            arch=arch,
            input_size=size,
            num_classes=cfg.model.num_classes,
            stage=cfg.train.stage,
            global_pool=cfg.model.global_pool,
        )
        entry, cached = cache.get_or_measure(spec, settings)
        metrics = deploy_metrics(entry)
        out[shape_key(arch, size)] = metrics
        print(
            f"automl: deploy profile {arch} at {size} px: latency {metrics['latency_ms']:.3g} ms "
            f"(batch {goals.latency_batch}, {entry.get('runtime')}, {entry.get('threads', 1)} thread(s)), "
            f"{metrics['params_m']:.3g} M params, {metrics['gflops']:.3g} GFLOPs"
            + (" (cached)" if cached else "")
        )
    return out


def shape_seeds(plan, feasibility: Feasibility, budget: int) -> list[dict[str, Any]]:
    """The first trials of a search that trades accuracy for deploy cost: one per feasible shape (partial
    configurations: Optuna samples the other parameters), so that the front spans the latency range from the
    start instead of wherever the sampler's first draws fall. At most half the trial budget; when more shapes
    are feasible, an even spread over their latencies, fastest and slowest included."""
    names = [n for n in (ARCH, INPUT_SIZE) if n in plan.space]
    if not names or budget < 2:
        return []
    ranked = []
    for arch, size in shapes(plan):
        point = {ARCH: arch, INPUT_SIZE: size}
        _, reason, metrics = feasibility.reason(point)
        if reason is None:
            ranked.append((float(metrics.get("latency_ms", 0.0)), {n: point[n] for n in names}))
    ranked.sort(key=lambda x: x[0])
    seeds = list({tuple(p.items()): p for _, p in ranked}.values())  # pinned parameters repeat points
    k = min(len(seeds), budget // 2)
    if k < len(seeds):
        picks = sorted({round(i * (len(seeds) - 1) / max(k - 1, 1)) for i in range(k)})
        seeds = [seeds[i] for i in picks]
    return seeds


# --------------------------------------------------------------------------------------- after the search


def trial_goal_values(record: Mapping[str, Any], goals: Goals) -> dict[str, float] | None:
    """A trial's values of every goal metric at its best epoch (by the first objective), its deploy metrics
    included; the deploy metrics alone for a trial refused before training; None for one that reported nothing."""
    if record.get("infeasible"):
        return dict(record.get("deploy") or {})
    best = record.get("best")
    if not best:
        return None
    entry = (record.get("history") or {}).get(str(best.get("iteration"))) or record.get("last") or {}
    return {k: float(entry[k]) for k in goals.named if k in entry and entry[k] is not None}


def pareto_of(state: Mapping[str, Any], goals: Goals, *, rounds: Sequence[str] | None = None):
    """The constrained Pareto analysis (automl.pareto.ParetoResult) of the ledger's trials (of `rounds` only,
    when given); trials that reported nothing are left out, ones missing a goal metric count as infeasible."""
    from automl.pareto import analyse

    trials: dict[str, dict[str, float]] = {}
    infeasible: dict[str, str] = {}
    for tid, rec in (state.get("trials") or {}).items():
        if rounds is not None and rec.get("round") not in rounds:
            continue
        values = trial_goal_values(rec, goals)
        if values is None:
            continue
        trials[tid] = values
        missing = [m for m in goals.named if m not in values]
        if rec.get("infeasible"):
            infeasible[tid] = rec["infeasible"]
        elif missing:
            infeasible[tid] = f"did not report {', '.join(missing)}"
    return analyse(trials, goals.objectives, goals.constraints, infeasible=infeasible)


def reference_point(goals: Goals, result) -> dict[str, float]:
    """The hypervolume's reference point: a constraint's bound on the objective where there is one, 0 for an
    accuracy (maximised, in [0, 1]), else 10% beyond the worst feasible value."""
    ref = {}
    feasible = [t for t in result.trials if t.feasible]
    for o in goals.objectives:
        bounds = [
            c.bound for c in goals.constraints if c.metric == o.metric and (c.op == "<=") == (o.mode == "min")
        ]
        if bounds:
            ref[o.metric] = min(bounds) if o.mode == "min" else max(bounds)
        elif o.mode == "max" and o.metric in ("ACC_all", "ACC_top5", "knn_acc"):
            ref[o.metric] = 0.0
        else:
            values = [t.values[o.metric] for t in feasible if math.isfinite(t.values.get(o.metric, math.nan))]
            worst = (max(values) if o.mode == "min" else min(values)) if values else 0.0
            ref[o.metric] = worst + 0.1 * abs(worst) * (1 if o.mode == "min" else -1)
    return ref


def front_summary(state: Mapping[str, Any], goals: Goals, round_names: Sequence[str]) -> dict[str, Any]:
    """summary.json's multi-objective part: the goals, every feasible non-dominated trial with its values, the
    picked trial, the infeasible trials with their reasons, and the hypervolume after each round."""
    from automl.pareto import hypervolume_of

    result = pareto_of(state, goals)
    ref = reference_point(goals, result)
    by_id = result.by_id()
    history = []
    for k in range(1, len(round_names) + 1):
        partial = pareto_of(state, goals, rounds=round_names[:k])
        history.append({"round": round_names[k - 1], "hypervolume": hypervolume_of(partial, ref)})
    return {
        "goals": goals.describe(),
        "pareto": [{"trial_id": tid, "values": by_id[tid].values} for tid in result.front],
        "picked": result.pick(goals.pick),
        "infeasible": {t.trial_id: t.reason for t in result.trials if not t.feasible},
        "hypervolume_reference": ref,
        "hypervolume": history[-1]["hypervolume"] if history else 0.0,
        "hypervolume_by_round": history,
        "_result": result,
    }
