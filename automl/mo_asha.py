"""MO-ASHA: asynchronous successive halving that decides by Pareto rank, as a Ray Tune `TrialScheduler`.

Rungs are Ray's ASHA's (ray.tune.schedulers.async_hyperband, one bracket): milestones grace_period * eta^k up to
max_t on `time_attr`; a result reaching max_t stops the trial (stop_last_trials); a result that passes a
milestone the trial has not been recorded at is recorded there (the highest such milestone only) and decided.
What differs is the decision. Ray ranks one scalar against a percentile of the rung; here the trial's objective
vector is ranked among every trial recorded at the rung (itself included) by

    1. constrained Pareto rank (automl.pareto: feasible before infeasible, less violation before more),
    2. crowding distance within that rank (larger first: keeps the front spread out),

and the trial continues when `ahead * eta < n`: `ahead` the recorded trials strictly before it in that order,
`n` the trials recorded there. So at most the best 1/eta continue, the first trial at a rung always does, and
ties go to the newcomer (as in Ray, where a reward equal to the cutoff continues).

A trial is infeasible at a rung when its result breaks a `constraints` entry, carries a true or positive
`violation_attr` ("constraint_violation" by default: True/False or an amount), or has a NaN objective. A result
with `time_attr` but without an objective or constraint metric is a ConfigError naming it; Tune ends the
search with a TuneError around it, so the runner prints `scheduler.error` (one line) when it is set. A result
without `time_attr` is not decided (CONTINUE), as in Ray.

How the runner uses it (multi-objective mode, `--scheduler asha` or the default):

    scheduler = MOASHAScheduler(
        [("ACC_all", "max"), ("latency_ms", "min")], constraints=["latency_ms<=2"],
        max_t=num_epochs, grace_period=options.grace_period, reduction_factor=options.reduction_factor,
        state_path=round_dir / "mo_asha.json")
    tune.TuneConfig(scheduler=scheduler, ...)   # metric/mode there may name the first objective or be unset

Every report must carry every objective: the trial adds its deploy metrics (measured once before training,
mae.deploy.profile) to each epoch's report. Ray Tune does not checkpoint schedulers (its experiment state leaves
them out, and `Tuner.restore` brings back the scheduler as pickled at the start), so with `state_path` the
scheduler writes its rungs after every decision and reads them back on its first event after a restore (give
each Tune run its own path: a file left by another search would be read as this one's history). The
same state is available as `get_state()`/`set_state()` and Tune's `save(path)`/`restore(path)`; it pickles.
`decisions` lists every decision (trial, rung, n, ahead, rank, action) for the trial ledger and MLflow.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from automl.pareto import (
    Constraint,
    Objective,
    crowding_by_front,
    missing_metric_error,
    non_dominated_sort,
    to_minimisation,
)
from mae.errors import ConfigError

log = logging.getLogger("automl")

STATE_VERSION = 1


def rung_milestones(grace_period: float, max_t: float, reduction_factor: float) -> list[float]:
    """The milestones of Ray's one-bracket ASHA, highest first (the same formula as its `_Bracket`)."""
    count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in reversed(range(count))]


