"""`automl run`'s options: one pydantic model, from which the CLI's flags come; they cannot drift apart."""

from __future__ import annotations

import argparse

import pytest

from automl.algorithms import option_notices, resolve_algorithm
from automl.cli import build_parser
from automl.options import SearchOptions, flag_of, options_from_args
from mae.errors import ConfigError


def _run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def test_every_option_is_a_flag_and_every_flag_an_option():
    run = _run_parser()
    dests = {a.dest for a in run._actions} - {"help", "spec", "print_config", "overrides"}
    fields = set(SearchOptions.model_fields) - {"progress_interval_s"}  # API only, said in its description
    assert dests == fields
    for name in fields - {"verbose"}:
        action = next(a for a in run._actions if a.dest == name)
        assert flag_of(name) in action.option_strings
        assert action.help == SearchOptions.model_fields[name].description


def test_no_flags_give_the_model_defaults():
    args = build_parser().parse_args(["run", "-e", "s.yaml"])
    assert options_from_args(args) == SearchOptions()
    assert options_from_args(args).model_fields_set == {"verbose"}  # the shared -v flag always has a value


def test_flags_round_trip_to_options():
    argv = ["run", "-e", "s.yaml", "--max-trials", "4", "--param", "a=off", "--param", "b=off", "--no-deploy"]
    argv += ["--mode", "max", "--metric", "ACC_all", "--gpus-per-trial", "0.5", "train.num_epochs=3"]
    args = build_parser().parse_args(argv)
    o = options_from_args(args)
    assert (o.max_trials, o.params, o.deploy, o.mode, o.metric, o.gpus_per_trial) == (
        4,
        ("a=off", "b=off"),
        False,
        "max",
        "ACC_all",
        0.5,
    )
    assert args.overrides == ["train.num_epochs=3"]
    assert o.explicit("max_trials") and not o.explicit("grace_period")


def test_bad_flag_values_are_one_line_each_with_the_flag(capsys):
    from automl.cli import main

    rc = main(["run", "-e", "s.yaml", "--max-trials", "0", "--reduction-factor", "0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        "automl: error: --max-trials 0: must be >= 1",
        "automl: error: --reduction-factor 0.5: must be > 1",
    ]


def test_replace_validates():
    o = SearchOptions(max_trials=3)
    assert o.replace(seed=4).seed == 4 and o.replace(seed=4).max_trials == 3
    with pytest.raises(ConfigError, match="--max-trials -1"):
        o.replace(max_trials=-1)


@pytest.mark.parametrize(
    "options, algorithm, expected",
    [
        ({"grace_period": 2}, "bayesian", ["--grace-period has no effect with the fifo scheduler"]),
        ({"reduction_factor": 2.0}, "pbt", ["--reduction-factor has no effect with the pbt scheduler"]),
        ({"grace_period": 2}, "hyperband", ["--grace-period has no effect with hyperband"]),
        (
            {"perturbation_interval": 2},
            "tpe",
            ["--perturbation-interval has no effect with the asha scheduler"],
        ),
        ({"grace_period": 2, "reduction_factor": 2.0, "perturbation_interval": None}, "tpe", []),
        ({"perturbation_interval": 2}, "pbt", []),
    ],
)
def test_options_the_algorithm_would_ignore_get_a_notice(options, algorithm, expected):
    notices = option_notices(SearchOptions(**options), resolve_algorithm(algorithm))
    assert len(notices) == len(expected)
    for line, start in zip(notices, expected, strict=True):
        assert line.startswith(start)
