"""After the search: best/ (and best/pareto/ for a multi-objective search), summary.json, plots, the MLflow
parent run's record, and the printed summary."""

from __future__ import annotations

from typing import Any

from automl.experiment import write_json
from automl.ledger import best_trial
from automl.ray_session import filesystem_for
from automl.report import build_summary, format_summary
from automl.trial import TrialContext


def finish(search, *, redeploy: bool) -> dict[str, Any]:
    """Deploy the best trial (the picked one among feasible trials when there are goals beyond one metric)
    and each trial of the Pareto front, then write and print the summary. `search` is automl.runner.Search."""
    from automl.deploy import deploy_best
    from automl.plots import write_plots
    from automl.tracking import ExperimentTracker

    files, plan = search.files, search.plan
    goals = plan.goals
    exp = files.read("experiment") or {}
    state = files.read("state") or {"trials": {}, "rounds": {}}
    mode = exp.get("mode", plan.mode)
    metric = exp.get("metric", plan.metric)
    front = None
    if goals.several or goals.constraints:
        from automl.multi_objective import front_summary

        front = front_summary(state, goals, [r["name"] for r in exp.get("rounds", [])])
        front["refused"] = _read_list(files.refused)  # proposals that never became trials
        picked = front["picked"]
        best = state["trials"].get(picked) if picked else None
    else:
        best = best_trial(state, mode)
    old = files.read("summary")
    deploy: dict[str, Any] | None = (old or {}).get("deploy") if not redeploy else None
    fs, _ = filesystem_for(exp.get("storage"))
    ctx = TrialContext(
        spec=search.spec, results_dir=str(files.results_dir), metric=metric, mode=mode, space=plan.space
    )
    if (
        best is not None
        and search.options.deploy
        and (redeploy or deploy is None or (old or {}).get("best", {}).get("trial_id") != best["trial_id"])
    ):
        deploy = deploy_best(files, best, ctx, storage_filesystem=fs)
    plots = write_plots(files, state, plan.space, metric, mode)
    extra: dict[str, Any] = {}
    if front is not None:
        result = front.pop("_result")
        if search.options.deploy and (redeploy or not (old or {}).get("pareto")):
            for entry in front["pareto"]:
                rec = state["trials"][entry["trial_id"]]
                out = deploy_best(
                    files,
                    rec,
                    ctx,
                    storage_filesystem=fs,
                    out_dir=files.best / "pareto" / rec["trial_id"],
                    quiet=True,
                )
                entry.update({k: out.get(k) for k in ("checkpoint", "onnx_file", "spec")})
        elif old:
            front["pareto"] = old.get("pareto", front["pareto"])
        if goals.several:
            from automl.pareto import plot_pareto

            path = files.plots / "pareto.png"
            plot_pareto(result, path, picked=front["picked"])
            plots.append(str(path))
        extra = front
    summary = build_summary(files, exp, state, best, deploy, plots)
    summary.update(extra)
    write_json(files.summary, summary)
    tracker = ExperimentTracker(files.results_dir, plan.config.model_name, exp.get("mlflow_parent_run_id"))
    tracker.finish_parent(summary, files, plots)
    print(format_summary(summary))
    return summary


def _read_list(path) -> list:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []
