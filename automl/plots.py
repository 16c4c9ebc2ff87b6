"""The experiment's plots, drawn by Optuna's matplotlib visualisations from the ledger's trials.

The ledger (state.json) is the record of every trial, whichever searcher ran (PBT has no Optuna study), so the
plots rebuild a small in-memory Optuna study from it: one completed trial per trial that reported the metric,
with its searched values and its best value.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

from mae.fileio import atomic_write_json
from mae.layout import ExperimentLayout

log = logging.getLogger("automl")


def study_from_state(state: Mapping[str, Any], space, mode: str, *, varying_only: bool = False):
    """An Optuna study of the trials that reported the metric (in the order they were created). Parameters
    that never vary are left out when `varying_only` (importance needs variation)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = [t for t in state.get("trials", {}).values() if t.get("best")]
    dists: dict[str, Any] = {}
    for p in space:
        seen = [t["config"][p.name] for t in trials if p.name in (t.get("config") or {})]
        if not seen or (varying_only and len(set(map(str, seen))) < 2):
            continue
        if p.choices is not None or p.kind in ("categorical", "bool"):
            dists[p.name] = CategoricalDistribution(sorted(set(seen), key=str))
        elif p.kind == "int":
            dists[p.name] = IntDistribution(int(min(seen)), int(max(seen)), log=p.log and min(seen) >= 1)
        else:
            dists[p.name] = FloatDistribution(float(min(seen)), float(max(seen)), log=p.log and min(seen) > 0)
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    for t in trials:
        params = {k: t["config"][k] for k in dists if k in t["config"]}
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions={k: dists[k] for k in params}, value=float(t["best"]["value"])
            )
        )
    return study


def parameter_importances(state: Mapping[str, Any], space, metric: str, mode: str) -> dict[str, float]:
    """{parameter: importance} by Optuna's default evaluator over the trials that reported the metric;
    {} with fewer than 4 such trials or nothing that varies."""
    import optuna

    if sum(1 for t in state.get("trials", {}).values() if t.get("best")) < 4:
        return {}
    study = study_from_state(state, space, mode, varying_only=True)
    if not study.trials or not study.trials[0].distributions:
        return {}
    try:
        imp = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as e:
        log.debug("parameter importance not computed: %s", e)
        return {}
    return {k: float(v) for k, v in imp.items()}


def write_plots(
    files: ExperimentLayout, state: Mapping[str, Any], space, metric: str, mode: str
) -> list[str]:
    """plots/optimization_history.png (each trial's best metric and the best so far) and, with enough trials
    that reported it, plots/param_importances.png (+ .json). Returns the files written."""
    if not any(t.get("best") for t in state.get("trials", {}).values()):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable for years; noise in logs

    files.plots.mkdir(parents=True, exist_ok=True)
    written = []
    study = study_from_state(state, space, mode)
    ax = plot_optimization_history(study, target_name=metric)
    ax.set_title(f"Optimization history ({metric}, {mode})")
    path = files.plots / "optimization_history.png"
    ax.figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(ax.figure)
    written.append(str(path))
    importances = parameter_importances(state, space, metric, mode)
    if importances:
        ax = plot_param_importances(
            study_from_state(state, space, mode, varying_only=True), target_name=metric
        )
        path = files.plots / "param_importances.png"
        ax.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
        written.append(str(path))
        atomic_write_json(files.plots / "param_importances.json", importances)
    return written
