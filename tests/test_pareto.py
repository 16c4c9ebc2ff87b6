"""automl.pareto: objectives and constraints, non-dominated sorting, crowding distance, hypervolume, the plot."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from automl.pareto import (
    Constraint,
    Objective,
    analyse,
    crowding_distance,
    domination_matrix,
    hypervolume,
    hypervolume_of,
    non_dominated_sort,
    pareto_figure,
    plot_pareto,
    to_minimisation,
)
from mae.errors import ConfigError


def test_objective_and_constraint_parsing():
    assert Objective.parse("ACC_all:max") == Objective("ACC_all", "max")
    assert Objective.parse(("latency_ms", "min")).sign == 1.0
    assert Objective.parse("ACC_all:max").sign == -1.0
    for bad in ("ACC_all", "ACC_all:up", ":max"):
        with pytest.raises(ConfigError, match="METRIC:MODE"):
            Objective.parse(bad)
    c = Constraint.parse(" latency_ms <= 2.5 ")
    assert (c.metric, c.op, c.bound) == ("latency_ms", "<=", 2.5)
    assert Constraint.parse("ACC_all>=0.9") == Constraint("ACC_all", ">=", 0.9)
    for bad in ("latency_ms<2", "latency_ms<=fast", "<=2", "latency_ms<=nan"):
        with pytest.raises(ConfigError, match="METRIC<=VALUE"):
            Constraint.parse(bad)


def test_constraint_violation_is_relative_to_the_bound():
    c = Constraint("latency_ms", "<=", 2.0)
    assert c.violation(1.0) == 0.0
    assert c.violation(2.0) == 0.0
    assert c.violation(3.0) == pytest.approx(0.5)
    assert Constraint("ACC_all", ">=", 0.8).violation(0.6) == pytest.approx(0.25)
    assert Constraint("x", "<=", 0.0).violation(0.5) == pytest.approx(0.5)  # bound 0: absolute
    assert c.violation(math.nan) == math.inf


def test_non_dominated_sort_known_fronts():
    pts = np.array([[1, 4], [2, 2], [4, 1], [3, 3], [4, 4], [2, 2], [5, 5]], dtype=float)
    ranks = non_dominated_sort(pts)
    # (1,4) (2,2) (4,1) and the duplicate (2,2): front; (3,3) behind (2,2); (4,4) behind (3,3); (5,5) last
    assert ranks.tolist() == [0, 0, 0, 1, 2, 0, 3]


def test_max_objectives_are_negated():
    acc_lat = [[0.9, 3.0], [0.8, 1.0], [0.7, 2.0]]  # (ACC_all max, latency_ms min)
    pts = to_minimisation(acc_lat, ["max", "min"])
    assert pts.tolist() == [[-0.9, 3.0], [-0.8, 1.0], [-0.7, 2.0]]
    assert non_dominated_sort(pts).tolist() == [0, 0, 1]  # 0.7 at 2 ms loses to 0.8 at 1 ms


@pytest.mark.parametrize("seed", range(5))
def test_non_dominated_sort_matches_the_definition(seed):
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 6, size=(40, 3)).astype(float)  # many ties and duplicates
    ranks = non_dominated_sort(pts)

    def dom(a, b):
        return (a <= b).all() and (a < b).any()

    for i, j in itertools.product(range(len(pts)), repeat=2):
        if dom(pts[i], pts[j]):
            assert ranks[i] < ranks[j]
    for i in range(len(pts)):
        if ranks[i] > 0:  # something in the previous front dominates it
            assert any(dom(pts[j], pts[i]) for j in np.flatnonzero(ranks == ranks[i] - 1))


def test_constrained_domination_feasible_first_then_less_violation():
    pts = np.array([[5.0, 5.0], [0.0, 0.0], [1.0, 1.0], [9.0, 9.0]])
    viol = np.array([0.0, 0.5, 0.2, 0.0])
    d = domination_matrix(pts, viol)
    assert d[0, 1] and d[0, 2] and not d[1, 0]  # feasible beats infeasible whatever the values
    assert d[2, 1] and not d[1, 2]  # less violation beats more
    assert d[0, 3]  # among feasible: Pareto dominance
    assert non_dominated_sort(pts, viol).tolist() == [0, 3, 2, 1]
    # equal violation: Pareto dominance decides
    assert non_dominated_sort(pts[1:3], [0.3, 0.3]).tolist() == [0, 1]


def test_crowding_distance_hand_computed():
    pts = np.array([[0.0, 4.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0]])
    d = crowding_distance(pts)
    assert d[0] == math.inf and d[3] == math.inf
    # (1,2): x neighbours 0 and 3 -> 3/4, y neighbours 1 and 4 -> 3/4; (3,1): 3/4 + 2/4
    assert d[1] == pytest.approx(1.5)
    assert d[2] == pytest.approx(1.25)
    assert crowding_distance(pts[:2]).tolist() == [math.inf, math.inf]


def test_hypervolume_2d_known_value():
    pts = [[1, 3], [2, 2], [3, 1], [3.5, 3.5]]  # the last is dominated: adds nothing
    assert hypervolume(pts, [4, 4]) == pytest.approx(3 + 2 + 1)
    assert hypervolume([[5, 1]], [4, 4]) == 0.0  # does not beat the reference
    assert hypervolume(np.zeros((0, 2)), [1, 1]) == 0.0
    with pytest.raises(ValueError, match="reference"):
        hypervolume(pts, [4, 4, 4])


@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_3d_equals_cell_count(seed):
    # Integer points in [0, 8)^3 with reference 8: the exact hypervolume is the number of unit cells [c, c+1)^3
    # with some point <= c on every axis.
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 8, size=(12, 3)).astype(float)
    grid = np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    covered = (pts[None, :, :] <= grid[:, None, :]).all(axis=2).any(axis=1).sum()
    assert hypervolume(pts, [8, 8, 8]) == pytest.approx(float(covered))


def test_hypervolume_of_a_result_in_metric_units():
    trials = {
        "a": {"ACC_all": 0.9, "latency_ms": 3.0},
        "b": {"ACC_all": 0.8, "latency_ms": 1.0},
        "c": {"ACC_all": 0.5, "latency_ms": 2.0},  # dominated by b
    }
    res = analyse(trials, ["ACC_all:max", "latency_ms:min"])
    # reference ACC 0, latency 4: a covers 0.9 x 1, b adds 0.8 x (3 - 1)
    assert hypervolume_of(res, {"ACC_all": 0.0, "latency_ms": 4.0}) == pytest.approx(0.9 * 1 + 0.8 * 2)
    assert hypervolume_of(res, [0.0, 4.0]) == pytest.approx(2.5)


def _search():
    return {
        "t1": {"ACC_all": 0.95, "latency_ms": 4.0, "train_loss": 0.1},  # best accuracy, too slow
        "t2": {"ACC_all": 0.90, "latency_ms": 1.8},
        "t3": {"ACC_all": 0.85, "latency_ms": 1.0},
        "t4": {"ACC_all": 0.80, "latency_ms": 1.5},  # dominated by t3
        "t5": {"ACC_all": 0.60, "latency_ms": 0.5},
        "t6": {"latency_ms": 9.0},  # refused before training: no accuracy
        "t7": {"ACC_all": math.nan, "latency_ms": 0.4},  # diverged
    }


def test_analyse_front_feasibility_and_pick():
    res = analyse(
        _search(),
        ["ACC_all:max", "latency_ms:min"],
        ["latency_ms<=2"],
        infeasible={"t6": "latency_ms=9 > 2 before training"},
    )
    by = res.by_id()
    assert res.front == ["t2", "t3", "t5"]  # sorted by the first objective, best first
    assert not by["t1"].feasible and by["t1"].violation == pytest.approx(1.0)
    assert "latency_ms=4 violates latency_ms<=2" in by["t1"].reason
    assert not by["t6"].feasible and by["t6"].reason.startswith("latency_ms=9 > 2 before training")
    assert not by["t7"].feasible and by["t7"].violation == math.inf
    assert by["t4"].feasible and by["t4"].rank == 1
    # feasible ranks come before every infeasible rank; less violation before more
    assert max(t.rank for t in res.trials if t.feasible) < min(t.rank for t in res.trials if not t.feasible)
    assert by["t1"].rank < by["t6"].rank
    assert res.pick() == "t2"  # best ACC_all among feasible trials, not the infeasible t1
    assert res.pick("latency_ms") == "t5"
    with pytest.raises(ConfigError, match="did you mean 'latency_ms'"):
        res.pick("latency")


def test_analyse_without_feasible_trials_has_an_empty_front():
    res = analyse(_search(), ["ACC_all:max", "latency_ms:min"], ["latency_ms<=0.1"], infeasible={"t6": "x"})
    assert res.front == [] and res.pick() is None
    assert hypervolume_of(res, [0.0, 10.0]) == 0.0


def test_analyse_names_a_missing_metric():
    with pytest.raises(ConfigError) as e:
        analyse(_search(), ["ACC_al:max", "latency_ms:min"], infeasible={"t6": "refused"})
    msg = str(e.value)
    assert "trial t1 reported no 'ACC_al'" in msg and "did you mean 'ACC_all'" in msg
    assert len(msg.splitlines()) == 1


def test_pareto_figure_marks_front_infeasible_and_picked():
    res = analyse(
        _search(), ["ACC_all:max", "latency_ms:min"], ["latency_ms<=2"], infeasible={"t6": "refused"}
    )
    fig = pareto_figure(res, picked="t3")
    ax = fig.axes[0]
    sets = {c.get_label(): {tuple(p) for p in c.get_offsets().tolist()} for c in ax.collections}
    assert sets["Pareto front"] == {(0.90, 1.8), (0.85, 1.0), (0.60, 0.5)}
    assert sets["feasible"] == {(0.80, 1.5)}
    assert sets["infeasible"] == {(0.95, 4.0)}  # t6 and t7 have no accuracy to draw; the title says so
    assert ax.get_title() == "Pareto front: 3 of 7 trials (2 without values not shown)"
    assert sets["picked"] == {(0.85, 1.0)}
    assert any(line.get_ydata()[0] == 2.0 for line in ax.lines)  # the latency bound, a horizontal line
    assert "ACC_all (higher is better)" == ax.get_xlabel()
    with pytest.raises(ConfigError, match="not among the trials"):
        pareto_figure(res, picked="t99")


def test_plot_pareto_writes_a_png(tmp_path):
    from PIL import Image

    res = analyse(_search(), ["ACC_all:max", "latency_ms:min"], infeasible={"t6": "refused"})
    path = plot_pareto(res, tmp_path / "plots" / "pareto.png", picked=res.pick())
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (640, 480)
    assert [p.name for p in path.parent.iterdir()] == ["pareto.png"]  # no temporary left behind
    with pytest.raises(ConfigError, match="two objectives"):
        pareto_figure(analyse(_search(), ["latency_ms:min"]))
