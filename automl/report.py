"""Reporting: summary.json after the search, the printed summary, and `automl status` (also while it runs)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from automl.experiment import find_experiment, finite
from automl.ledger import best_trial, progress_table
from mae.layout import ExperimentLayout

# The encoder check (issue 11; measured in docs/automl.md "Search quality"): over 60 pretraining configurations
# of the search benchmark a lower train_loss went with a *worse* encoder (Spearman +0.73 with the linear probe's
# top-1), and in 55 of the 59 benchmark searches this check flags, the flagged encoder had the better probe
# (median +0.014 top-1; benchmarks/results/encoder_check.json). Only trials at the same training length are
# compared: kNN favours barely trained encoders over trained ones at different lengths.
KNN_MARGIN = 0.02


def build_summary(
    files: ExperimentLayout,
    exp: Mapping[str, Any],
    state: Mapping[str, Any],
    best: Mapping[str, Any] | None,
    deploy: Mapping[str, Any] | None,
    plots: Sequence[str] = (),
) -> dict[str, Any]:
    trials = list(state.get("trials", {}).values())
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    rounds = state.get("rounds", {})
    elapsed = sum(r.get("elapsed_s", 0.0) for r in rounds.values())
    gpu_hours = sum(r.get("gpu_hours", 0.0) for r in rounds.values())
    trial_epochs = sum(int(t.get("epochs") or 0) for t in trials)
    out = {
        "results_dir": str(files.results_dir),
        "experiment": str(files.root),
        "metric": exp.get("metric"),
        "mode": exp.get("mode"),
        "stage": exp.get("stage"),
        "algorithm": exp.get("algorithm"),
        "space": exp.get("space"),
        "seed": exp.get("seed"),
        "storage": exp.get("storage"),
        "mlflow": {
            "tracking_uri": _tracking_uri(files),
            "parent_run_id": exp.get("mlflow_parent_run_id"),
            "ui": f"automl ui {files.results_dir}",
        },
        "rounds": [
            {**r, **{k: v for k, v in (rounds.get(r["name"]) or {}).items() if k != "started"}}
            for r in exp.get("rounds", [])
        ],
        "finished": all(r.get("status") == "finished" for r in exp.get("rounds", [])),
        "counts": counts,
        "trials_total": len(trials),
        "trial_epochs": trial_epochs,
        "elapsed_s": round(elapsed, 1),
        "gpu_hours": round(gpu_hours, 4),
        "best": None,
        "deploy": dict(deploy) if deploy else None,
        "plots": list(plots),
        "trials": [
            {
                "trial_id": t["trial_id"],
                "round": t.get("round"),
                "status": t["status"],
                "epochs": t.get("epochs", 0),
                "config": t.get("config"),
                "best": t.get("best"),
                "last": t.get("last"),
                "failure": t.get("failure"),
                "retries": t.get("retries", 0),
                "node_ip": t.get("node_ip"),
                "trial_dir": str(files.trial_dir(t["trial_id"])),
            }
            for t in trials
        ],
    }
    if best is not None:
        b = best["best"]
        out["best"] = {
            "trial_id": best["trial_id"],
            "value": b["value"],
            "epoch": b.get("epoch"),
            "iteration": b.get("iteration"),
            "config": best.get("config"),
            "tune_checkpoint": b.get("checkpoint"),
            "checkpoint": (deploy or {}).get("checkpoint"),
            "onnx_file": (deploy or {}).get("onnx_file"),
            "spec": (deploy or {}).get("spec"),
        }
        check = encoder_check(state, best, exp.get("metric"))
        if check:
            out["encoder_check"] = check
    return out


def encoder_check(
    state: Mapping[str, Any], best: Mapping[str, Any], metric: str | None
) -> dict[str, Any] | None:
    """A trial whose encoder is likely better than the selected one: the highest knn_acc among the other
    trials at the selected epoch, when it beats the selected trial's knn_acc by >= KNN_MARGIN; else None."""
    if metric == "knn_acc":
        return None
    it = best["best"].get("iteration")

    def history(t: Mapping[str, Any]) -> Mapping[str, Any]:  # the trial's report after `it` epochs
        return (t.get("history") or {}).get(str(it)) or {}

    selected = finite(history(best).get("knn_acc"))
    if selected is None:
        return None
    rival, rival_knn = None, selected + KNN_MARGIN
    for t in state.get("trials", {}).values():
        knn = finite(history(t).get("knn_acc"))
        if t["trial_id"] != best["trial_id"] and knn is not None and knn >= rival_knn:
            rival, rival_knn = t, knn
    if rival is None:
        return None
    return {
        "trial_id": rival["trial_id"],
        "epoch": it,
        "knn_acc": rival_knn,
        "selected_knn_acc": selected,
        metric or "metric": finite(history(rival).get(metric)),
        "checkpoint": history(rival).get("checkpoint"),
        "message": (
            f"trial {rival['trial_id']} has knn_acc {rival_knn:.3f} at the same epoch against the selected "
            f"trial's {selected:.3f}: its encoder is likely better although its {metric} is worse (in our "
            "benchmark the flagged encoder had the better linear probe in 55 of 59 searches; docs/automl.md)"
        ),
    }


