"""`automl run --warm-start DIR [DIR ...]`: a new search starts from the finished trials of earlier experiments.

Each DIR is the results folder of an earlier `automl run` (or its `automl/` folder). Its trials that reported
the metric become completed trials of the new Optuna study, with their best value, before the first trial is
proposed. Parameters the new space does not search are dropped; a trial with a value outside the new space's
ranges (or missing one the new space needs) is left out, since its result says nothing about a configuration
the new search could propose. The earlier experiment must have trained the same stage and reported the same
metric, or its values would not be comparable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automl.experiment import finite
from automl.space import SearchSpace, optuna_params
from mae.errors import ConfigError, MAEError
from mae.layout import ExperimentLayout


@dataclass
class WarmStart:
    trials: list[tuple[dict, dict, float]] = field(default_factory=list)  # (params, distributions, value)
    left_out: int = 0
    experiments: int = 0

    def notice(self) -> str:
        text = f"--warm-start: {len(self.trials)} finished trials of {self.experiments} earlier experiment(s) used"
        if self.left_out:
            text += f" ({self.left_out} left out: values outside this search's space)"
        return text


def read_warm_start(
    dirs: Iterable[str], space: SearchSpace, *, stage: str, metric: str, mode: str
) -> WarmStart:
    """The earlier trials of `dirs` that fit `space`; ConfigError (one line per folder) for a folder that is
    missing, unreadable, or an experiment of another stage or metric."""
    out = WarmStart()
    problems = []
    for d in dirs:
        exp_layout = ExperimentLayout.of_folder(Path(os.path.expanduser(d)))
        if exp_layout is None:
            what = (
                "no such folder"
                if not Path(d).exists()
                else "no AutoML experiment here (no automl/experiment.json)"
            )
            problems.append(f"--warm-start {d}: {what}")
            continue
        try:
            exp = exp_layout.read("experiment") or {}
            state = exp_layout.read("state") or {}
        except MAEError as e:
            problems.append(f"--warm-start {d}: {e}")
            continue
        if exp.get("stage") != stage:
            problems.append(
                f"--warm-start {d}: it searched train.stage={exp.get('stage')}, this search {stage}"
            )
            continue
        if (exp.get("metric"), exp.get("mode")) != (metric, mode):
            problems.append(
                f"--warm-start {d}: it optimized {exp.get('metric')} ({exp.get('mode')}), this search {metric} "
                f"({mode}); their values are not comparable"
            )
            continue
        out.experiments += 1
        for rec in state.get("trials", {}).values():
            value = finite((rec.get("best") or {}).get("value"))
            if value is None:
                continue
            config = {k: v for k, v in (rec.get("config") or {}).items() if k in space}
            replay = optuna_params(space, config)
            if replay is None:
                out.left_out += 1
                continue
            out.trials.append((*replay, value))
    if problems:
        raise ConfigError(problems)
    return out


def seed_study(journal: Path, mode: str | Sequence[str], trials: list[tuple[dict, dict, float]]) -> None:
    """Add the trials to the experiment's Optuna study (created here, loaded again by the searcher)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal.parent.mkdir(parents=True, exist_ok=True)
    directions = [mode] if isinstance(mode, str) else list(mode)
    study = optuna.create_study(
        storage=JournalStorage(JournalFileBackend(str(journal))),
        study_name="automl",
        directions=["minimize" if m == "min" else "maximize" for m in directions],
        load_if_exists=True,
    )
    study.add_trials([optuna.trial.create_trial(params=p, distributions=d, value=v) for p, d, v in trials])


__all__: list[Any] = ["WarmStart", "read_warm_start", "seed_study"]
