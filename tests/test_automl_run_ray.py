"""AutoML on Ray for real: tiny MAE trials (ViT micro, 32 px, real digits) on a simulated two-node cluster.

Each test has a hard timeout: a Ray experiment that hangs (a stopped multi-worker trial whose resources are
never released, a bracket that never fills) fails instead of blocking the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automl.cli import main as automl_main
from tests import ray_fixtures, s3server
from tests.ray_fixtures import tiny_overrides, write_fault_plan

s3_server = s3server.s3_server
s3_env = s3server.s3_env
ray_cluster = ray_fixtures.ray_cluster

pytestmark = pytest.mark.slow


def state_of(results_dir: Path) -> dict:
    return json.loads((results_dir / "automl" / "state.json").read_text())


def summary_of(results_dir: Path) -> dict:
    return json.loads((results_dir / "automl" / "summary.json").read_text())


def spec_file(tmp_path: Path) -> str:
    """A spec file of its own for each test (the tiny settings come as overrides, as users pass them)."""
    path = tmp_path / "spec.yaml"
    path.write_text("model_name: tiny\ntrain:\n  stage: pretrain\n")
    return str(path)


def run_cli(argv: list[str]) -> int:
    out = next((a.split("=", 1)[1] for a in argv if a.startswith("results_dir=")), None)
    return automl_main(["run", "-e", spec_file(Path(out).parent), *argv])


def mlflow_runs(results_dir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    return client, client.search_runs([exp.experiment_id], max_results=100)


@pytest.mark.timeout(600)
def test_search_end_to_end_asha_mlflow_onnx_and_ui(ray_cluster, digits_small, tmp_path, capsys):
    import requests

    from automl.ui import start_ui, wait_for_ui
    from mae.engine.checkpoints import resolve_checkpoint

    out = tmp_path / "exp"
    argv = [
        "--max-trials",
        "4",
        "--max-concurrent",
        "2",
        "--reduction-factor",
        "2",
        "--seed",
        "1",
        *tiny_overrides(out, digits_small["train"], epochs=2),
    ]
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "== 4 trials" in printed  # the progress table
    assert "automl: best trial" in printed and f"automl ui {out}" in printed
    assert "TensorRT engine skipped because" in printed  # no TensorRT/GPU here, said in one line

    summary = summary_of(out)
    assert summary["trials_total"] == 4 and summary["finished"]
    assert summary["algorithm"]["searcher"] == "tpe" and summary["algorithm"]["scheduler"] == "asha"
    assert sum(summary["counts"].values()) == 4 and set(summary["counts"]) <= {"completed", "stopped"}
    best = summary["best"]
    values = [t["best"]["value"] for t in summary["trials"] if t["best"]]
    assert best["value"] == min(values)
    best_dir = out / "automl" / "best"
    onnx = best_dir / "tiny.onnx"
    assert onnx.is_file() and best["onnx_file"] == str(onnx)
    assert (best_dir / "best.ckpt").is_file() and (best_dir / "spec.yaml").is_file()
    assert summary["deploy"]["onnx"]["max_abs_diff"] <= summary["deploy"]["onnx"]["tolerance"]
    assert any("TensorRT engine skipped" in s for s in summary["deploy"]["skipped"])
    assert (out / "automl" / "plots" / "optimization_history.png").is_file()

    # the exported checkpoint is the best trial's best epoch
    import torch

    from mae.engine.checkpoints import load_checkpoint_file

    ckpt = load_checkpoint_file(best_dir / "best.ckpt")
    assert ckpt["epoch"] + 1 == best["epoch"]
    spec = ckpt["hyper_parameters"]["mae"]["spec"]
    assert spec["train"]["optim"]["lr"] == pytest.approx(best["config"]["train.optim.lr"])
    assert torch.is_tensor(next(iter(ckpt["state_dict"].values())))

    # parent-model resolution: the experiment folder, or a trial id in it
    assert resolve_checkpoint(out, key="export.checkpoint") == best_dir / "best.ckpt"
    other = next(t for t in summary["trials"] if t["trial_id"] != best["trial_id"])
    assert resolve_checkpoint(out / other["trial_id"], key="export.checkpoint").name == "checkpoint.ckpt"

    # MLflow: a parent run and a child run per trial with per-epoch metrics
    client, runs = mlflow_runs(out)
    parent = [r for r in runs if r.data.tags.get("automl") == "experiment"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(children) == 4
    p = parent[0]
    assert p.info.status == "FINISHED" and p.data.params["searcher"] == "tpe"
    assert "space.train.optim.lr" in p.data.params and p.data.metrics["best_train_loss"] == pytest.approx(
        best["value"]
    )
    assert p.data.tags["version.ray"] and p.data.tags["data_fingerprint"] and "git_revision" in p.data.tags
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["status"] in ("completed", "stopped")
        assert (
            "searched.train.optim.lr" in c.data.params and c.data.params["model.arch"] == "vit_micro_patch4"
        )
        assert c.data.tags["checkpoint"] and c.data.tags["version.torch"] and c.data.tags["data_fingerprint"]
        history = client.get_metric_history(c.info.run_id, "train_loss")
        assert len(history) == int(c.data.tags["epochs"]) >= 1
        assert "images_per_sec" in c.data.metrics and "peak_host_memory_gb" in c.data.metrics
    artifacts = [a.path for a in client.list_artifacts(p.info.run_id, "plots")]
    assert "plots/optimization_history.png" in artifacts

    # automl status, then automl ui answering on 127.0.0.1 with the runs in its REST API
    assert automl_main(["status", str(out)]) == 0
    assert f"best so far: {best['trial_id']}" in capsys.readouterr().out
    ui = start_ui(out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc, url = ui.proc, ui.url
    try:
        assert url.startswith("http://127.0.0.1:")
        assert wait_for_ui(url, proc, timeout=90), "mlflow ui did not answer"
        r = requests.post(
            f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [p.info.experiment_id]}, timeout=10
        )
        r.raise_for_status()
        names = {run["info"]["run_name"] for run in r.json()["runs"]}
        assert "automl" in names and {f"trial {c.data.tags['trial_id']}" for c in children} <= names
    finally:
        ui.stop()  # the whole process group: SIGTERM, then SIGKILL after a grace period


@pytest.mark.timeout(240)
def test_failed_trials_are_recorded_and_the_search_completes(ray_cluster, digits_small, tmp_path, capsys):
    out = tmp_path / "exp"
    write_fault_plan(out, "raise", "nan")
    argv = [
        "--max-trials",
        "4",
        "--max-concurrent",
        "2",
        "--scheduler",
        "fifo",
        "--max-retries",
        "1",
        "--trial-callback",
        "tests.ray_fixtures:fault_plan",
        *tiny_overrides(out, digits_small["train"], epochs=2),
    ]
    assert run_cli(argv) == 0
    summary = summary_of(out)
    by_kind = {t["failure"]["kind"]: t for t in summary["trials"] if t["status"] == "failed"}
    assert set(by_kind) == {"error", "nan"}, summary["counts"]
    assert "injected failure" in by_kind["error"]["failure"]["reason"]
    assert by_kind["error"]["retries"] == 1  # retried once (bounded), failed again
    assert "loss became nan" in by_kind["nan"]["failure"]["reason"]
    assert summary["counts"].get("completed") == 2 and summary["best"] is not None
    assert (out / "automl" / "best" / "tiny.onnx").is_file()
    nan_dir = out / "automl" / "trials" / by_kind["nan"]["trial_id"]
    assert (
        json.loads((nan_dir / "failure.json").read_text())["kind"] == "nan"
    )  # so a retry does not train again
    _, runs = mlflow_runs(out)
    failed = {r.data.tags["trial_id"]: r for r in runs if r.info.status == "FAILED"}
    assert set(failed) == {t["trial_id"] for t in by_kind.values()}
    assert {r.data.tags["failure_kind"] for r in failed.values()} == {"error", "nan"}


@pytest.mark.timeout(180)
def test_trials_without_the_metric_stop_the_experiment(ray_cluster, digits_small, tmp_path, capsys):
    out = tmp_path / "exp"
    argv = [
        "--max-trials",
        "6",
        "--max-concurrent",
        "1",
        "--metric",
        "knn_acc",
        "--max-consecutive-failures",
        "2",
        f"dataset.val_data_sources={digits_small['val']}",
        "train.validation_interval=5",
        *tiny_overrides(out, digits_small["train"], epochs=1),
    ]
    assert run_cli(argv) == 1
    printed = capsys.readouterr().out
    assert "stopped early: 2 trials in a row ended without reporting knn_acc" in printed
    summary = summary_of(out)
    assert summary["trials_total"] < 6 and summary["best"] is None
    assert all(t["failure"]["kind"] == "no-metric" for t in summary["trials"] if t["status"] == "failed")
    # --gpu-hours on a CPU-only cluster is refused with a pointer to --time-budget
    assert run_cli(["--gpu-hours", "1", *tiny_overrides(tmp_path / "g", digits_small["train"])]) == 2
    err = capsys.readouterr().err
    assert "this Ray cluster has no GPU" in err and "--time-budget SECONDS" in err


@pytest.mark.timeout(200)
def test_two_node_cluster_with_s3_storage(ray_cluster, s3_env, digits_small, tmp_path):
    bucket = s3_env.create_bucket()
    out = tmp_path / "exp"
    argv = [
        "--max-trials",
        "4",
        "--max-concurrent",
        "2",
        "--scheduler",
        "fifo",
        "--storage",
        f"s3://{bucket}/automl",
        *tiny_overrides(out, digits_small["train"], epochs=1),
    ]
    assert run_cli(argv) == 0
    state = state_of(out)
    nodes = {n for t in state["trials"].values() for n in t["nodes"]}
    assert len(nodes) == 2, "trials ran on one node only"
    assert all(
        t["best"]["checkpoint"].startswith(f"s3://{bucket}/automl/round-1/") for t in state["trials"].values()
    )
    assert not (out / "automl" / "ray").exists()  # nothing of Tune's experiment on the local disk
    keys = [o["Key"] for o in s3_env.admin.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.endswith("checkpoint.ckpt") for k in keys) and any(k.endswith("tuner.pkl") for k in keys)
    summary = summary_of(out)
    assert summary["storage"] == f"s3://{bucket}/automl"
    assert (out / "automl" / "best" / "best.ckpt").is_file() and (
        out / "automl" / "best" / "tiny.onnx"
    ).is_file()


@pytest.mark.timeout(300)
def test_multi_worker_trials_under_asha_release_their_resources(ray_cluster, digits_small, tmp_path):
    import ray

    out = tmp_path / "exp"
    argv = [
        "--max-trials",
        "4",
        "--max-concurrent",
        "2",
        "--reduction-factor",
        "2",
        "--cpus-per-trial",
        "0.5",
        "--algorithm",
        "random",
        "--seed",
        "3",
        "--param",
        "train.optim.lr=loguniform(1e-6, 3e-3)",
        "train.num_gpus=2",
        "batch_size=10",
        *tiny_overrides(out, digits_small["train"], epochs=3),
    ]
    t0 = time.monotonic()
    assert run_cli(argv) == 0
    summary = summary_of(out)
    assert summary["trials_total"] == 4 and summary["finished"]
    assert summary["counts"].get("stopped", 0) >= 1, summary["counts"]  # ASHA stopped at least one trial
    trial_dir = out / "automl" / "trials" / summary["best"]["trial_id"]
    assert (trial_dir / "rank-1" / "status.json").is_file()  # the second worker trained too
    assert (out / "automl" / "best" / "tiny.onnx").is_file()
    # every worker's resources are back: nothing of the trials is left reserved
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) == pytest.approx(2)
    assert time.monotonic() - t0 < 280


@pytest.mark.timeout(300)
def test_hyperband_and_pbt_pause_and_resume_trials_from_checkpoints(ray_cluster, digits_small, tmp_path):
    hb = tmp_path / "hb"
    # HyperBand with 3 epochs and eta 3: trials 1-2 form a full-length bracket, trials 3-5 one with a rung at
    # epoch 1 that keeps one of three. With two slots, trials 3 and 4 reach the rung first and pause (their
    # slots go to the next trial); once trial 5 gets there the bracket keeps the best, which resumes from its
    # checkpoint. Random search with seed 1 draws the largest learning rate (the best at epoch 1) for trial 4.
    argv = [
        "--max-trials",
        "5",
        "--scheduler",
        "hyperband",
        "--algorithm",
        "random",
        "--seed",
        "1",
        *tiny_overrides(hb, digits_small["train"], epochs=3),
    ]
    assert run_cli(argv) == 0
    _check_pause_resume(hb, 5)

    pbt = tmp_path / "pbt"
    argv = [
        "--max-trials",
        "4",
        "--algorithm",
        "pbt",
        "--perturbation-interval",
        "1",
        "--seed",
        "2",
        *tiny_overrides(pbt, digits_small["train"], epochs=3),
    ]
    assert run_cli(argv) == 0
    summary = _check_pause_resume(pbt, 4)
    assert summary["algorithm"]["scheduler"] == "pbt"


def _check_pause_resume(out: Path, n: int) -> dict:
    summary = summary_of(out)
    assert summary["trials_total"] == n and summary["finished"] and summary["best"]
    state = state_of(out)
    paused = [t for t in state["trials"].values() if t.get("pauses", 0) >= 1]
    assert paused, "no trial was paused"
    resumed = 0
    for t in paused:
        lines = [
            json.loads(x)
            for x in (out / "automl" / "trials" / t["trial_id"] / "status.json").read_text().splitlines()
        ]
        for i, line in enumerate(lines):
            if line["status"] == "RESUMED":
                resumed += 1
                # training continues after the checkpoint's epoch instead of starting over
                after = [x for x in lines[i + 1 :] if x["status"] == "RUNNING"]
                if after:
                    assert after[0]["epoch"] == line["epoch"] + 1
        if t["status"] == "completed":
            assert sorted(map(int, t["history"])) == list(range(1, t["epochs"] + 1))
    assert resumed >= 1, "no paused trial resumed from its checkpoint"
    assert (out / "automl" / "best" / "tiny.onnx").is_file()
    return summary


@pytest.mark.timeout(900)  # three CLI runs (inner limits 200 + 300 + 300 s); 420 s timed out under load
def test_sigkill_of_the_driver_then_resume_then_extend(digits_small, tmp_path):
    """The CLI in a subprocess on its own local Ray (the default): killed with SIGKILL once a trial finished,
    rerun with the same command (finished trials kept, the experiment completes), then --extend 2."""
    out = tmp_path / "exp"
    cmd = [
        str(Path(sys.executable).parent / "automl"),
        "run",
        "-e",
        spec_file(tmp_path),
        "--max-trials",
        "4",
        "--max-concurrent",
        "1",
        "--scheduler",
        "fifo",
        "--seed",
        "5",
        *tiny_overrides(out, digits_small["train"], epochs=3),
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = (tmp_path / "run1.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    state_file = out / "automl" / "state.json"
    finished_before: dict = {}
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and proc.poll() is None:
            if state_file.is_file():
                try:
                    trials = json.loads(state_file.read_text())["trials"]
                except ValueError:
                    trials = {}
                done = {k: v for k, v in trials.items() if v["status"] == "completed"}
                running = [v for v in trials.values() if v["status"] == "running" and v["epochs"] >= 1]
                if done and running:
                    finished_before = done
                    break
            time.sleep(0.5)
        assert finished_before, f"no trial finished in time:\n{(tmp_path / 'run1.log').read_text()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)  # the driver only; its Ray processes are left behind, as in a crash
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    exp = json.loads((out / "automl" / "experiment.json").read_text())
    assert exp["rounds"][0]["status"] == "running"

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resuming round-1" in rerun.stdout
    summary = summary_of(out)
    assert summary["finished"] and summary["trials_total"] == 4
    after = {t["trial_id"]: t for t in summary["trials"]}
    for tid, t in finished_before.items():  # finished trials are kept as they were, not run again
        assert after[tid]["status"] == "completed" and after[tid]["best"] == t["best"]
    assert all(t["status"] == "completed" for t in after.values())
    assert (out / "automl" / "best" / "tiny.onnx").is_file()

    extend = subprocess.run([*cmd, "--extend", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert extend.returncode == 0, extend.stdout[-3000:] + extend.stderr[-3000:]
    summary = summary_of(out)
    assert summary["trials_total"] == 6 and [r["name"] for r in summary["rounds"]] == ["round-1", "round-2"]
    new = [t for t in summary["trials"] if t["round"] == "round-2"]
    assert len(new) == 2 and all(t["status"] == "completed" for t in new)
    # warm start: the round-2 searcher saw the 4 earlier trials (one Optuna study holds all 6)
    import optuna

    study = optuna.load_study(
        study_name="automl",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(out / "automl" / "optuna.journal"))
        ),
    )
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 6
