"""automl.mo_asha: MO-ASHA decisions on synthetic curves and known fronts, its rungs against Ray's ASHA, its
state, and one real Ray Tune search (slow)."""

from __future__ import annotations

import math
import pickle
import random
from types import SimpleNamespace

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from automl.mo_asha import MOASHAScheduler, rung_milestones
from automl.pareto import crowding_by_front, non_dominated_sort, to_minimisation
from mae.errors import ConfigError

C, S = TrialScheduler.CONTINUE, TrialScheduler.STOP
OBJ = [("ACC_all", "max"), ("latency_ms", "min")]


def trial(tid: str):
    """What the scheduler reads of a Tune Trial (Ray's own scheduler tests use stand-ins the same way)."""
    return SimpleNamespace(trial_id=tid)


def report(sched, tid, t, **metrics):
    return sched.on_trial_result(None, trial(tid), {"training_iteration": t, **metrics})


@pytest.mark.parametrize(
    "grace,max_t,rf", [(1, 8, 2), (1, 10, 3), (2, 16, 2), (1, 100, 4), (1, 9, 3), (3, 5, 2), (1, 1, 3)]
)
def test_milestones_are_rays(grace, max_t, rf):
    ray_rungs = [m for m, _ in _Bracket(grace, max_t, rf, 0)._rungs]
    assert rung_milestones(grace, max_t, rf) == ray_rungs


@pytest.mark.parametrize("seed", range(3))
def test_trials_are_recorded_at_the_same_rungs_as_rays_asha(seed):
    # Irregular reports (some trials skip epochs): which rung each result lands on must match Ray's bracket.
    rng = random.Random(seed)
    ours = MOASHAScheduler([("m", "max")], max_t=27, grace_period=1, reduction_factor=3)
    ray_bracket = _Bracket(1, 27, 3, 0)
    events = []
    for i in range(10):
        t, step = 0, rng.choice([1, 2, 4])
        while t + step < 27:
            t += step
            events.append((rng.random(), f"t{i}", t))
    for _, tid, t in sorted(events):  # interleaved in time, each trial's own reports in order
        value = rng.random()
        ours._on_result(tid, t, [-value], 0.0)
        ray_bracket.on_result(trial(tid), t, value)
    assert {m: set(r) for m, r in ours._rungs.items()} == {m: set(r) for m, r in ray_bracket._rungs}


def test_decisions_happen_at_rungs_and_max_t_stops():
    s = MOASHAScheduler(OBJ, max_t=8, grace_period=1, reduction_factor=2)
    actions = [report(s, "a", t, ACC_all=0.1 * t, latency_ms=1.0) for t in range(1, 9)]
    assert actions == [C] * 7 + [S]  # alone at every rung; stopped at max_t
    assert [d["rung"] for d in s.decisions] == [1, 2, 4]
    # a trial reporting every third epoch is decided at the highest rung it passed (2, then 4), as in Ray
    report(s, "b", 3, ACC_all=0.5, latency_ms=1.0)
    report(s, "b", 6, ACC_all=0.6, latency_ms=1.0)
    assert [(d["trial_id"], d["rung"]) for d in s.decisions[3:]] == [("b", 2), ("b", 4)]
    assert "b" not in s._rungs[1]


def test_known_front_dominated_trials_stop_and_infeasible_ranks_last():
    s = MOASHAScheduler(OBJ, max_t=8, grace_period=1, reduction_factor=2)
    arrivals = [
        ("A", 0.50, 5.0, {}, C),  # alone
        ("B", 0.60, 4.0, {}, C),  # dominates A: first of 2
        ("C", 0.40, 6.0, {}, S),  # dominated by A and B: rank 2, 2 ahead of 3
        ("D", 0.90, 1.0, {}, C),  # dominates everything
        ("E", 0.95, 3.0, {}, C),  # on the front with D (both extremes)
        ("F", 0.70, 2.0, {}, C),  # rank 1 behind D, E: 2 ahead of 6 -> 2 * 2 < 6
        ("G", 0.99, 0.1, {"constraint_violation": True}, S),  # best values, but infeasible: last of 7
        (
            "H",
            0.20,
            9.0,
            {"constraint_violation": 0.0},
            S,
        ),  # feasible (0.0) but worst: behind the other 6 feasible
    ]
    for tid, acc, lat, extra, want in arrivals:
        assert report(s, tid, 1, ACC_all=acc, latency_ms=lat, **extra) == want, tid
    by = {d["trial_id"]: d for d in s.decisions}
    assert [by[t]["rank"] for t in "ABCDEF"] == [0, 0, 2, 0, 0, 1]
    assert by["G"]["feasible"] is False and by["G"]["ahead"] == 6
    assert by["H"]["feasible"] is True and by["H"]["ahead"] == 6 and by["H"]["rank"] == 5


