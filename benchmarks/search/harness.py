"""Running one arm on one seed: the search through the public API, then what the benchmark keeps of it.

Every arm gets the same spec (examples/demo.yaml with the demo's digits), the same `num_epochs`, max_trials,
max_concurrent and seed; only what the arm itself changes differs (benchmarks.search.arms). All searches of
a benchmark run share one local Ray session, started here, so no search pays Ray's start-up.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.search.arms import ARMS, Arm, candidate_sampler, untied_warmup

REPO = Path(__file__).resolve().parents[2]
DEMO_SPEC = REPO / "examples" / "demo.yaml"


@dataclass(frozen=True)
class Budget:
    trials: int
    epochs: int
    concurrent: int = 2


def start_ray(concurrent: int) -> None:
    """One local Ray for every search. The TAO arm's trial callback lives in this repository's `benchmarks`
    package, which is not installed: the workers find it through PYTHONPATH."""
    import ray

    from automl.ray_session import RUNTIME_ENV_VARS

    if ray.is_initialized():
        return
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    ray.init(
        address="local",
        num_cpus=concurrent,
        resources={"trial_slot": concurrent},
        include_dashboard=False,  # trials train in-process (no Ray Train workers to release)
        log_to_driver=False,
        runtime_env={"env_vars": {**RUNTIME_ENV_VARS, "PYTHONPATH": os.environ["PYTHONPATH"]}},
    )


def data_overrides(data: dict[str, Path]) -> list[str]:
    return [
        f"dataset.train_data_sources={data['train']}",
        f"dataset.val_data_sources={data['val']}",
        f"dataset.test_data_sources={data['test']}",
    ]


def run_search(
    arm: Arm | str,
    seed: int,
    budget: Budget,
    data: dict[str, Path],
    out: Path,
    *,
    extra_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One search; returns its record (see `record_of`). A finished search in `out` is read, not rerun."""
    import automl

    arm = ARMS[arm] if isinstance(arm, str) else arm
    options: dict[str, Any] = {
        "max_trials": budget.trials,
        "max_concurrent": budget.concurrent,
        "seed": seed,
        "deploy": False,
        "max_consecutive_failures": 0,  # TAO's space diverges often: count it, never stop
        "progress_interval_s": 1e9,
        **arm.options,
        **(extra_options or {}),
    }
    if arm.space is not None:
        space_file = out.parent / f"{arm.name}-space.yaml"
        space_file.parent.mkdir(parents=True, exist_ok=True)
        space_file.write_text(arm.space)
        options["search_space"] = str(space_file)
    overrides = [f"results_dir={out}", *data_overrides(data), f"num_epochs={budget.epochs}", *arm.overrides]
    if not finished(out):
        with untied_warmup(arm.untie_warmup), candidate_sampler(arm.tpe):
            automl.run(str(DEMO_SPEC), overrides, automl.SearchOptions(**options))
    rec = record_of(out)
    rec.update(arm=arm.name, seed=seed, options=_plain(options))
    return rec


def finished(out: Path) -> bool:
    from mae.layout import ExperimentLayout

    summary = ExperimentLayout(out).read("summary")
    return bool(summary and summary.get("finished"))


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in options.items() if k != "progress_interval_s"
    }


def finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _epoch_checkpoint(out: Path, tid: str, entry: dict) -> str | None:
    """The checkpoint of one reported epoch: the Tune checkpoint reported with it, else the trial's last.ckpt."""
    from mae.layout import TUNE_CHECKPOINT_FILE, ExperimentLayout, TrainLayout

    for path in (
        Path(entry.get("checkpoint") or "/nonexistent") / TUNE_CHECKPOINT_FILE,
        TrainLayout(ExperimentLayout(out).trial_dir(tid)).last,
    ):
        if path.is_file():
            return str(path)
    return None


def record_of(out: Path) -> dict[str, Any]:
    """What the benchmark keeps of a finished search: the anytime curve (the best train_loss after each
    trial-epoch, in the order the results arrived: state.json's `seq`), every trial's configuration and
    per-epoch train_loss/knn_acc, and the selected encoder (the best trial by the search's objective)."""
    from mae.layout import ExperimentLayout

    files = ExperimentLayout(out)
    state, summary = files.read("state"), files.read("summary")
    events = []  # (seq, train_loss)
    trials = []
    for tid, t in state["trials"].items():
        hist = {int(k): v for k, v in (t.get("history") or {}).items()}
        for h in hist.values():
            if "seq" in h:
                events.append((h["seq"], finite(h.get("train_loss"))))
        trials.append(
            {
                "trial_id": tid,
                "status": t.get("status"),
                "failure": (t.get("failure") or {}).get("kind"),
                "config": t.get("config"),
                "epochs": t.get("epochs", 0),
                "train_loss": [finite(hist[e].get("train_loss")) for e in sorted(hist)],
                "knn_acc": [finite(hist[e].get("knn_acc")) for e in sorted(hist)],
                "last_checkpoint": _epoch_checkpoint(out, tid, hist[max(hist)]) if hist else None,
            }
        )
    events.sort()
    curve, best = [], None
    for _, loss in events:
        if loss is not None and (best is None or loss < best):
            best = loss
        curve.append(best)
    sel = summary.get("best")
    selected = None
    if sel:
        tid, epoch = sel["trial_id"], int(sel["epoch"])
        t = state["trials"][tid]
        h = (t.get("history") or {}).get(str(epoch)) or {}
        # the product's name for a trial's best epoch: its folder automl/trials/<trial_id> (mae resolves it to
        # the Tune checkpoint of that epoch, or the folder's best.ckpt)
        ckpt = files.trial_dir(tid)
        selected = {
            "trial_id": tid,
            "epoch": epoch,
            "train_loss": finite(sel.get("value")),
            "knn_acc": finite(h.get("knn_acc")),
            "config": sel.get("config"),
            "checkpoint": str(ckpt),
        }
    return {
        "results_dir": str(out),
        "wall_s": summary.get("elapsed_s"),
        "curve": curve,
        "best": best,
        "trial_epochs": len(events),
        "failed": sum(t["status"] == "failed" for t in trials),
        "trials": trials,
        "selected": selected,
    }
