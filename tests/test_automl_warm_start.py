"""`automl run --warm-start DIR ...`: earlier experiments' finished trials seed a new search's Optuna study."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from automl.cli import main as automl_main
from automl.plan import define_by_run, plan_search
from automl.space import optuna_params
from automl.space_file import build_space
from automl.warm_start import read_warm_start, seed_study
from mae.errors import ConfigError


def _experiment(root, trials, *, stage="pretrain", metric="train_loss", mode="min"):
    exp = root / "automl"
    exp.mkdir(parents=True)
    (exp / "experiment.json").write_text(
        json.dumps({"stage": stage, "metric": metric, "mode": mode, "rounds": []})
    )
    state = {"trials": {}}
    for i, (config, value) in enumerate(trials):
        best = None if value is None else {"value": value, "epoch": 1}
        state["trials"][f"t{i}"] = {
            "trial_id": f"t{i}",
            "config": config,
            "best": best,
            "status": "completed",
        }
    (exp / "state.json").write_text(json.dumps(state))
    return root


@pytest.fixture
def space():
    return build_space(stage="pretrain").bind({"train.num_epochs": 10})


def test_optuna_params_replay_every_domain_kind(space):
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = space.sample(rng)
        params, dists = optuna_params(space, values)
        trial = optuna.trial.FixedTrial(params)  # answers each suggest with the recorded latent value
        assert define_by_run(space)(trial) == values
        assert set(params) == set(dists)


def test_compatible_and_narrower_spaces(tmp_path, space):
    lr_name = "train.optim.lr"
    sample = space.sample(np.random.default_rng(1))
    inside = dict(sample, **{lr_name: 1e-4, "not.searched.here": 3})
    outside = dict(sample, **{lr_name: 5e-2})  # above the curated ceiling
    old = _experiment(tmp_path / "old", [(inside, 0.7), (outside, 0.6), (sample, None)])
    warm = read_warm_start([str(old)], space, stage="pretrain", metric="train_loss", mode="min")
    assert len(warm.trials) == 1 and warm.left_out == 1 and warm.experiments == 1
    params, _, value = warm.trials[0]
    assert value == 0.7 and "not.searched.here" not in params
    assert warm.notice().startswith(
        "--warm-start: 1 finished trials of 1 earlier experiment(s) used (1 left out"
    )

    narrower = build_space(stage="pretrain", params=[f"{lr_name}=loguniform(5e-5, 2e-4)"]).bind(
        {"train.num_epochs": 10}
    )
    assert (
        len(read_warm_start([str(old)], narrower, stage="pretrain", metric="train_loss", mode="min").trials)
        == 1
    )
    narrowest = build_space(stage="pretrain", params=[f"{lr_name}=loguniform(2e-4, 1e-3)"]).bind(
        {"train.num_epochs": 10}
    )
    warm = read_warm_start([str(old)], narrowest, stage="pretrain", metric="train_loss", mode="min")
    assert (len(warm.trials), warm.left_out) == (0, 2)


def test_seeded_study_holds_the_trials(tmp_path, space):
    configs = [space.sample(np.random.default_rng(i)) for i in range(5)]
    old = _experiment(tmp_path / "old", [(c, 1.0 - 0.1 * i) for i, c in enumerate(configs)])
    warm = read_warm_start([str(old)], space, stage="pretrain", metric="train_loss", mode="min")
    journal = tmp_path / "new" / "automl" / "optuna.journal"
    seed_study(journal, "min", warm.trials)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="automl", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.value for t in study.trials] == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6])
    assert study.best_trial.value == pytest.approx(0.6)
    # a new trial of the searcher sees them: the define-by-run function works against this study
    trial = study.ask()
    assert set(define_by_run(space)(trial)) <= set(space.names)


def test_other_stage_metric_and_missing_folders_are_refused(tmp_path, space):
    other_stage = _experiment(tmp_path / "ft", [], stage="finetune", metric="ACC_all", mode="max")
    other_metric = _experiment(tmp_path / "kn", [], metric="knn_acc", mode="max")
    with pytest.raises(ConfigError) as e:
        read_warm_start(
            [str(other_stage), str(other_metric), str(tmp_path / "nope"), str(tmp_path)],
            space,
            stage="pretrain",
            metric="train_loss",
            mode="min",
        )
    lines = e.value.problems
    assert len(lines) == 4
    assert "it searched train.stage=finetune, this search pretrain" in lines[0]
    assert "it optimized knn_acc (max), this search train_loss (min)" in lines[1]
    assert lines[2].endswith("no such folder")
    assert "no AutoML experiment here" in lines[3]


def test_cli_missing_folder_is_one_line_before_anything_starts(tmp_path, capsys, write_spec):
    data = tmp_path / "img"
    (data / "a").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(data / "a" / "x.png")
    spec = write_spec({"results_dir": str(tmp_path / "r"), "dataset": {"train_data_sources": str(data)}})
    rc = automl_main(
        ["run", "-e", str(spec), "--warm-start", str(tmp_path / "gone"), str(tmp_path / "gone2")]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert rc == 2
    assert err == [
        f"automl: error: --warm-start {tmp_path / 'gone'}: no such folder",
        f"automl: error: --warm-start {tmp_path / 'gone2'}: no such folder",
    ]
    assert not (tmp_path / "r" / "automl").exists()
    assert plan_search(str(spec)).stage == "pretrain"