def test_crowding_distance_breaks_ties_within_the_front():
    # Every point lies on the front x + y = 10 (both minimised): only crowding tells them apart.
    s = MOASHAScheduler([("x", "min"), ("y", "min")], max_t=4, grace_period=1, reduction_factor=2)
    points = {"P1": (0, 10), "P2": (10, 0), "P3": (5, 5), "P4": (1, 9), "P5": (4, 6), "P6": (7.5, 2.5)}
    got = {tid: report(s, tid, 1, x=x, y=y) for tid, (x, y) in points.items()}
    # P3, P4, P5 arrive into gaps smaller than the extremes' (inf): 2+ ahead of 3..5; P6 fills the widest gap
    # (crowding 1.0 against 0.7, 0.8, 0.8) and is third of 6
    assert got == {"P1": C, "P2": C, "P3": S, "P4": S, "P5": S, "P6": C}
    assert all(d["rank"] == 0 for d in s.decisions)
    assert [d["ahead"] for d in s.decisions] == [0, 0, 2, 3, 3, 2]


def test_constraints_and_nan_make_a_trial_infeasible():
    s = MOASHAScheduler(OBJ, constraints=["latency_ms<=2"], max_t=8, grace_period=1, reduction_factor=3)
    assert report(s, "slow", 1, ACC_all=0.99, latency_ms=5.0) == C  # alone: the first at a rung continues
    assert report(s, "ok", 1, ACC_all=0.10, latency_ms=1.0) == C
    assert report(s, "nan", 1, ACC_all=math.nan, latency_ms=0.1) == S
    by = {d["trial_id"]: d for d in s.decisions}
    assert not by["slow"]["feasible"] and by["ok"]["ahead"] == 0 and by["ok"]["rank"] == 0
    assert s._rungs[1]["nan"][1] == math.inf and s._rungs[1]["slow"][1] == pytest.approx(1.5)


def test_missing_metric_is_an_error_naming_it():
    s = MOASHAScheduler(OBJ, max_t=8)
    with pytest.raises(ConfigError) as e:
        report(s, "t1", 1, ACC_all=0.5, latency=3.0)
    msg = str(e.value)
    assert "trial t1 reported no 'latency_ms'" in msg and "did you mean 'latency'" in msg
    assert len(msg.splitlines()) == 1 and s.error is e.value
    # a result without time_attr is not decided, as in Ray
    assert s.on_trial_result(None, trial("t2"), {"ACC_all": 0.5}) == C and not s.decisions


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError) as e:
        MOASHAScheduler([], max_t=4, grace_period=5, reduction_factor=1)
    assert e.value.problems == [
        "MO-ASHA needs at least one objective (--objective METRIC:MODE)",
        "--grace-period 5: must be <= max_t (4)",
        "--reduction-factor 1: must be > 1",
    ]
    with pytest.raises(ConfigError, match="twice"):
        MOASHAScheduler([("a", "min"), ("a", "max")])
    with pytest.raises(ConfigError, match="METRIC:MODE"):
        MOASHAScheduler(["ACC_all"])


def synthetic_search(sched, n_trials=12, workers=3, max_t=9, seed=0):
    """Trials with learning curves acc = a (1 - exp(-t / 3)) + noise and a fixed latency, run asynchronously on
    `workers` slots (each step advances the slot that is furthest behind). Returns {trial: last epoch} and
    the (a, latency) of each trial."""
    rng = np.random.default_rng(seed)
    params = {
        f"t{i:02d}": (float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.5, 5.0))) for i in range(n_trials)
    }
    params["best"] = (1.0, 0.4)  # dominates every other trial at every epoch
    queue = list(params)
    queue.insert(4, queue.pop())  # arrives fifth
    running: dict[str, int] = {}
    last: dict[str, int] = {}
    while queue or running:
        while queue and len(running) < workers:
            running[queue.pop(0)] = 0
        tid = min(running, key=lambda k: (running[k], k))
        t = running[tid] + 1
        a, lat = params[tid]
        acc = a * (1 - math.exp(-t / 3)) + float(rng.normal(0, 0.005))
        action = report(sched, tid, t, ACC_all=acc, latency_ms=lat)
        running[tid] = t
        if action == S or t >= max_t:
            last[tid] = t
            del running[tid]
            sched.on_trial_complete(
                None, trial(tid), {"training_iteration": t, "ACC_all": acc, "latency_ms": lat}
            )
    return last, params


