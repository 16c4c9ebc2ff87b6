"""Deploy-aware, multi-objective search end to end: accuracy against measured latency under a latency limit."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO))

from benchmarks.multi_objective.harness import FIXED_RECIPE  # noqa: E402


def _finetune_spec(write_spec, tmp_path, digits) -> str:
    return str(
        write_spec(
            {
                "results_dir": str(tmp_path / "results"),
                "model_name": "digits",
                "dataset": {
                    "batch_size": 64,
                    "num_workers_per_gpu": 0,
                    "train_data_sources": str(digits["train"]),
                    "val_data_sources": str(digits["val"]),
                    "augmentation": {
                        "input_size": 32,
                        "min_scale": 0.5,
                        "hflip": 0.0,
                        "auto_aug": None,
                        "mixup": 0.0,
                        "cutmix": 0.0,
                    },
                },
                "model": {"arch": "vit_micro_patch4", "num_classes": 10},
                "train": {"stage": "finetune", "num_epochs": 5, "optim": {"lr_scheduler": "cosine"}},
            }
        )
    )


def test_objective_weights_search_the_weighted_score_over_the_architecture(write_spec, tmp_path, digits):
    from automl.multi_objective import ARCH, INPUT_SIZE, WEIGHTED
    from automl.plan import plan_search

    spec = _finetune_spec(write_spec, tmp_path, digits)
    goals = ("ACC_all:max", "latency_ms:min")
    plan = plan_search(spec, objectives=goals, objective_weights=(1.0, 0.1))
    assert plan.goals.weights == (1.0, 0.1) and (plan.metric, plan.mode) == (WEIGHTED, "max")
    assert not plan.goals.multi and {ARCH, INPUT_SIZE} <= set(plan.space.names)  # same space as MO
    assert plan.goals.weighted({"ACC_all": 0.9, "latency_ms": 2.0}) == pytest.approx(0.9 - 0.2)
    mo = plan_search(spec, objectives=goals)
    assert mo.goals.multi and mo.metric == "ACC_all" and set(mo.space.names) == set(plan.space.names)


def test_a_result_without_the_scalar_metric_is_not_reported_to_optuna():
    from automl.multi_objective import WEIGHTED, make_constrained_search
    from automl.parameters import Parameter
    from automl.plan import define_by_run
    from automl.space import SearchSpace

    space = SearchSpace((Parameter("train.optim.lr", "float", low=1e-4, high=1e-2, log=True),))
    searcher = make_constrained_search(
        (), [WEIGHTED], space=define_by_run(space), metric=WEIGHTED, mode="max"
    )
    assert searcher.suggest("t1") is not None
    searcher.on_trial_result("t1", {"latency_ms": 30.0, "training_iteration": 1})  # refused: deploy only
    searcher.on_trial_result("t1", {WEIGHTED: 0.5, "training_iteration": 1})
    assert searcher._ot_study.trials[0].intermediate_values == {1: 0.5}


def test_shape_seeds_cover_the_feasible_shapes_fastest_first():
    from types import SimpleNamespace

    from automl.multi_objective import ARCH, INPUT_SIZE, Feasibility, Goals, shape_seeds
    from automl.parameters import Parameter
    from automl.space import SearchSpace

    archs, sizes = ("micro", "tiny", "small"), (16, 24, 32)
    space = SearchSpace(
        (
            Parameter(ARCH, "categorical", choices=archs),
            Parameter(INPUT_SIZE, "categorical", choices=sizes),
            Parameter("train.optim.lr", "float", low=1e-4, high=1e-2, log=True),
        )
    )
    cfg = SimpleNamespace(
        model=SimpleNamespace(arch="micro"),
        dataset=SimpleNamespace(augmentation=SimpleNamespace(input_size=32)),
    )
    plan = SimpleNamespace(space=space, config=cfg)
    # latency grows with the model and the input; the limit lets 5 of the 9 shapes through
    deploy = {
        f"{a}@{s}": {"latency_ms": (i + 1) * s / 8 + i / 10} for i, a in enumerate(archs) for s in sizes
    }
    goals = Goals.of(("ACC_all:max", "latency_ms:min"), ("latency_ms<=6.15",), metric="ACC_all", mode="max")
    feasibility = Feasibility(goals, deploy, "micro", 32, "unused.json")
    assert (
        len(feasible := sorted((m["latency_ms"], k) for k, m in deploy.items() if m["latency_ms"] <= 6.15))
        == 5
    )
    seeds = shape_seeds(plan, feasibility, budget=12)
    assert [f"{p[ARCH]}@{p[INPUT_SIZE]}" for p in seeds] == [k for _, k in feasible]
    assert all(set(p) == {ARCH, INPUT_SIZE} for p in seeds)  # Optuna samples the rest
    few = shape_seeds(plan, feasibility, budget=6)  # at most half the budget: the two ends and the middle
    assert [f"{p[ARCH]}@{p[INPUT_SIZE]}" for p in few] == [feasible[0][1], feasible[2][1], feasible[4][1]]
    assert shape_seeds(plan, feasibility, budget=1) == []


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_latency_constrained_search_front_and_feasibility(write_spec, tmp_path, digits):
    import automl
    from automl.multi_objective import profile_shapes
    from automl.plan import plan_search
    from mae.layout import ExperimentLayout, TrainLayout

    spec = _finetune_spec(write_spec, tmp_path, digits)
    goals = ["ACC_all:max", "latency_ms:min"]
    files = ExperimentLayout(tmp_path / "results")
    # measure the shapes first (the search reads the same cache) to set a limit that excludes some of them
    plan = plan_search(spec, objectives=goals)
    assert {"model.arch", "dataset.augmentation.input_size"} <= set(plan.space.names)
    profiles = profile_shapes(plan.goals, plan, files.root / "deploy_profile.json")
    assert len(profiles) == 9  # 3 archs x 3 input sizes
    latencies = sorted(p["latency_ms"] for p in profiles.values())
    limit = (latencies[3] + latencies[4]) / 2  # four shapes feasible, five not
    # a from-scratch recipe that learns in 5 epochs, pinned by the user's overrides (the finetune space is for
    # pretrained encoders), so that the search is over weight decay, schedule, architecture and input size; the
    # multi-objective benchmark's --recipe fixed pins the same
    pins = list(FIXED_RECIPE)
    result = automl.run(
        spec,
        pins,
        automl.SearchOptions(
            objectives=tuple(goals),
            constraints=(f"latency_ms<={limit}",),
            max_trials=12,
            max_concurrent=2,
            grace_period=2,
            seed=3,
            progress_interval_s=600,
        ),
    )
    summary = json.loads(files.summary.read_text())
    state = json.loads(files.state.read_text())
    front = summary["pareto"]
    # issue 13 asks for >= 3 front trials on this benchmark-sized search; at this test's budget (12 trials of 5
    # epochs) the front's size depends on the draws, so the test checks its properties, not its size
    assert len(front) >= 1, front
    for entry in front:  # feasible, exported
        assert entry["values"]["latency_ms"] <= limit
        assert (files.best / "pareto" / entry["trial_id"] / "digits.onnx").is_file()
    values = [(e["values"]["ACC_all"], e["values"]["latency_ms"]) for e in front]
    for a in values:  # none dominates another
        assert not any(b != a and b[0] >= a[0] and b[1] <= a[1] for b in values)
    picked = summary["picked"]
    assert picked == max(front, key=lambda e: e["values"]["ACC_all"])["trial_id"]
    assert result.best["trial_id"] == picked and (files.best / "digits.onnx").is_file()
    # no configuration that was infeasible before training was trained
    refused = summary["refused"]  # proposals refused before they became trials
    assert refused, "the limit excludes five of nine shapes; TPE should have proposed some"
    for r in refused:
        shape = f"{r['config']['model.arch']}@{r['config']['dataset.augmentation.input_size']}"
        assert profiles[shape]["latency_ms"] > limit and "violates latency_ms<=" in r["reason"]
    for t in [
        t for t in state["trials"].values() if t["status"] == "infeasible"
    ]:  # refused by the trial itself
        shape = f"{t['config']['model.arch']}@{t['config']['dataset.augmentation.input_size']}"
        assert profiles[shape]["latency_ms"] > limit
        assert t["epochs"] == 0 and not TrainLayout(files.trial_dir(t["trial_id"])).checkpoints.exists()
        assert "violates latency_ms<=" in summary["infeasible"][t["trial_id"]]
    for t in state["trials"].values():
        if t["status"] != "infeasible":
            shape = f"{t['config']['model.arch']}@{t['config']['dataset.augmentation.input_size']}"
            assert profiles[shape]["latency_ms"] <= limit, "a trial trained an infeasible shape"
    assert summary["hypervolume"] > 0 and len(summary["hypervolume_by_round"]) == 1
    assert (files.plots / "pareto.png").is_file()
    status = automl.format_status(automl.experiment_status(tmp_path / "results"))
    assert "Pareto front of ACC_all:max, latency_ms:min" in status