def _tracking_uri(files: ExperimentLayout) -> str:
    from mae.tracking import tracking_uri

    return tracking_uri(files.results_dir)


def format_summary(summary: Mapping[str, Any]) -> str:
    lines = []
    c = summary.get("counts", {})
    lines.append(
        f"automl: {summary.get('trials_total', 0)} trials ("
        + ", ".join(f"{n} {s}" for s, n in sorted(c.items()))
        + f"), {summary.get('trial_epochs', 0)} trial-epochs in {summary.get('elapsed_s', 0):.0f} s"
        + (f", {summary['gpu_hours']:.3f} GPU-hours" if summary.get("gpu_hours") else "")
    )
    b = summary.get("best")
    metric = summary.get("metric")
    if b:
        cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in (b.get("config") or {}).items())
        lines.append(
            f"automl: best trial {b['trial_id']}: {metric}={b['value']:.6g} at epoch {b.get('epoch')} ({cfg})"
        )
    else:
        lines.append(
            f"automl: no trial reported {metric}; see the failures in {summary.get('experiment')}/summary.json"
        )
    lines += pareto_lines(summary)
    if summary.get("encoder_check"):
        lines.append(f"automl: warning: {summary['encoder_check']['message']}")
    d = summary.get("deploy") or {}
    if d.get("checkpoint"):
        lines.append(f"automl: best checkpoint {d['checkpoint']}")
    if d.get("spec"):
        lines.append(f"automl: rerunnable spec {d['spec']}")
    if d.get("onnx_file"):
        lines.append(f"automl: ONNX {d['onnx_file']}")
    if d.get("engine"):
        lines.append(f"automl: TensorRT engine {d['engine']}")
    for s in d.get("skipped", []):
        lines.append(f"automl: {s}")
    lines.append(f"automl: summary {summary.get('experiment')}/summary.json")
    lines.append(f"automl: compare the trials in MLflow: {summary.get('mlflow', {}).get('ui')}")
    return "\n".join(lines)


def pareto_lines(summary: Mapping[str, Any]) -> list[str]:
    """The Pareto front (multi-objective or constrained searches) as a few lines."""
    if "pareto" not in summary:
        return []
    goals = summary.get("goals") or {}
    lines = [
        f"automl: Pareto front of {', '.join(goals.get('objectives', []))}"
        + (f" under {', '.join(goals['constraints'])}" if goals.get("constraints") else "")
        + f": {len(summary['pareto'])} trials, hypervolume {summary.get('hypervolume', 0):.4g}"
        + f" ({len(summary.get('infeasible') or {})} infeasible trials, {len(summary.get('refused') or [])} "
        "configurations refused before training)"
    ]
    for entry in summary["pareto"]:
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in entry["values"].items())
        mark = " (picked: best/)" if entry["trial_id"] == summary.get("picked") else ""
        where = f" -> {entry['onnx_file']}" if entry.get("onnx_file") else ""
        lines.append(f"automl:   {entry['trial_id']}: {values}{mark}{where}")
    return lines


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------- status


def experiment_status(results_dir: str | os.PathLike) -> dict[str, Any]:
    """`automl status`: the experiment's settings, trials so far and best so far (works while it runs)."""
    files = find_experiment(results_dir)
    exp = files.read("experiment") or {}
    state = files.read("state") or {"trials": {}, "rounds": {}}
    summary = files.read("summary")
    best = best_trial(state, exp.get("mode", "min"))
    running = any(r.get("status") != "finished" for r in exp.get("rounds", []))
    return {
        "experiment": str(files.root),
        "metric": exp.get("metric"),
        "mode": exp.get("mode"),
        "algorithm": exp.get("algorithm"),
        "rounds": exp.get("rounds", []),
        "finished": not running,
        "updated": state.get("updated"),
        "state": state,
        "best": None
        if best is None
        else {"trial_id": best["trial_id"], **best["best"], "config": best.get("config")},
        "summary": summary,
        "space_names": exp.get("space_names", []),
    }


def format_status(status: Mapping[str, Any]) -> str:
    metric, mode = status.get("metric"), status.get("mode")
    algo = status.get("algorithm") or {}
    rounds = status.get("rounds") or []
    lines = [
        f"experiment {status['experiment']}: {metric} ({mode}), {algo.get('searcher')} + {algo.get('scheduler')}, "
        + ", ".join(f"{r['name']} {r.get('status')} ({r.get('trials')} trials)" for r in rounds)
        + (f"; updated {status['updated']}" if status.get("updated") else "")
    ]
    lines.append(progress_table(status["state"], metric, mode, status.get("space_names", []), limit=50))
    b = status.get("best")
    if b:
        cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in (b.get("config") or {}).items())
        lines.append(
            f"best so far: {b['trial_id']} {metric}={b['value']:.6g} at epoch {b.get('epoch')} ({cfg})"
        )
    s = status.get("summary")
    if s and status.get("finished"):
        lines += [line.removeprefix("automl: ") for line in pareto_lines(s)]
        if s.get("encoder_check"):
            lines.append(f"warning: {s['encoder_check']['message']}")
    if s and status.get("finished") and (s.get("deploy") or {}).get("onnx_file"):
        lines.append(f"best model: {s['deploy']['onnx_file']}")
    return "\n".join(lines)