def test_synthetic_curves_stop_at_rungs_and_keep_the_pareto_best():
    s = MOASHAScheduler(OBJ, max_t=9, grace_period=1, reduction_factor=3)
    last, _ = synthetic_search(s)
    assert set(last.values()) <= {1, 3, 9}  # stopped at a rung or at max_t, never between
    assert last["best"] == 9
    assert sum(t < 9 for t in last.values()) >= 6  # most trials stopped early
    # Every decision is the rule applied to what was recorded at that moment: replay the log independently.
    seen: dict[float, list] = {}
    recorded = {m: dict(r) for m, r in s._rungs.items()}
    for d in s.decisions:
        seen.setdefault(d["rung"], []).append(d["trial_id"])
        ids = seen[d["rung"]]
        pts = np.array([recorded[d["rung"]][i][0] for i in ids])
        ranks = non_dominated_sort(pts)
        crowd = crowding_by_front(pts, ranks)
        me = ids.index(d["trial_id"])
        ahead = sum(1 for j in range(len(ids)) if (ranks[j], -crowd[j]) < (ranks[me], -crowd[me]))
        assert (ahead, len(ids)) == (d["ahead"], d["n"])
        assert d["action"] == (C if ahead * 3 < len(ids) else S)
    # the trials that continued past rung 1 are, at that rung, better ranked than the ones stopped there
    rung1 = s._rungs[1]
    ids = list(rung1)
    ranks = dict(zip(ids, non_dominated_sort(np.array([rung1[i][0] for i in ids])), strict=True))
    kept = [d["trial_id"] for d in s.decisions if d["rung"] == 1 and d["action"] == C]
    stopped = [d["trial_id"] for d in s.decisions if d["rung"] == 1 and d["action"] == S]
    assert np.mean([ranks[i] for i in kept]) < np.mean([ranks[i] for i in stopped])


def test_state_round_trips_through_get_set_pickle_and_a_file(tmp_path):
    def fresh(**kw):
        return MOASHAScheduler(OBJ, max_t=9, grace_period=1, reduction_factor=3, **kw)

    full = _Recorder(fresh())
    synthetic_search(full, seed=1)
    cut = len(full.events) // 2
    part = fresh()
    for event in full.events[:cut]:
        _replay(part, event)
    path = tmp_path / "state" / "mo_asha.json"
    part.save(path)
    from_file = fresh()
    from_file.restore(path)
    from_dict = fresh()
    from_dict.set_state(part.get_state())
    for restored in (from_file, from_dict, pickle.loads(pickle.dumps(part))):
        assert restored.get_state() == part.get_state()
        tail = [_replay(restored, e) for e in full.events[cut:]]
        assert tail == full.actions[cut:]
        assert restored.get_state() == full.sched.get_state()
    with pytest.raises(ConfigError, match="other settings"):
        MOASHAScheduler(OBJ[:1], max_t=9, grace_period=1, reduction_factor=3).restore(path)


class _Recorder:
    """A scheduler that records every event it is given and the action it returned."""

    def __init__(self, sched):
        self.sched, self.events, self.actions = sched, [], []

    def on_trial_result(self, c, tr, r):
        self.events.append(("result", tr.trial_id, dict(r)))
        self.actions.append(self.sched.on_trial_result(c, tr, r))
        return self.actions[-1]

    def on_trial_complete(self, c, tr, r):
        self.events.append(("complete", tr.trial_id, dict(r)))
        self.actions.append(self.sched.on_trial_complete(c, tr, r))


def _replay(sched, event):
    kind, tid, r = event
    if kind == "result":
        return sched.on_trial_result(None, trial(tid), r)
    return sched.on_trial_complete(None, trial(tid), r)


def test_state_path_is_written_and_read_back_after_a_restore(tmp_path):
    path = tmp_path / "mo_asha.json"
    s = MOASHAScheduler(OBJ, max_t=8, grace_period=1, reduction_factor=2, state_path=path)
    pickled_at_start = pickle.dumps(s)  # what Tuner.restore brings back
    for i, (acc, lat) in enumerate([(0.5, 5.0), (0.6, 4.0)]):
        report(s, f"t{i}", 1, ACC_all=acc, latency_ms=lat)
    assert (
        set(MOASHAScheduler(OBJ, max_t=8, grace_period=1, reduction_factor=2, state_path=path)._rungs[1])
        == set()
    )
    back = pickle.loads(pickled_at_start)
    assert report(back, "t2", 1, ACC_all=0.4, latency_ms=6.0) == S  # compared with t0 and t1 from the file
    assert [d["trial_id"] for d in back.decisions] == ["t0", "t1", "t2"]


