"""The AutoML runner's logic without Ray: algorithm mapping, budgets, failures, summaries, status, repair of
trial values, PBT helpers, CLI parsing, parent-model resolution of AutoML experiments."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from automl.algorithms import PBTExplore, initial_population, pbt_mutations, resolve_algorithm
from automl.cli import build_parser
from automl.cli import main as automl_main
from automl.ledger import Ledger, best_trial, progress_table
from automl.options import SearchOptions, options_from_args
from automl.plan import plan_search, preflight_data
from automl.ray_session import storage_location
from automl.report import build_summary, experiment_status, format_status, format_summary
from automl.trial import TrialFailure, failure_of, trial_values
from mae.engine.checkpoints import resolve_checkpoint
from mae.errors import CheckpointError, ConfigError, DataError
from mae.layout import ExperimentLayout as ExperimentFiles

# ------------------------------------------------------------------------------------ algorithms


@pytest.mark.parametrize(
    "algorithm, scheduler, expected",
    [
        (None, None, ("tpe", "asha")),
        ("random", None, ("random", "asha")),
        ("gp", "fifo", ("gp", "fifo")),
        ("cmaes", "hyperband", ("cmaes", "hyperband")),
        ("TPE", "ASHA", ("tpe", "asha")),
        ("pbt", None, ("pbt", "pbt")),
        (None, "pbt", ("pbt", "pbt")),
        # TAO's names mapped to real equivalents
        ("bayesian", None, ("gp", "fifo")),
        ("hyperband", None, ("random", "hyperband")),
        ("asha", None, ("random", "asha")),
        ("bohb", None, ("tpe", "hyperband")),
        ("bayesian", "asha", ("gp", "asha")),  # --scheduler wins over the mapped default
    ],
)
def test_algorithm_mapping(algorithm, scheduler, expected):
    a = resolve_algorithm(algorithm, scheduler)
    assert (a.searcher, a.scheduler) == expected
    if algorithm in ("bayesian", "hyperband", "asha", "bohb"):
        assert a.note and "TAO" in a.note


@pytest.mark.parametrize(
    "algorithm, scheduler, message",
    [
        ("tpee", None, "did you mean 'tpe'"),
        ("tpe", "asah", "did you mean 'asha'"),
        ("tpe", "pbt", "Ray's PBT takes no searcher"),
        ("pbt", "asha", "runs with the pbt scheduler"),
    ],
)
def test_algorithm_errors(algorithm, scheduler, message):
    with pytest.raises(ConfigError, match=message):
        resolve_algorithm(algorithm, scheduler)


def test_option_validation_lists_every_problem():
    with pytest.raises(ConfigError) as e:
        SearchOptions(
            max_trials=0, time_budget=-1, max_concurrent=0, extend=0, gpus_per_trial=0, reduction_factor=1
        )
    problems = e.value.problems
    assert len(problems) == 6
    for flag, rule in (
        ("--max-trials 0", "must be >= 1"),
        ("--time-budget -1", "must be > 0"),
        ("--max-concurrent 0", "must be >= 1"),
        ("--extend 0", "must be >= 1"),
        ("--gpus-per-trial 0", "must be > 0"),
        ("--reduction-factor 1", "must be > 1"),
    ):
        assert any(line == f"{flag}: {rule}" for line in problems), (flag, problems)
    with pytest.raises(ConfigError, match="--gpus-per-trial 1.5: a fraction below 1 or a whole number"):
        SearchOptions(gpus_per_trial=1.5)
    with pytest.raises(ConfigError, match="--mode needs --metric"):
        SearchOptions(mode="max")
    with pytest.raises(ConfigError, match="max_trails: not an option"):
        SearchOptions(max_trails=3)


def test_cmaes_without_its_package_says_how_to_install(monkeypatch):
    import builtins

    from automl.algorithms import make_sampler
    from mae.errors import MissingDependencyError

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "cmaes":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingDependencyError, match="pip install cmaes"):
        make_sampler("cmaes", 0, 10)
    for name in ("tpe", "random", "gp"):
        assert make_sampler(name, 0, 10) is not None


# ------------------------------------------------------------------------------------------ trials


@pytest.fixture
def space(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    plan = plan_search(None, [f"dataset.train_data_sources={data}", "num_epochs=4"])
    return plan.space


def test_trial_values_repairs_pbt_perturbations(space):
    rng = np.random.default_rng(0)
    good = space.sample(rng)
    assert trial_values(space, good, rng) == good
    bad = dict(good)
    bad["train.optim.lr"] = 1.0  # PBT's x1.2 past the range
    bad["train.optim.warmup_epochs"] = 9  # must stay below num_epochs=4
    bad["not.searched"] = 3
    fixed = trial_values(space, bad, rng)
    assert fixed["train.optim.lr"] == space["train.optim.lr"].high
    assert fixed["train.optim.warmup_epochs"] == 3
    assert "not.searched" not in fixed
    assert space.check(fixed) == []
    assert trial_values(space, {}, rng).keys() == good.keys()  # missing values are drawn


def test_pbt_helpers_make_valid_configurations(space):
    mutations = pbt_mutations(space)
    assert mutations["train.optim.lr_scheduler"] == ["cosine", "MultiStep"]
    assert callable(mutations["train.optim.lr"])
    explore = PBTExplore(space, seed=1)
    for _ in range(20):
        cfg = {name: (m() if callable(m) else m[0]) for name, m in mutations.items()}
        cfg["train.optim.lr"] *= 1.2
        assert space.check(explore(cfg)) == []
    population = initial_population(
        space, 4, seed=3, start=[{"train.optim.lr": 1e-3, "train.optim.weight_decay": 0.05}]
    )
    assert len(population) == 4 and all(space.check(p) == [] for p in population)
    assert population == initial_population(
        space, 4, seed=3, start=[{"train.optim.lr": 1e-3, "train.optim.weight_decay": 0.05}]
    )


@pytest.mark.parametrize(
    "text, kind",
    [
        ("Traceback ...\nautoml.trial.TrialFailure: [nan] loss became nan at epoch 1", "nan"),
        ("ray.exceptions.RayTaskError(TrialFailure): [error] RuntimeError: injected", "error"),
        ("...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate", "oom"),
        ("[no-metric] the trial finished without logging 'knn_acc'", "no-metric"),
        ("ValueError: something else", "error"),
        (None, "error"),
    ],
)
def test_failure_kinds(text, kind):
    assert failure_of(text)[0] == kind


def test_trial_failure_pickles_with_its_kind():
    import pickle

    e = pickle.loads(pickle.dumps(TrialFailure("nan", "loss became nan")))
    assert e.kind == "nan" and str(e) == "[nan] loss became nan"


# ----------------------------------------------------------------------------------- the ledger


def _trial(tid, status="RUNNING", config=None, error=None, last=None):
    return SimpleNamespace(
        trial_id=tid,
        status=status,
        config=config or {"train.optim.lr": 1e-3},
        last_result=last or {},
        get_error=lambda: error,
    )


def _ckpt(path):
    return SimpleNamespace(path=path, filesystem=SimpleNamespace(type_name="local"))


def make_ledger(tmp_path, **budget):
    files = ExperimentFiles(tmp_path)
    files.root.mkdir(parents=True)
    files.experiment.write_text(
        json.dumps({"budgets": {"round-1": budget}, "mode": "min", "metric": "train_loss"})
    )
    ledger = Ledger(
        files,
        "round-1",
        "train_loss",
        "min",
        max_epochs=3,
        gpus_per_trial=2.0,
        max_consecutive_failures=2,
        print_progress=False,
    )
    ledger.load()
    return ledger


def test_ledger_records_results_checkpoints_best_and_status(tmp_path):
    ledger = make_ledger(tmp_path)
    t = _trial("a")
    ledger.on_start(t)
    for it, loss in ((1, 2.0), (2, 1.5), (3, 1.7)):
        ledger.on_result(
            t, {"training_iteration": it, "train_loss": loss, "epoch": it - 1, "images_per_sec": 10.0}
        )
        t.last_result = {"training_iteration": it}
        ledger.on_checkpoint(t, _ckpt(f"/ck/{it}"))
    ledger.on_end(t, error=False)
    rec = json.loads((tmp_path / "automl" / "state.json").read_text())["trials"]["a"]
    assert rec["status"] == "completed" and rec["epochs"] == 3
    assert rec["best"] == {"value": 1.5, "iteration": 2, "epoch": 2, "checkpoint": "/ck/2"}
    assert rec["history"]["1"]["images_per_sec"] == 10.0 and rec["history"]["3"]["checkpoint"] == "/ck/3"

    s = _trial("b")
    ledger.on_start(s)
    ledger.on_result(s, {"training_iteration": 1, "train_loss": 3.0, "epoch": 0})
    ledger.on_end(s, error=False)
    assert ledger.trials["b"]["status"] == "stopped"  # ended before max_epochs: an early stop
    assert best_trial(ledger.state, "min")["trial_id"] == "a"


def test_ledger_stops_after_consecutive_trials_without_the_metric(tmp_path):
    ledger = make_ledger(tmp_path)
    ledger.on_end(
        _trial("x", error="...\n[no-metric] the trial finished without logging 'knn_acc'"), error=True
    )
    assert ledger.stop_reason is None
    ledger.on_end(_trial("y", error="TrialFailure: [nan] loss became nan"), error=True)
    assert "2 trials in a row ended without reporting train_loss" in ledger.stop_reason
    assert "no-metric" in ledger.stop_reason and "nan" in ledger.stop_reason
    assert ledger.trials["y"]["failure"] == {"kind": "nan", "reason": "loss became nan"}


def test_a_reported_metric_resets_the_failure_count(tmp_path):
    ledger = make_ledger(tmp_path)
    ledger.on_end(_trial("x", error="[error] boom"), error=True)
    ok = _trial("ok")
    ledger.on_result(ok, {"training_iteration": 1, "train_loss": 1.0})
    ledger.on_end(_trial("y", error="[error] boom"), error=True)
    assert ledger.stop_reason is None


def test_budget_accounting_time_and_gpu_hours(tmp_path, monkeypatch):
    import automl.ledger as R

    clock = [1000.0]
    monkeypatch.setattr(R.time, "monotonic", lambda: clock[0])
    ledger = make_ledger(tmp_path, time_budget_s=100.0, gpu_hours=0.05)
    running = [_trial("a"), _trial("b"), _trial("c", status="PAUSED")]
    ledger.on_step(running)  # starts the clock
    clock[0] += 30
    ledger.on_step(running)
    r = ledger.state["rounds"]["round-1"]
    assert r["elapsed_s"] == pytest.approx(30)
    assert r["gpu_hours"] == pytest.approx(
        30 * 2 * 2.0 / 3600
    )  # 2 running trials x 2 GPUs; paused ones hold none
    assert ledger.stop_reason is None
    clock[0] += 20  # 50 s x 4 GPUs = 0.0556 GPU-hours > 0.05
    ledger.on_step(running)
    assert "GPU-hour budget of 0.05 h is spent" in ledger.stop_reason
    ledger2 = make_ledger(tmp_path / "t", time_budget_s=100.0)
    ledger2.on_step([])
    clock[0] += 101
    ledger2.on_step([])
    assert ledger2.stop_reason == "the time budget of 100 s is spent"


def test_resumed_ledger_keeps_trials_and_the_budget_spent(tmp_path):
    ledger = make_ledger(tmp_path)
    t = _trial("a")
    ledger.on_result(t, {"training_iteration": 1, "train_loss": 1.0})
    ledger.state["rounds"]["round-1"]["elapsed_s"] = 12.0
    ledger.save()
    fresh = Ledger(
        ExperimentFiles(tmp_path),
        "round-1",
        "train_loss",
        "min",
        max_epochs=3,
        gpus_per_trial=0,
        max_consecutive_failures=3,
        print_progress=False,
    )
    fresh.load()
    assert "a" in fresh.trials and fresh.state["rounds"]["round-1"]["elapsed_s"] == 12.0


# --------------------------------------------------------------------------- summary and status


def _write_experiment(tmp_path, finished=True):
    files = ExperimentFiles(tmp_path)
    files.root.mkdir(parents=True, exist_ok=True)
    exp = {
        "metric": "train_loss",
        "mode": "min",
        "stage": "pretrain",
        "algorithm": {"searcher": "tpe", "scheduler": "asha", "requested": "tpe", "note": None},
        "space_names": ["train.optim.lr"],
        "rounds": [{"name": "round-1", "trials": 3, "status": "finished" if finished else "running"}],
        "mlflow_parent_run_id": "p",
        "storage": str(files.default_storage),
    }
    ck = files.default_storage / "round-1" / "t2" / "checkpoint_000001"
    ck.mkdir(parents=True)
    (ck / "checkpoint.ckpt").write_bytes(b"x")
    state = {
        "trials": {
            "t1": {
                "trial_id": "t1",
                "status": "stopped",
                "epochs": 1,
                "config": {"train.optim.lr": 1e-4},
                "best": {"value": 2.0, "epoch": 1, "iteration": 1, "checkpoint": "/x"},
                "last": {"train_loss": 2.0},
            },
            "t2": {
                "trial_id": "t2",
                "status": "completed",
                "epochs": 3,
                "config": {"train.optim.lr": 1e-3},
                "best": {"value": 1.0, "epoch": 2, "iteration": 2, "checkpoint": str(ck)},
                "last": {"train_loss": 1.1},
            },
            "t3": {
                "trial_id": "t3",
                "status": "failed",
                "epochs": 0,
                "config": {"train.optim.lr": 1e-2},
                "best": None,
                "last": {},
                "failure": {"kind": "nan", "reason": "loss became nan"},
            },
        },
        "rounds": {"round-1": {"elapsed_s": 40.0, "gpu_hours": 0.0}},
        "updated": "now",
    }
    files.experiment.write_text(json.dumps(exp))
    files.state.write_text(json.dumps(state))
    return files, exp, state


def test_summary_and_status(tmp_path):
    files, exp, state = _write_experiment(tmp_path)
    best = best_trial(state, "min")
    summary = build_summary(
        files,
        exp,
        state,
        best,
        {
            "checkpoint": "/b/best.ckpt",
            "onnx_file": "/b/m.onnx",
            "skipped": ["TensorRT engine skipped because no GPU"],
        },
    )
    assert summary["best"]["trial_id"] == "t2" and summary["best"]["value"] == 1.0
    assert summary["counts"] == {"stopped": 1, "completed": 1, "failed": 1} and summary["trial_epochs"] == 4
    assert summary["finished"] and summary["mlflow"]["ui"] == f"automl ui {tmp_path}"
    text = format_summary(summary)
    assert (
        "best trial t2: train_loss=1 at epoch 2" in text and "TensorRT engine skipped because no GPU" in text
    )
    status = experiment_status(tmp_path)
    assert status["best"]["trial_id"] == "t2" and status["finished"]
    out = format_status(status)
    assert "best so far: t2 train_loss=1" in out and "failed (nan)" in out and "lr" in out
    assert experiment_status(files.root)["experiment"] == str(files.root)  # the automl/ folder works too
    with pytest.raises(Exception, match="no AutoML experiment here"):
        experiment_status(tmp_path / "nothing")


def _knn_trial(tid: str, loss_by_epoch: list[float], knn_by_epoch: list[float]) -> dict:
    history = {
        str(i + 1): {"train_loss": loss, "knn_acc": knn, "epoch": i, "checkpoint": f"/{tid}/ck{i}"}
        for i, (loss, knn) in enumerate(zip(loss_by_epoch, knn_by_epoch, strict=True))
    }
    best_it = min(history, key=lambda k: history[k]["train_loss"])
    return {
        "trial_id": tid,
        "status": "completed",
        "epochs": len(history),
        "history": history,
        "best": {"value": history[best_it]["train_loss"], "epoch": int(best_it), "iteration": int(best_it)},
    }


def test_the_summary_flags_a_trial_whose_encoder_is_likely_better(tmp_path):
    from automl.report import KNN_MARGIN, encoder_check

    selected = _knn_trial("sel", [1.0, 0.7, 0.6], [0.50, 0.45, 0.40])
    rival = _knn_trial("riv", [1.2, 0.9, 0.8], [0.50, 0.52, 0.47])
    early = _knn_trial(
        "early", [2.0], [0.90]
    )  # kNN favours barely trained encoders: other lengths never count
    close = _knn_trial("close", [1.1, 0.8, 0.7], [0.5, 0.5, 0.40 + KNN_MARGIN / 2])
    state = {"trials": {t["trial_id"]: t for t in (selected, rival, early, close)}}
    best = best_trial(state, "min")
    assert best["trial_id"] == "sel"
    flag = encoder_check(state, best, "train_loss")
    assert flag["trial_id"] == "riv" and flag["epoch"] == 3 and flag["checkpoint"] == "/riv/ck2"
    assert flag["knn_acc"] == pytest.approx(0.47) and flag["selected_knn_acc"] == pytest.approx(0.40)
    assert flag["train_loss"] == pytest.approx(0.8)
    # within the margin, searching knn_acc itself, or without knn_acc: nothing to say
    state_close = {"trials": {t["trial_id"]: t for t in (selected, early, close)}}
    assert encoder_check(state_close, best, "train_loss") is None
    assert encoder_check(state, best, "knn_acc") is None
    # the summary carries it and the printed summary warns
    files, exp, _ = _write_experiment(tmp_path)
    state = {"trials": {t["trial_id"]: t for t in (selected, rival)}}
    summary = build_summary(files, exp, state, best_trial(state, "min"), None)
    assert summary["encoder_check"]["trial_id"] == "riv"
    assert "automl: warning: trial riv has knn_acc" in format_summary(summary)
    for t in state["trials"].values():
        for h in t["history"].values():
            h.pop("knn_acc")
    assert encoder_check(state, best, "train_loss") is None


def test_status_cli(tmp_path, capsys):
    _write_experiment(tmp_path, finished=False)
    assert automl_main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "round-1 running (3 trials)" in out and "best so far: t2" in out
    assert automl_main(["status", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["best"]["trial_id"] == "t2" and data["finished"] is False
    assert automl_main(["status", str(tmp_path / "nope")]) == 1


def test_progress_table_is_compact():
    state = {
        "trials": {
            f"t{i}": {
                "trial_id": f"t{i}",
                "status": "running",
                "epochs": i,
                "config": {"train.optim.lr": 10.0**-i},
                "last": {"train_loss": 1.0 / (i + 1)},
                "best": {"value": 1.0 / (i + 1)},
            }
            for i in range(25)
        }
    }
    text = progress_table(state, "train_loss", "min", ["train.optim.lr"], limit=5)
    lines = text.splitlines()
    assert lines[0].startswith("== 25 trials: 25 running; best train_loss=0.04 (t24)")
    assert lines[1].split() == ["trial", "status", "ep", "train_loss", "best", "lr"]
    assert len(lines) == 2 + 5 + 1 and "20 earlier trials" in lines[-1]


# ---------------------------------------------------------------------------- parent resolution


def test_an_automl_experiment_stands_for_its_best_checkpoint(tmp_path):
    files, _, _ = _write_experiment(tmp_path)
    with pytest.raises(CheckpointError, match="no best model yet"):
        resolve_checkpoint(tmp_path, key="export.checkpoint")
    (files.best).mkdir()
    (files.best / "best.ckpt").write_bytes(b"y")
    assert resolve_checkpoint(tmp_path, key="export.checkpoint") == files.best / "best.ckpt"
    assert resolve_checkpoint(files.root, key="export.checkpoint") == files.best / "best.ckpt"
    # a trial id inside it: that trial's best epoch
    t2 = resolve_checkpoint(tmp_path / "t2", key="export.checkpoint")
    assert t2.name == "checkpoint.ckpt" and "t2" in str(t2)
    assert resolve_checkpoint(files.root / "t2", key="k") == t2
    assert resolve_checkpoint(files.root / "trials" / "t2", key="k") == t2
    with pytest.raises(CheckpointError, match="has no trial 'zz' .trials: t1, t2, t3"):
        resolve_checkpoint(tmp_path / "zz", key="k")
    with pytest.raises(CheckpointError, match="no checkpoint on this machine"):
        resolve_checkpoint(tmp_path / "t3", key="k")


# ------------------------------------------------------------------------------------------ CLI


def test_cli_options_map_to_search_options():
    args = build_parser().parse_args(
        [
            "run",
            "-e",
            "s.yaml",
            "--algorithm",
            "bohb",
            "--scheduler",
            "fifo",
            "--max-trials",
            "7",
            "--time-budget",
            "60",
            "--gpu-hours",
            "1.5",
            "--max-concurrent",
            "2",
            "--metric",
            "val_loss",
            "--mode",
            "min",
            "--address",
            "auto",
            "--param",
            "train.optim.lr=loguniform(1e-5,1e-3)",
            "--param",
            "train.optim.weight_decay=off",
            "--search-space",
            "f.yaml",
            "--seed",
            "3",
            "--extend",
            "2",
            "--storage",
            "s3://b/p",
            "--cpus-per-trial",
            "0.5",
            "--gpus-per-trial",
            "0.25",
            "--policy",
            "plain training",
            "--no-deploy",
            "--trial-callback",
            "m:f",
            "num_epochs=3",
        ]
    )
    o = options_from_args(args)
    assert (o.algorithm, o.scheduler, o.max_trials, o.time_budget, o.gpu_hours, o.max_concurrent) == (
        "bohb",
        "fifo",
        7,
        60.0,
        1.5,
        2,
    )
    assert (o.metric, o.mode, o.address, o.seed, o.extend, o.storage) == (
        "val_loss",
        "min",
        "auto",
        3,
        2,
        "s3://b/p",
    )
    assert o.params == ("train.optim.lr=loguniform(1e-5,1e-3)", "train.optim.weight_decay=off")
    assert (o.cpus_per_trial, o.gpus_per_trial, o.policy, o.deploy, o.trial_callbacks) == (
        0.5,
        0.25,
        "plain training",
        False,
        ("m:f",),
    )
    assert args.overrides == ["num_epochs=3"] and args.spec == "s.yaml"


def test_cli_help_and_usage_errors(capsys, write_spec, tmp_path):
    assert automl_main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in (
        "--algorithm",
        "--scheduler",
        "--max-trials",
        "--time-budget",
        "--gpu-hours",
        "--max-concurrent",
        "--metric",
        "--mode",
        "--address",
        "--param",
        "--search-space",
        "--seed",
        "--extend",
        "bohb",
    ):
        assert flag in out
    assert automl_main(["ui", "--help"]) == 0 and "127.0.0.1" in capsys.readouterr().out
    data = tmp_path / "imgs"
    data.mkdir()
    spec = write_spec({"dataset": {"train_data_sources": str(data)}, "results_dir": str(tmp_path / "r")})
    assert automl_main(["run", "-e", str(spec), "--mode", "max"]) == 2
    assert "--mode needs --metric" in capsys.readouterr().err
    assert automl_main(["run", "-e", str(spec), "--algorithm", "bayes"]) == 2
    assert "did you mean 'bayesian'" in capsys.readouterr().err
    # an empty data folder fails on the driver, before Ray starts
    assert automl_main(["run", "-e", str(spec)]) == 1
    assert "the folder holds no images" in capsys.readouterr().err
    assert not (tmp_path / "r" / "automl").exists()


def test_preflight_checks_local_sources(tmp_path):
    from mae.spec import load_spec

    (tmp_path / "a" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "a" / "deep" / "er" / "x.png").write_bytes(b"")
    preflight_data(load_spec(None, [f"dataset.train_data_sources={tmp_path / 'a'}"]))
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        preflight_data(
            load_spec(
                None, [f"dataset.train_data_sources={tmp_path / 'b'}", "dataset.val_data_sources=s3://x/y"]
            )
        )


def test_s3_storage_reads_the_endpoint_and_never_pickles_credentials(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9999")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRETVALUE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "supersecretkey")
    path, fs, uri = storage_location("s3://bucket/prefix/", ExperimentFiles(tmp_path))
    assert (path, uri, fs.type_name) == ("bucket/prefix", "s3://bucket/prefix", "s3")
    blob = pickle.dumps(fs)
    assert b"supersecretkey" not in blob and b"AKIDSECRETVALUE" not in blob and b"127.0.0.1:9999" in blob
    local, fs2, _ = storage_location(None, ExperimentFiles(tmp_path))
    assert fs2 is None and Path(local) == tmp_path / "automl" / "ray"
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        storage_location("gs://x", ExperimentFiles(tmp_path))


def test_plots_and_importances(tmp_path, space):
    from automl.plots import parameter_importances, write_plots

    rng = np.random.default_rng(0)
    trials = {}
    for i in range(8):
        cfg = space.sample(rng)
        trials[str(i)] = {
            "trial_id": str(i),
            "config": cfg,
            "best": {"value": float(np.log10(cfg["train.optim.lr"])) ** 2},
        }
    state = {"trials": trials}
    imp = parameter_importances(state, space, "train_loss", "min")
    assert set(imp) <= set(space.names) and max(imp, key=imp.get) == "train.optim.lr"
    written = write_plots(ExperimentFiles(tmp_path), state, space, "train_loss", "min")
    assert [Path(p).name for p in written] == ["optimization_history.png", "param_importances.png"]
    assert all(Path(p).stat().st_size > 1000 for p in written)


@pytest.mark.slow
def test_resuming_with_a_mutated_learning_rate_trains_with_the_new_one(tmp_path, digits_small):
    """PBT's exploit: restore another trial's checkpoint under a mutated lr; the optimizer state restored from
    the checkpoint must not bring the old lr back (mae.engine.modules re-applies the spec's settings)."""
    import pytorch_lightning as pl

    from mae.engine.trainer import run_training
    from mae.spec import load_spec
    from tests.ray_fixtures import tiny_overrides

    seen: dict = {}

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            opt = trainer.optimizers[0]
            seen.setdefault(
                trainer.current_epoch,
                ([g["lr"] for g in opt.param_groups], [g["weight_decay"] for g in opt.param_groups]),
            )

    base = tiny_overrides(
        tmp_path / "a", digits_small["train"], "train.optim.lr_scheduler=MultiStep", epochs=1
    )
    first = run_training(load_spec(None, [*base, "train.optim.lr=1e-3"]), mlflow=False)
    resumed = load_spec(
        None,
        [
            *tiny_overrides(
                tmp_path / "b", digits_small["train"], "train.optim.lr_scheduler=MultiStep", epochs=2
            ),
            "train.optim.lr=4e-4",
            "train.optim.weight_decay=0.2",
            f"train.resume_training_checkpoint_path={first.last_checkpoint}",
        ],
    )
    run_training(resumed, mlflow=False, callbacks=[Spy()])
    lrs, wds = seen[1]
    assert lrs and all(lr == pytest.approx(4e-4) for lr in lrs)  # constant schedule: the new peak lr
    assert max(wds) == pytest.approx(0.2)


def test_ray_cluster_yaml_is_a_valid_cluster_launcher_config():
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((Path(__file__).resolve().parent.parent / "ray_cluster.yaml").read_text())
    cfg = prepare_config(raw)
    validate_config(cfg)  # Ray's own schema check
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert len(gpu_types) >= 2 and all(t["max_workers"] >= 1 for t in gpu_types)
    setup = "\n".join(cfg["setup_commands"])
    assert "pip install -e" in setup and "mae-automl" in setup
    assert "--dashboard-host=127.0.0.1" in "\n".join(cfg["head_start_ray_commands"])


def test_demo_spec_searches_the_micro_vit_within_its_budget():
    from automl.demo import DEMO_SPEC, SEARCH
    from mae.spec import build_raw

    raw, missing = build_raw(DEMO_SPEC)
    assert raw["model"]["arch"] == "vit_micro_patch4" and raw["dataset"]["augmentation"]["input_size"] == 32
    assert raw["train"]["num_epochs"] <= 6 and missing == {
        "dataset.train_data_sources",
        "dataset.val_data_sources",
        "dataset.test_data_sources",
    }
    args = build_parser().parse_args(["run", "-e", str(DEMO_SPEC), *SEARCH])
    o = options_from_args(args)
    assert o.max_trials <= 12 and o.time_budget and o.time_budget <= 900 and o.max_concurrent == 2


@pytest.mark.slow
def test_policy_off_trains_the_spec_directly(tmp_path, digits_small, write_spec, capsys):
    from tests.ray_fixtures import tiny_overrides

    spec = write_spec({"model_name": "tiny"})
    out = tmp_path / "direct"
    rc = automl_main(
        [
            "run",
            "-e",
            str(spec),
            "--policy",
            "plain training",
            *tiny_overrides(out, digits_small["train"], epochs=1),
        ]
    )
    assert rc == 0
    assert "train: best train_loss=" in capsys.readouterr().out
    assert (out / "train" / "checkpoints" / "best.ckpt").is_file()
    assert not (out / "automl").exists()  # no search, no Ray


def test_non_finite_metrics_are_recorded_as_null(tmp_path):
    ledger = make_ledger(tmp_path)
    t = _trial("a")
    ledger.on_result(
        t, {"training_iteration": 1, "train_loss": 1.0, "val_loss": float("nan"), "knn_acc": float("inf")}
    )
    ledger.save()
    rec = json.loads((tmp_path / "automl" / "state.json").read_text())["trials"]["a"]["history"]["1"]
    assert rec["train_loss"] == 1.0 and rec["val_loss"] is None and rec["knn_acc"] is None
