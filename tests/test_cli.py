"""The `mae` and `automl` command lines: help, --print-config, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from automl.cli import main as automl_main
from mae.cli import main as mae_main
from mae.config import ACTIONS


def run_help(main, argv, capsys) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_mae_help_lists_every_action(capsys):
    out = run_help(mae_main, ["--help"], capsys)
    for action in ACTIONS:
        assert action in out


@pytest.mark.parametrize("action", ACTIONS)
def test_action_help_describes_every_option(action, capsys):
    out = run_help(mae_main, [action, "--help"], capsys)
    for option in (
        "--experiment_spec",
        "--print-config",
        "--verbose",
        "key=value",
        "learning_rate->train.optim.lr",
    ):
        assert option in out


def test_automl_run_help(capsys):
    out = run_help(automl_main, ["run", "--help"], capsys)
    for option in ("--policy", "--experiment_spec", "--print-config", "plain training", "key=value"):
        assert option in out


def test_print_config_resolves_and_runs_nothing(write_spec, data_dir, capsys, tmp_path):
    spec = write_spec({"dataset": {"train_data_sources": str(data_dir)}, "results_dir": str(tmp_path / "r")})
    assert mae_main(["train", "-e", str(spec), "--print-config", "num_epochs=3", "train.num_gpus=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["num_epochs"] == 3 and printed["train"]["gpu_ids"] == [0, 1]
    assert printed["dataset"]["augmentation"]["input_size"] == 224  # fully resolved: defaults included
    assert not (tmp_path / "r").exists()


def test_automl_run_validates_before_starting_ray(write_spec, data_dir, capsys):
    spec = write_spec({"dataset": {"train_data_sources": str(data_dir)}})
    assert automl_main(["run", "-e", str(spec), "--print-config"]) == 0
    capsys.readouterr()
    assert automl_main(["run", "-e", str(spec), "train.optim.lr=2"]) == 2
    assert "train.optim.lr=2: input should be less than or equal to 1" in capsys.readouterr().err
    # an empty data folder is a one-line data error before any Ray worker starts
    assert automl_main(["run", "-e", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "the folder holds no images" in err and "Traceback" not in err


def test_missing_spec_argument_is_a_usage_error(capsys):
    assert mae_main(["train"]) == 2
    assert "required: -e/--experiment_spec" in capsys.readouterr().err


def test_console_scripts_are_installed(tmp_path):
    bindir = Path(sys.executable).parent
    for script in ("mae", "automl"):
        out = subprocess.run([str(bindir / script), "--version"], capture_output=True, text=True, check=True)
        assert out.stdout.startswith("mae-automl ")