def test_objective_vectors_are_minimised_internally():
    s = MOASHAScheduler(OBJ, max_t=8)
    vec, viol = s._measure("t", {"ACC_all": 0.9, "latency_ms": 2.0})
    assert vec == to_minimisation([[0.9, 2.0]], ["max", "min"])[0].tolist() and viol == 0.0


# --- a real Ray Tune search ----------------------------------------------------------------------------------

# (final accuracy, latency): "best" dominates every other configuration at every epoch, "worst" is dominated by
# all of them and comes last.
CONFIGS = [
    ("c0", 0.80, 2.0),
    ("c1", 0.60, 1.0),
    ("c2", 0.90, 3.0),
    ("c3", 0.70, 2.5),
    ("c4", 0.50, 4.0),
    ("best", 0.95, 0.5),
    ("c6", 0.65, 3.5),
    ("worst", 0.30, 5.0),
]


@pytest.mark.slow
def test_mo_asha_in_a_real_tune_search(tmp_path):
    import time

    import pandas as pd
    import ray
    from ray import tune
    from ray.tune.error import TuneError

    def trainable(config):
        name, a, latency = config["cfg"]
        for t in range(1, 9):
            time.sleep(0.05)
            tune.report({"ACC_all": a * (1 - math.exp(-t / 3)), "latency_ms": latency, "name": name})

    state = tmp_path / "mo_asha.json"
    sched = MOASHAScheduler(OBJ, max_t=8, grace_period=1, reduction_factor=2, state_path=state)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            trainable,
            param_space={"cfg": tune.grid_search(CONFIGS)},
            tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=2, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="mo_asha", verbose=0),
        )
        grid = tuner.fit()
        # A trial that does not report an objective ends the search; the scheduler keeps the one-line reason.
        wrong = MOASHAScheduler(OBJ, max_t=8, grace_period=1, reduction_factor=2)
        with pytest.raises(TuneError):
            tune.Tuner(
                lambda config: tune.report({"ACC_all": 0.5, "latency": 1.0}),
                tune_config=tune.TuneConfig(scheduler=wrong, num_samples=1),
                run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="wrong", verbose=0),
            ).fit()
        assert "reported no 'latency_ms' (did you mean 'latency'?)" in str(wrong.error)
    finally:
        if started:
            ray.shutdown()
    assert not grid.errors
    epochs, history = {}, {}
    for r in grid:
        df: pd.DataFrame = r.metrics_dataframe
        name = r.config["cfg"][0]
        epochs[name] = int(df["training_iteration"].max())
        history[r.metrics["trial_id"]] = (name, df.set_index("training_iteration"))
    # Trials stop at rungs (1, 2, 4) or at max_t (8); some stopped early; the dominating one ran to the end and
    # the dominated last arrival stopped at the first rung.
    assert set(epochs.values()) <= {1, 2, 4, 8}
    assert sum(e < 8 for e in epochs.values()) >= 3
    assert epochs["best"] == 8 and epochs["worst"] == 1
    # Every decision the scheduler took (read back from its state file) is the rule applied to the values the
    # trials reported at that epoch, ranked against the trials recorded at the rung before it.
    import json

    decisions = json.loads(state.read_text())["decisions"]
    assert {(history[d["trial_id"]][0], d["rung"]) for d in decisions if d["action"] == S} == {
        (name, e) for name, e in epochs.items() if e < 8
    }
    at_rung: dict[float, list[str]] = {}
    for d in decisions:
        ids = at_rung.setdefault(d["rung"], [])
        ids.append(d["trial_id"])
        vals = [
            [history[i][1].loc[d["rung"], "ACC_all"], history[i][1].loc[d["rung"], "latency_ms"]] for i in ids
        ]
        pts = to_minimisation(vals, ["max", "min"])
        ranks = non_dominated_sort(pts)
        crowd = crowding_by_front(pts, ranks)
        me = len(ids) - 1
        ahead = sum(1 for j in range(len(ids)) if (ranks[j], -crowd[j]) < (ranks[me], -crowd[me]))
        assert d["action"] == (C if ahead * 2 < len(ids) else S), d
        if d["action"] == C:  # survivors are in the best half of the rung by Pareto rank
            assert ranks[me] <= np.sort(ranks)[(len(ids) - 1) // 2]
