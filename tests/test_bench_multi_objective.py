"""The multi-objective benchmark (benchmarks/multi_objective): the anytime hypervolume and its figures on known
values, the latency limit, the records, and a --quick run that checks the
harness end to end (every arm and seed, monotone curves, the JSON's keys), not the result."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO))

from benchmarks.multi_objective import harness, report  # noqa: E402


def test_hv_curve_counts_only_feasible_results_and_never_falls():
    # limit 10: (0.5, 2) -> 0.5 * 8; (0.4, 1) adds 0.4 * 1; (0.9, 12) is over the limit; (0.6, 2) lifts the first
    pts = [(0.5, 2.0), (None, 1.0), (0.4, 1.0), (0.9, 12.0), (0.6, 2.0)]
    curve = report.hv_curve(pts, 10.0)
    assert curve == pytest.approx([4.0, 4.0, 4.4, 4.4, 5.2])


def test_held_and_epochs_to():
    curve = [0.0, 1.0, 1.0, 2.5]
    assert report.held(curve, 0) == 0.0 and report.held(curve, 2) == 1.0 and report.held(curve, 9) == 2.5
    assert report.epochs_to(curve, 1.0) == 2 and report.epochs_to(curve, 2.5) == 4
    assert report.epochs_to(curve, 3.0) == math.inf and report.epochs_to(curve, 0.0) == 0


def _run(seed, curve, infeasible=0, proposed=4):
    return {
        "seed": seed,
        "curve": curve,
        "final_hv": curve[-1],
        "trial_epochs": len(curve),
        "infeasible": infeasible,
        "trials_proposed": proposed,
        "front": [],
        "wall_s": 1.0,
    }


def test_compare_pairs_seeds_at_equal_trial_epochs_and_final():
    runs = {
        "ours": [_run(0, [1.0, 2.0, 3.0]), _run(1, [1.0, 1.0])],
        "w": [_run(0, [2.0, 2.5]), _run(1, [0.5, 1.5, 1.8, 2.0])],
    }
    d = report.compare(runs, "w")
    s0, s1 = d["per_seed"]
    assert (s0["equal_trial_epochs"], s0["ours_hv_at_equal"], s0["w_hv_at_equal"]) == (2, 2.0, 2.5)
    assert s0["ours_epochs_to_w_final"] == 3 and s0["w_epochs_to_own_final"] == 2
    assert (s1["ours_hv_at_equal"], s1["w_hv_at_equal"]) == (1.0, 1.5)
    assert s1["ours_epochs_to_w_final"] == math.inf
    assert d["ours_final_ge"] == "1 of 2" and d["ours_ge_at_equal_trial_epochs"] == "0 of 2"
    assert d["median_ours_epochs_to_w_final"] == math.inf  # median of (3, inf)
    curves = report.median_curves(runs)
    assert curves["ours"]["median"] == [1.0, 1.5, 2.0]  # seed 1 held at 1.0 past its end
    assert curves["w"]["median"] == [1.25, 2.0, 2.15, 2.25]
    assert report.median_curve_share(curves, "w") == "0 of 3"


def test_infeasible_counts_per_arm():
    runs = {"ours": [_run(0, [1.0], 1, 5), _run(1, [1.0], 3, 5)], "w": [_run(0, [1.0], 0, 5)]}
    d = report.infeasible(runs)
    assert d["ours"] == {"per_seed": [1, 3], "total": 4, "median": 2, "share_of_proposed": 0.4}
    assert d["w"]["total"] == 0


def test_latency_limit_lets_the_fastest_shapes_through():
    profile = {f"s{i}": {"latency_ms": v} for i, v in enumerate([4.0, 9.0, 1.0, 50.0, 20.0])}
    x = harness.latency_limit(profile, 2)
    assert 4.0 <= x < 9.0 and sum(m["latency_ms"] <= x for m in profile.values()) == 2
    with pytest.raises(ValueError, match="feasible-shapes"):
        harness.latency_limit(profile, 5)
    assert harness.ARMS["ours"].weights(x) == ()
    assert harness.ARMS["weighted-balanced"].weights(20.0) == (1.0, 0.05)
    assert harness.ARMS["weighted-accuracy"].weights(20.0) == (1.0, 0.0125)


def test_record_keeps_arrival_order_and_an_infeasible_trial_costs_no_trial_epoch(tmp_path):
    auto = tmp_path / "automl"
    auto.mkdir()
    state = {
        "trials": {
            "a": {"status": "completed", "config": {"model.arch": "m"}, "history": {
                "1": {"seq": 1, "ACC_all": 0.5, "latency_ms": 2.0},
                "2": {"seq": 4, "ACC_all": 0.7, "latency_ms": 2.0},
            }},
            "b": {"status": "infeasible", "config": {}, "history": {}, "infeasible": "too slow",
                  "deploy": {"latency_ms": 30.0}},
            "c": {"status": "stopped", "config": {}, "history": {"1": {"seq": 3, "ACC_all": 0.6, "latency_ms": 5.0}}},
        }
    }  # fmt: skip
    refused = [{"config": {"model.arch": "big", "dataset.augmentation.input_size": 32}, "reason": "too slow"}]
    summary = {"finished": True, "elapsed_s": 9.0, "hypervolume": 5.6, "pareto": [], "refused": refused}
    (auto / "state.json").write_text(json.dumps(state))
    (auto / "summary.json").write_text(json.dumps(summary))
    rec = harness.record_of(tmp_path, 10.0)
    # one trial refused itself, one proposal was refused before it became a trial: both infeasible, untrained
    assert rec["trial_epochs"] == 3 and rec["infeasible"] == 2 and rec["trials_proposed"] == 4
    assert rec["refused_shapes"] == ["big@32"]
    # (0.5, 2) -> 4.0; (0.6, 5) adds 0.1 * 5 -> 4.5; (0.7, 2) -> 0.7 * 8 = 5.6, the product's own figure
    assert rec["curve"] == pytest.approx([4.0, 4.5, 5.6]) and rec["final_hv"] == pytest.approx(
        rec["summary_hv"]
    )
    b = next(t for t in rec["trials"] if t["trial_id"] == "b")
    assert b["epochs"] == 0 and b["latency_ms"] == 30.0 and b["infeasible"] == "too slow"


def test_runs_folder_of_another_budget_is_refused(tmp_path):
    from mae.errors import ConfigError

    harness.check_root(tmp_path, {"budget": {"trials": 2}, "limit_ms": 4.0, "pins": []})
    harness.check_root(tmp_path, {"budget": {"trials": 2}, "limit_ms": 4.0, "pins": []})
    with pytest.raises(ConfigError, match="another benchmark"):
        harness.check_root(tmp_path, {"budget": {"trials": 8}, "limit_ms": 4.0, "pins": []})


@pytest.mark.slow
def test_quick_benchmark_writes_every_arm_and_seed(tmp_path):
    out = tmp_path / "mo.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.multi_objective", "--quick", "--out", str(tmp_path / "runs"),
         "--json", str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["runs"]) == {"ours", "weighted-balanced"} and res["seeds"] == [0, 1]
    limit = res["hypervolume_reference"]["latency_ms"]
    assert res["constraint"] == f"latency_ms<={limit:g}"
    assert any(m["latency_ms"] > limit for m in res["profile"].values())  # some shape is infeasible
    for arm, runs in res["runs"].items():
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert len(r["curve"]) == r["trial_epochs"] >= 1, (arm, r)
            assert r["curve"] == sorted(r["curve"]) and r["final_hv"] == r["curve"][-1]
            assert r["final_hv"] == pytest.approx(r["summary_hv"] or 0.0)
            assert all(p["latency_ms"] <= limit for p in r["front"])
            assert r["trials_proposed"] >= 2 and r["automl_code"]
    f = res["figures"]
    assert set(f["per_arm"]) == set(f["infeasible_proposed"]) == {"ours", "weighted-balanced"}
    vs = f["vs"]["weighted-balanced"]
    assert {
        "ours_final_ge",
        "ours_ge_at_equal_trial_epochs",
        "median_ours_epochs_to_weighted-balanced_final",
    } <= set(vs)
    assert set(res["median_curves"]) == {"ours", "weighted-balanced"}
    assert res["arms"]["weighted-balanced"]["objective_weights"] == [1.0, pytest.approx(1.0 / limit)]
    assert (tmp_path / "mo.png").stat().st_size > 1000


def test_shapes_takes_the_seed_from_seeds_only(capsys):
    from benchmarks.multi_objective import shapes

    # a seed in --set would be overridden by --seeds' value without a word: refused before anything trains
    with pytest.raises(SystemExit) as e:
        shapes.main(["--seeds", "1", "--set", "dataset.batch_size=16", "train.seed = 3"])
    assert e.value.code == 2 and "--seeds, not --set train.seed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a malformed override is refused the same way, before any work
        shapes.main(["--set", "dataset.batch_size"])
    assert e.value.code == 2 and "expected key=value" in capsys.readouterr().err