class MOASHAScheduler(FIFOScheduler):
    """Multi-objective ASHA; see the module docstring."""

    def __init__(
        self,
        objectives: Iterable[Objective | str | tuple[str, str]],
        *,
        constraints: Iterable[Constraint | str] = (),
        time_attr: str = "training_iteration",
        max_t: float = 100,
        grace_period: float = 1,
        reduction_factor: float = 4,
        stop_last_trials: bool = True,
        violation_attr: str | None = "constraint_violation",
        state_path: str | Path | None = None,
    ):
        objectives = [Objective.parse(o) for o in objectives]
        problems = []
        if not objectives:
            problems.append("MO-ASHA needs at least one objective (--objective METRIC:MODE)")
        if len({o.metric for o in objectives}) != len(objectives):
            problems.append(f"objectives name a metric twice: {[str(o) for o in objectives]}")
        if not max_t > 0:
            problems.append(f"max_t={max_t}: must be > 0")
        if not grace_period > 0:
            problems.append(f"--grace-period {grace_period}: must be > 0")
        elif grace_period > max_t:
            problems.append(f"--grace-period {grace_period}: must be <= max_t ({max_t})")
        if not reduction_factor > 1:
            problems.append(f"--reduction-factor {reduction_factor:g}: must be > 1")
        if problems:
            raise ConfigError(problems)
        super().__init__()
        self._objectives = objectives
        self._constraints = [Constraint.parse(c) for c in constraints]
        self._time_attr = time_attr
        self._max_t = max_t
        self._grace_period = grace_period
        self._rf = reduction_factor
        self._stop_last_trials = stop_last_trials
        self._violation_attr = violation_attr
        self._state_path = Path(state_path) if state_path is not None else None
        self._state_checked = False
        self._milestones = rung_milestones(grace_period, max_t, reduction_factor)
        # milestone -> {trial_id: (objective vector, every column minimised; violation)}
        self._rungs: dict[float, dict[str, tuple[list[float], float]]] = {m: {} for m in self._milestones}
        self._num_stopped = 0
        self.decisions: list[dict[str, Any]] = []
        self.error: ConfigError | None = None  # a result without an objective (it also ends the search)

    # --- Tune's interface ------------------------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        # The objectives come from the constructor; TuneConfig's metric/mode (the first objective, for Tune's
        # own bookkeeping, or unset) do not change them.
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load_once()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._load_once()
        if self._time_attr not in result:
            return TrialScheduler.CONTINUE
        if result.get("infeasible"):  # refused before training: it reports its deploy metrics once and ends
            return TrialScheduler.STOP
        t = result[self._time_attr]
        try:
            vector, violation = self._measure(trial.trial_id, result)
        except ConfigError as e:
            self.error = (
                e  # Tune wraps it in a TuneError with a traceback; the runner shows this line instead
            )
            raise
        if t >= self._max_t and self._stop_last_trials:
            action = TrialScheduler.STOP
        else:
            action = self._on_result(trial.trial_id, t, vector, violation)
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
        self._autosave()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict | None) -> None:
        # Record the last result at its rung, as Ray's ASHA does; a trial that ends without its metrics (it
        # failed, or returned before reporting) has nothing to record.
        self._load_once()
        if (
            not result
            or self._time_attr not in result
            or not self._has_metrics(result)
            or result.get("infeasible")
        ):
            return
        vector, violation = self._measure(trial.trial_id, result)
        self._on_result(trial.trial_id, result[self._time_attr], vector, violation, record_only=True)
        self._autosave()

    def on_trial_remove(self, tune_controller, trial) -> None:
        pass  # a trial's records stay: they are what later trials at the rung are compared with

    def debug_string(self) -> str:
        rungs = " | ".join(f"t={m:g}: {len(r)} recorded" for m, r in self._rungs.items())
        objs = ", ".join(str(o) for o in self._objectives)
        return f"Using MO-ASHA ({objs}): num_stopped={self._num_stopped}\nRungs: {rungs}"

    # --- the decision ----------------------------------------------------------------------------------------

    def _has_metrics(self, result: Mapping) -> bool:
        return all(k in result for k in self._needed())

    def _needed(self) -> list[str]:
        return list(
            dict.fromkeys([o.metric for o in self._objectives] + [c.metric for c in self._constraints])
        )

    def _measure(self, trial_id: str, result: Mapping) -> tuple[list[float], float]:
        """(objective vector with every column minimised, NaN as +inf; violation) of one result."""
        for k in self._needed():
            if k not in result:
                raise missing_metric_error(trial_id, k, result)
        raw = [_number(result[o.metric]) for o in self._objectives]
        vec = to_minimisation([raw], [o.mode for o in self._objectives])[0]
        violation = sum(c.violation(_number(result[c.metric])) for c in self._constraints)
        flag = result.get(self._violation_attr) if self._violation_attr else None
        if flag is not None:
            amount = _number(flag)
            violation += math.inf if math.isnan(amount) else max(0.0, amount)
        if np.isnan(vec).any():
            violation = math.inf
        vec = np.where(np.isnan(vec), math.inf, vec)
        return [float(v) for v in vec], float(violation)

    def _on_result(
        self, trial_id: str, t: float, vector: list[float], violation: float, *, record_only: bool = False
    ) -> str:
        for milestone in self._milestones:  # highest first
            recorded = self._rungs[milestone]
            if t >= milestone and trial_id in recorded and not self._stop_last_trials:
                break  # decided here already; Ray's ASHA skips the lower rungs too
            if t < milestone or trial_id in recorded:
                continue
            recorded[trial_id] = (vector, violation)
            if record_only:
                return TrialScheduler.CONTINUE
            n, ahead, rank = self._standing(recorded, trial_id)
            action = TrialScheduler.CONTINUE if ahead * self._rf < n else TrialScheduler.STOP
            self.decisions.append(
                {
                    "trial_id": trial_id,
                    "rung": milestone,
                    self._time_attr: t,
                    "n": n,
                    "ahead": ahead,
                    "rank": rank,
                    "feasible": violation == 0,
                    "action": action,
                }
            )
            return action
        return TrialScheduler.CONTINUE

    def _standing(
        self, recorded: Mapping[str, tuple[list[float], float]], trial_id: str
    ) -> tuple[int, int, int]:
        """(n recorded, how many are strictly ahead of trial_id by (rank, -crowding), its rank)."""
        ids = list(recorded)
        points = np.array([recorded[i][0] for i in ids], dtype=float)
        violation = np.array([recorded[i][1] for i in ids], dtype=float)
        ranks = non_dominated_sort(points, violation)
        crowd = crowding_by_front(points, ranks)
        me = ids.index(trial_id)
        ahead = int(np.sum((ranks < ranks[me]) | ((ranks == ranks[me]) & (crowd > crowd[me]))))
        return len(ids), ahead, int(ranks[me])

    # --- state ----------------------------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        return {
            "objectives": [str(o) for o in self._objectives],
            "constraints": [str(c) for c in self._constraints],
            "time_attr": self._time_attr,
            "milestones": self._milestones,
            "reduction_factor": self._rf,
        }

    def get_state(self) -> dict[str, Any]:
        """The rungs, counters and decisions as plain JSON (infinities as null)."""
        return {
            "version": STATE_VERSION,
            "settings": self._settings(),
            "rungs": [
                {
                    "milestone": m,
                    "recorded": {
                        tid: {"values": [_finite_or_none(v) for v in vec], "violation": _finite_or_none(viol)}
                        for tid, (vec, viol) in rec.items()
                    },
                }
                for m, rec in self._rungs.items()
            ],
            "num_stopped": self._num_stopped,
            "decisions": [dict(d) for d in self.decisions],
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore `get_state()`; a ConfigError when it was saved for other objectives or rungs."""
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"MO-ASHA state version {state.get('version')!r} is not {STATE_VERSION}")
        saved, ours = dict(state["settings"]), self._settings()
        if saved != json.loads(json.dumps(ours)):
            diff = [k for k in ours if saved.get(k) != json.loads(json.dumps(ours[k]))]
            raise ConfigError(
                f"the saved MO-ASHA state was made with other settings ({', '.join(diff)}: "
                f"{[saved.get(k) for k in diff]}, now {[ours[k] for k in diff]}); "
                "resume with the search's original options"
            )
        rungs = {m: {} for m in self._milestones}
        for rung in state["rungs"]:
            rungs[float(rung["milestone"])] = {
                tid: ([_none_as_inf(v) for v in r["values"]], _none_as_inf(r["violation"]))
                for tid, r in rung["recorded"].items()
            }
        self._rungs = rungs
        self._num_stopped = int(state["num_stopped"])
        self.decisions = [dict(d) for d in state["decisions"]]

    def save(self, checkpoint_path: str | Path) -> None:
        from mae.fileio import atomic_write_json

        atomic_write_json(checkpoint_path, self.get_state())

    def restore(self, checkpoint_path: str | Path) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text(encoding="utf-8")))

    def _load_once(self) -> None:
        # After `Tuner.restore` the scheduler is the one pickled at the start of the search: read the rungs
        # written since then before the first decision.
        if self._state_checked:
            return
        self._state_checked = True
        if self._state_path is not None and self._state_path.is_file():
            self.restore(self._state_path)
            log.info("MO-ASHA: resumed %d rung records from %s", self._count(), self._state_path)

    def __getstate__(self) -> dict[str, Any]:
        # A pickled copy (Tune's tuner.pkl) reads the state file again on its first event after unpickling.
        state = self.__dict__.copy()
        state["_state_checked"] = False
        return state

    def _autosave(self) -> None:
        if self._state_path is not None:
            self.save(self._state_path)

    def _count(self) -> int:
        return sum(len(r) for r in self._rungs.values())


def _number(v: Any) -> float:
    """A reported value as a float (bools as 0/1); None and non-numbers as NaN."""
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _none_as_inf(v: float | None) -> float:
    return math.inf if v is None else float(v)
