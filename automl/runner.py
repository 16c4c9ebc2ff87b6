"""The AutoML runner: a Ray Tune search of `mae` training runs, proposed by Optuna, cut short by a scheduler.

    result = run("spec.yaml", ["dataset.train_data_sources=/data/train"], SearchOptions(max_trials=8))

What happens (PRODUCT.md section 5):
  1. The policy decides (automl.policy): --policy off trains the spec as written and stops there.
  2. The search is planned (automl.space.plan_search): the bound space, the metric and mode, the notices.
  3. An experiment lives in `<results_dir>/automl/`: `experiment.json` (what was asked, the rounds, the MLflow
     parent run), `state.json` (every trial: config, per-epoch metrics, checkpoints, status, failure; the
     budget spent; written as the search goes, read by `automl status`), Ray Tune's own state under `ray/`
     (or `--storage s3://...`), the trials' training folders under `trials/<trial_id>/`, and after the search
     `summary.json`, `best/` (spec, checkpoint, ONNX, engine) and `plots/`.
  4. Rerunning the same command resumes an unfinished experiment (Tuner.restore: finished trials are kept,
     in-flight ones continue from their last checkpoint); a finished one is reported again; `--extend N` adds
     a round of N trials whose searcher is warm-started from every earlier trial (Optuna's study is kept in
     `optuna.journal`; PBT starts its new population from the best configurations so far).
  5. After the search the best trial's best epoch is exported (automl.deploy), MLflow gets the summary and the
     plots (automl.tracking), and the best trial is printed.

Algorithms (searcher + scheduler; --scheduler overrides the scheduler):
  tpe (default), random, gp, cmaes   Optuna samplers, with the asha scheduler unless --scheduler says otherwise
  pbt                                Population Based Training: Ray's PBT scheduler explores by itself (it takes
                                     no searcher); the population is drawn with SearchSpace.sample
  TAO's names, mapped to real equivalents: bayesian -> gp + fifo, hyperband -> random + hyperband,
  asha -> random + asha, bohb -> tpe + hyperband (BOHB's model-based sampling over HyperBand brackets),
  pbt -> pbt.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import signal
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automl._params import SearchSpace
from automl.tracking import METRIC_KEYS
from automl.trial import (
    TrialContext,
    error_text,
    failure_of,
    train_trial,
    trial_values,
)
from mae.errors import ConfigError, MAEError, did_you_mean

log = logging.getLogger("automl")

__all__ = [
    "ALGORITHMS",
    "SCHEDULERS",
    "TAO_ALGORITHMS",
    "AutoMLResult",
    "Algorithm",
    "ExperimentFiles",
    "SearchOptions",
    "experiment_status",
    "format_status",
    "resolve_algorithm",
    "run",
]

SEARCHERS = ("tpe", "random", "gp", "cmaes")
ALGORITHMS = (*SEARCHERS, "pbt")
SCHEDULERS = ("asha", "fifo", "hyperband", "pbt")
# TAO AutoML's algorithm names -> (searcher, scheduler) that do the same job here.
TAO_ALGORITHMS: dict[str, tuple[str, str, str]] = {
    "bayesian": (
        "gp",
        "fifo",
        "TAO's Bayesian optimization (a Gaussian process) = Optuna's GP sampler, every trial run to the end",
    ),
    "hyperband": ("random", "hyperband", "TAO's Hyperband = random sampling with the HyperBand scheduler"),
    "asha": (
        "random",
        "asha",
        "TAO's ASHA = random sampling with the asynchronous successive-halving scheduler",
    ),
    "bohb": (
        "tpe",
        "hyperband",
        "TAO's BOHB (Bayesian optimization + HyperBand) = Optuna's TPE (a kernel-density model like BOHB's) "
        "with the HyperBand scheduler",
    ),
    "pbt": ("pbt", "pbt", "Population Based Training"),
}
STATE_VERSION = 1


# ------------------------------------------------------------------------------------------ options


@dataclass
class SearchOptions:
    """Everything `automl run` takes besides the spec and its overrides (the CLI's flags, one for one)."""

    policy: str = "auto"
    algorithm: str | None = None  # tpe (default), random, gp, cmaes, pbt, or TAO's names
    scheduler: str | None = None  # asha (default), fifo, hyperband, pbt
    max_trials: int = 10
    time_budget: float | None = None  # seconds of wall clock for this run of the search
    gpu_hours: float | None = None  # wall time x GPUs held, summed over trials
    max_concurrent: int | None = None
    metric: str | None = None
    mode: str | None = None
    address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001", "host:6379")
    storage: str | None = None  # Tune's experiment storage: a local folder or s3://bucket/prefix
    params: Sequence[str] = ()  # --param NAME=EXPR
    search_space: str | None = None  # a search-space file
    allow_objective_change: bool = False
    seed: int | None = None  # default: the spec's train.seed
    extend: int | None = None  # add N trials to a finished experiment
    cpus_per_trial: float = 1.0  # per trial process (single-device trial) or per Ray Train worker
    gpus_per_trial: float | None = None  # a fraction (< 1) lets small models share a GPU; default 1 if GPUs
    max_retries: int = (
        1  # per trial, for errors that may not repeat (NaN and a missing metric are not retried)
    )
    max_consecutive_failures: int = 3  # stop after this many trials in a row end without the metric
    grace_period: int = 1  # asha/hyperband: epochs before a trial can be stopped
    reduction_factor: float = 3.0  # asha/hyperband: keep the best 1/reduction_factor at each rung
    perturbation_interval: int | None = None  # pbt: epochs between exploit/explore steps
    trial_callbacks: Sequence[str] = ()  # "module:factory" -> extra Lightning callbacks in every trial
    deploy: bool = True  # export the best model after the search
    verbose: bool = False
    progress_interval_s: float = 30.0  # the progress table every so often (and whenever a trial ends)

    def budget(self) -> dict[str, Any]:
        return {"time_budget_s": self.time_budget, "gpu_hours": self.gpu_hours}


@dataclass
class AutoMLResult:
    route: str  # "automl" or "direct"
    results_dir: Path
    summary: dict[str, Any] | None = None
    summary_path: Path | None = None
    best: dict[str, Any] | None = None
    train: dict[str, Any] | None = None  # the direct training's result (route "direct")


@dataclass(frozen=True)
class Algorithm:
    searcher: str  # tpe, random, gp, cmaes, or pbt (PBT's own exploration)
    scheduler: str  # fifo, asha, hyperband, pbt
    requested: str  # what the user wrote
    note: str | None = None  # how a TAO name was mapped

    @property
    def name(self) -> str:
        return f"{self.searcher}+{self.scheduler}"


def resolve_algorithm(algorithm: str | None = None, scheduler: str | None = None) -> Algorithm:
    """--algorithm/--scheduler -> (searcher, scheduler). ConfigError for unknown names or combinations that
    cannot work (Ray's PBT takes no searcher)."""
    algo = (algorithm or "tpe").strip().lower()
    sched = scheduler.strip().lower() if scheduler else None
    problems = []
    note = None
    if algo in TAO_ALGORITHMS and algo not in SEARCHERS:
        searcher, default_sched, note = TAO_ALGORITHMS[algo]
    elif algo in SEARCHERS:
        searcher, default_sched = algo, "asha"
    else:
        names = [*ALGORITHMS, *TAO_ALGORITHMS]
        raise ConfigError(
            f"--algorithm {algorithm!r}: unknown{did_you_mean(algo, names)}; allowed: "
            f"{', '.join(ALGORITHMS)} (or TAO's {', '.join(TAO_ALGORITHMS)})"
        )
    if sched is not None and sched not in SCHEDULERS:
        problems.append(
            f"--scheduler {scheduler!r}: unknown{did_you_mean(sched, SCHEDULERS)}; allowed: {', '.join(SCHEDULERS)}"
        )
    final = sched or default_sched
    if sched == "pbt" and searcher != "pbt":
        if algorithm is None:
            searcher = "pbt"
        else:
            problems.append(
                f"--scheduler pbt with --algorithm {algorithm}: Ray's PBT takes no searcher, it explores by "
                "mutating the best trials; use --algorithm pbt"
            )
    if searcher == "pbt" and final != "pbt":
        problems.append(f"--algorithm pbt runs with the pbt scheduler, not {final}; drop --scheduler")
    if problems:
        raise ConfigError(problems)
    return Algorithm(searcher, final, algorithm or "tpe", note)


# ------------------------------------------------------------------------------------- experiment files


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def _atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=1, default=_json_default, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _json_safe(o: Any) -> Any:
    """NaN and infinities (a diverged trial's val_loss) become null: the files stay standard JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class ExperimentFiles:
    """Where an experiment's files are: `<results_dir>/automl/...`."""

    results_dir: Path

    @property
    def root(self) -> Path:
        return self.results_dir / "automl"

    @property
    def experiment(self) -> Path:
        return self.root / "experiment.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def journal(self) -> Path:
        return self.root / "optuna.journal"

    @property
    def default_storage(self) -> Path:
        return self.root / "ray"

    def trial_dir(self, trial_id: str) -> Path:
        return self.root / "trials" / trial_id

    def read(self, which: str) -> dict[str, Any] | None:
        path = getattr(self, which)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise MAEError(f"{path} is unreadable ({e}); remove it to start the experiment afresh") from None


def find_experiment(path: str | os.PathLike) -> ExperimentFiles:
    """The experiment of a results folder (its `automl/` folder, or the `automl/` folder itself)."""
    p = Path(os.path.expanduser(str(path))).resolve()
    if ExperimentFiles(p).experiment.is_file():
        return ExperimentFiles(p)
    if p.name == "automl" and (p / "experiment.json").is_file():
        return ExperimentFiles(p.parent)
    raise MAEError(
        f"{path}: no AutoML experiment here (no automl/experiment.json); give the results_dir of an `automl run`"
    )


# --------------------------------------------------------------------------------- the trial ledger


_STATUS = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused"}
_FINAL = ("completed", "stopped", "failed")


def _trial_record(trial_id: str, round_name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "round": round_name,
        "status": "pending",
        "config": dict(config),
        "epochs": 0,
        "history": {},  # training_iteration -> {epoch metrics, "checkpoint": path}
        "best": None,  # {"value", "epoch", "iteration", "checkpoint"}
        "last": {},
        "failure": None,
        "retries": 0,
        "pauses": 0,
        "node_ip": None,
        "nodes": [],
        "started": None,
        "ended": None,
    }


def _better(a: float, b: float | None, mode: str) -> bool:
    return b is None or (a < b if mode == "min" else a > b)


def _import_tune_callback():
    from ray.tune import Callback

    return Callback


class Ledger:
    """The experiment's record, kept by the Tune driver: every trial's config, per-epoch metrics, checkpoints,
    status and failure; the budget spent; why the search stopped. Written to state.json after every event (and
    every few seconds), which is what `automl status` reads and what survives a crash of the driver.

    Also the budget guard: `stop_reason` becomes a sentence once the wall-clock or GPU-hour budget is spent or
    `max_consecutive_failures` trials in a row ended without reporting the metric; ExperimentStopper then
    stops the experiment."""

    def __init__(
        self,
        files: ExperimentFiles,
        round_name: str,
        metric: str,
        mode: str,
        *,
        max_epochs: int,
        gpus_per_trial: float,
        max_consecutive_failures: int,
        progress_interval_s: float = 30.0,
        space_names: Sequence[str] = (),
        print_progress: bool = True,
    ):
        self.files = files
        self.round = round_name
        self.metric = metric
        self.mode = mode
        self.max_epochs = max_epochs
        self.gpus_per_trial = gpus_per_trial
        self.max_consecutive_failures = max_consecutive_failures
        self.progress_interval_s = progress_interval_s
        self.space_names = list(space_names)
        self.print_progress = print_progress
        self.state: dict[str, Any] = {}
        self.budget: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self._last_step: float | None = None
        self._last_write = 0.0
        self._last_print = 0.0
        self._dirty = False
        self._reconciled = False

    # -- state
    def load(self) -> None:
        state = self.files.read("state") or {}
        state.setdefault("version", STATE_VERSION)
        state.setdefault("trials", {})
        state.setdefault("rounds", {})
        state.setdefault("consecutive_failures", 0)
        self.state = state
        r = state["rounds"].setdefault(
            self.round, {"elapsed_s": 0.0, "gpu_hours": 0.0, "stop_reason": None, "started": _now()}
        )
        r["stop_reason"] = None
        exp = self.files.read("experiment") or {}
        self.budget = dict((exp.get("budgets") or {}).get(self.round) or {})
        self.stop_reason = None
        self._last_step = None

    def save(self) -> None:
        self.state["updated"] = _now()
        _atomic_write_json(self.files.state, self.state)
        self._last_write = time.monotonic()
        self._dirty = False

    @property
    def trials(self) -> dict[str, dict[str, Any]]:
        return self.state["trials"]

    def record(self, trial) -> dict[str, Any]:
        rec = self.trials.get(trial.trial_id)
        if rec is None:
            rec = self.trials[trial.trial_id] = _trial_record(trial.trial_id, self.round, trial.config)
        return rec

    # -- events (called by LedgerCallback)
    def on_start(self, trial) -> None:
        rec = self.record(trial)
        rec["config"] = dict(trial.config)
        rec["status"] = "running"
        rec["started"] = rec["started"] or _now()
        self.save()

    def on_result(self, trial, result: Mapping[str, Any]) -> None:
        rec = self.record(trial)
        it = int(result.get("training_iteration", 0))
        entry = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        keep = {k: v for k, v in entry.items() if k in (self.metric, "epoch", "time_total_s", *METRIC_KEYS)}
        self.state["results_seen"] = self.state.get("results_seen", 0) + 1
        keep["seq"] = self.state[
            "results_seen"
        ]  # arrival order over the whole experiment (trial-epochs so far)
        rec["history"][str(it)] = {**rec["history"].get(str(it), {}), **keep}
        rec["last"] = keep
        rec["epochs"] = it
        rec["config"] = dict(trial.config)
        rec["node_ip"] = result.get("node_ip") or rec.get("node_ip")
        if result.get("node_id"):
            nodes = rec.setdefault("nodes", [])
            if result["node_id"] not in nodes:
                nodes.append(result["node_id"])
        rec["status"] = "running"
        if _finite(keep.get(self.metric)) is not None:
            self.state["consecutive_failures"] = 0
        self._dirty = True

    def on_checkpoint(self, trial, checkpoint) -> None:
        rec = self.record(trial)
        it = str(int((trial.last_result or {}).get("training_iteration", rec["epochs"])))
        entry = rec["history"].setdefault(it, {})
        path = checkpoint.path
        if getattr(checkpoint.filesystem, "type_name", "local") == "s3" and not path.startswith("s3://"):
            path = "s3://" + path
        entry["checkpoint"] = path
        value = _finite(entry.get(self.metric))
        best = rec["best"]
        if value is not None and _better(value, best["value"] if best else None, self.mode):
            rec["best"] = {
                "value": value,
                "iteration": int(it),
                "epoch": int(entry["epoch"]) + 1 if "epoch" in entry else int(it),  # epochs trained
                "checkpoint": path,
            }
        self.save()

    def on_end(self, trial, *, error: bool) -> None:
        rec = self.record(trial)
        rec["ended"] = _now()
        if error:
            kind, reason = failure_of(error_text(trial))
            rec["status"] = "failed"
            rec["failure"] = {"kind": kind, "reason": reason}
        else:
            rec["status"] = "completed" if rec["epochs"] >= self.max_epochs else "stopped"
            rec["failure"] = None
        if rec["best"] is None:
            self.state["consecutive_failures"] += 1
            n = self.state["consecutive_failures"]
            if self.max_consecutive_failures and n >= self.max_consecutive_failures:
                reasons = sorted(
                    {
                        f"{r['failure']['kind']}: {r['failure']['reason']}"
                        for r in list(self.trials.values())[-n:]
                        if r.get("failure")
                    }
                )
                self.stop_reason = (
                    f"{n} trials in a row ended without reporting {self.metric}; stopping the experiment "
                    f"(last reasons: {'; '.join(reasons) or 'none recorded'})"
                )
                self.state["rounds"][self.round]["stop_reason"] = self.stop_reason
        if error and self.print_progress:
            print(
                f"automl: trial {trial.trial_id} failed ({rec['failure']['kind']}): {rec['failure']['reason']}"
            )
        self.save()
        self._print_table(force=True)

    def on_recover(self, trial) -> None:
        rec = self.record(trial)
        rec["retries"] += 1
        kind, reason = failure_of(error_text(trial))
        rec["failure"] = {"kind": kind, "reason": reason, "retrying": True}
        rec["status"] = "retrying"
        self.save()

    def reconcile(self, trials) -> list[str]:
        """After a resume: trials of this round that the crashed driver had started but Tune's last snapshot
        does not know are gone (Tune starts fresh trials in their place); drop them from the record."""
        known = {t.trial_id for t in trials}
        lost = [
            tid
            for tid, rec in self.trials.items()
            if rec.get("round") == self.round and tid not in known and rec["status"] not in _FINAL
        ]
        for tid in lost:
            del self.trials[tid]
        if lost:
            self.state["rounds"][self.round].setdefault("lost", []).extend(lost)
            self.save()
        return lost

    def on_step(self, trials) -> None:
        if not self._reconciled:
            self._reconciled = True
            self.reconcile(trials)
        now = time.monotonic()
        running = 0
        for t in trials:
            status = _STATUS.get(t.status)
            if status is not None:
                rec = self.record(t)
                if rec["status"] != status and rec["status"] not in _FINAL:
                    if status == "paused":
                        rec["pauses"] = rec.get("pauses", 0) + 1
                    rec["status"] = status
                    self._dirty = True
                if t.status == "RUNNING":
                    running += 1
        r = self.state["rounds"][self.round]
        if self._last_step is not None:
            dt_s = now - self._last_step
            r["elapsed_s"] += dt_s
            r["gpu_hours"] += dt_s * running * self.gpus_per_trial / 3600.0
        self._last_step = now
        self._check_budget(r)
        if self._dirty or now - self._last_write > 5.0:
            self.save()
        self._print_table()

    def _check_budget(self, r: dict[str, Any]) -> None:
        if self.stop_reason:
            return
        limit = self.budget.get("time_budget_s")
        if limit is not None and r["elapsed_s"] >= limit:
            self.stop_reason = f"the time budget of {limit:g} s is spent"
        limit = self.budget.get("gpu_hours")
        if limit is not None and r["gpu_hours"] >= limit:
            self.stop_reason = f"the GPU-hour budget of {limit:g} h is spent ({r['gpu_hours']:.3f} GPU-hours)"
        if self.stop_reason:
            r["stop_reason"] = self.stop_reason
            log.warning("%s: stopping the search", self.stop_reason)
            self.save()

    # -- the progress table
    def _print_table(self, force: bool = False) -> None:
        if not self.print_progress:
            return
        now = time.monotonic()
        if not force and now - self._last_print < self.progress_interval_s:
            return
        self._last_print = now
        print(progress_table(self.state, self.metric, self.mode, self.space_names), flush=True)


def progress_table(
    state: Mapping[str, Any], metric: str, mode: str, names: Sequence[str] = (), limit: int = 20
) -> str:
    """The trials as a small text table: id, status, epochs, last and best metric, searched values."""
    trials = list(state.get("trials", {}).values())
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    best = best_trial(state, mode)
    head = f"== {len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if best:
        head += f"; best {metric}={best['best']['value']:.5g} ({best['trial_id']})"
    short = [n.rsplit(".", 1)[-1] for n in names]
    cols = ["trial", "status", "ep", f"{metric}", "best", *short]
    rows = []
    for t in trials[-limit:]:
        last = _finite((t.get("last") or {}).get(metric))
        b = t["best"]["value"] if t.get("best") else None
        cfg = t.get("config") or {}
        vals = []
        for n in names:
            v = cfg.get(n)
            vals.append(f"{v:.3g}" if isinstance(v, float) else ("-" if v is None else str(v)))
        status = t["status"] + (f" ({t['failure']['kind']})" if t.get("failure") else "")
        rows.append(
            [
                t["trial_id"],
                status,
                str(t.get("epochs", 0)),
                "-" if last is None else f"{last:.5g}",
                "-" if b is None else f"{b:.5g}",
                *vals,
            ]
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    if len(trials) > limit:
        lines.append(f"... and {len(trials) - limit} earlier trials (automl status RESULTS_DIR)")
    return "\n".join(lines)


def best_trial(state: Mapping[str, Any], mode: str) -> dict[str, Any] | None:
    """The trial whose best epoch (with a checkpoint) has the best metric; ties go to the earlier trial."""
    best = None
    for t in state.get("trials", {}).values():
        b = t.get("best")
        if (
            b
            and _finite(b.get("value")) is not None
            and _better(b["value"], best["best"]["value"] if best else None, mode)
        ):
            best = t
    return best


def _make_ledger_callback(ledger: Ledger):
    Callback = _import_tune_callback()

    class LedgerCallback(Callback):
        """Feeds Tune's events to the Ledger (driver side only)."""

        def __init__(self, ledger: Ledger):
            self.ledger = ledger

        def setup(self, **info):
            self.ledger.load()

        def on_trial_start(self, iteration, trials, trial, **info):
            self.ledger.on_start(trial)

        def on_trial_restore(self, iteration, trials, trial, **info):
            self.ledger.on_start(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.ledger.on_result(trial, result)

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            self.ledger.on_checkpoint(trial, checkpoint)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.ledger.on_end(trial, error=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.ledger.on_end(trial, error=True)

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.ledger.on_recover(trial)

        def on_step_end(self, iteration, trials, **info):
            self.ledger.on_step(trials)

        def on_experiment_end(self, trials, **info):
            self.ledger.on_step(trials)
            self.ledger.save()

    return LedgerCallback(ledger)


def _make_stopper(ledger: Ledger):
    from ray.tune import Stopper

    class ExperimentStopper(Stopper):
        """Stops the whole experiment when the Ledger says so (budget spent, or trials keep failing)."""

        def __init__(self, ledger: Ledger):
            self.ledger = ledger

        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return self.ledger.stop_reason is not None

    return ExperimentStopper(ledger)


# ---------------------------------------------------------------------------------------- searchers


def make_sampler(searcher: str, seed: int, max_trials: int):
    """The Optuna sampler for a searcher name. TPE and GP start model-based sampling after a third of the
    budget (at least 3, at most 10 random trials) instead of Optuna's fixed 10, so small budgets still learn."""
    import optuna

    startup = min(10, max(3, max_trials // 3))
    if searcher == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if searcher == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if searcher == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    if searcher == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            from mae.errors import MissingDependencyError

            raise MissingDependencyError(
                "--algorithm cmaes needs the 'cmaes' package (Optuna's CMA-ES sampler): pip install cmaes"
            ) from None
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            n_startup_trials=min(startup, 3),
            warn_independent_sampling=False,
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
        )
    raise ConfigError(f"unknown searcher {searcher!r}")


def make_scheduler(
    name: str,
    metric: str,
    mode: str,
    *,
    max_epochs: int,
    grace_period: int = 1,
    reduction_factor: float = 3.0,
    space: SearchSpace | None = None,
    perturbation_interval: int | None = None,
    seed: int = 0,
):
    from ray.tune.schedulers import (
        AsyncHyperBandScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        PopulationBasedTraining,
    )

    if name == "fifo":
        return FIFOScheduler()
    if name == "asha":
        return AsyncHyperBandScheduler(
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            max_t=max_epochs,
            grace_period=max(1, min(grace_period, max_epochs)),
            reduction_factor=reduction_factor,
        )
    if name == "hyperband":
        return HyperBandScheduler(
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            max_t=max_epochs,
            reduction_factor=reduction_factor,
        )
    if name == "pbt":
        assert space is not None
        return PopulationBasedTraining(
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            perturbation_interval=perturbation_interval or max(1, max_epochs // 4),
            hyperparam_mutations=pbt_mutations(space),
            custom_explore_fn=PBTExplore(space, seed),
            quantile_fraction=0.25,
            resample_probability=0.25,
            log_config=False,
        )
    raise ConfigError(f"unknown scheduler {name!r}")


class ResampleParameter:
    """PBT's resampling of one parameter: a fresh draw from its domain (picklable, unlike a lambda)."""

    def __init__(self, space: SearchSpace, name: str, seed: int):
        self.space, self.name = space, name
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> Any:
        p = self.space[self.name]
        return trial_values(self.space.without([]), {}, self.rng).get(p.name, p.default)


class PBTExplore:
    """PBT's custom_explore_fn: after Ray's perturbation (x0.8 / x1.2, adjacent choices, resampling), make the
    configuration valid again (bounds, relations such as warmup < num_epochs, conditional parameters)."""

    def __init__(self, space: SearchSpace, seed: int):
        self.space = space
        self.rng = np.random.default_rng(seed + 7)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        values = trial_values(self.space, config, self.rng)
        out = {k: v for k, v in config.items() if k not in self.space}
        out.update(values)
        return out


def pbt_mutations(space: SearchSpace) -> dict[str, Any]:
    """What PBT may mutate: every unconditional parameter; choices shift to a neighbour, numbers are scaled."""
    out: dict[str, Any] = {}
    for i, p in enumerate(space.parameters):
        if p.when:
            continue  # kept as drawn; PBTExplore keeps it consistent with its parent
        dom = space.domain(p, _defaults_for(space))
        values = getattr(dom, "values", None)
        if p.choices is not None or p.kind in ("categorical", "bool"):
            choices = list(p.choices) if p.choices is not None else [False, True]
            out[p.name] = choices
        elif p.power and callable(values):
            out[p.name] = list(values())
        else:
            out[p.name] = ResampleParameter(space, p.name, seed=1000 + i)
    if not out:
        raise ConfigError("pbt: every searched parameter is conditional; PBT needs one it can always mutate")
    return out


def _defaults_for(space: SearchSpace) -> dict[str, Any]:
    return space.sample(np.random.default_rng(0))


def initial_population(
    space: SearchSpace, n: int, seed: int, start: Sequence[Mapping[str, Any]] = ()
) -> list[dict]:
    """PBT's first configurations: `start` (the best of earlier rounds, perturbed) then draws from the space."""
    rng = np.random.default_rng(seed)
    explore = PBTExplore(space, seed)
    out: list[dict] = []
    for cfg in list(start)[:n]:
        perturbed = {}
        for k, v in cfg.items():
            if isinstance(v, float) and k in space:
                v = v * float(rng.choice([0.8, 1.2]))
            perturbed[k] = v
        out.append(explore(perturbed))
    while len(out) < n:
        out.append(space.sample(rng))
    return out


# ------------------------------------------------------------------------------------ Ray and storage


def storage_location(storage: str | None, files: ExperimentFiles) -> tuple[str, Any, str]:
    """(storage_path for Tune, pyarrow filesystem or None, the URI to show). `s3://bucket/prefix` gets an S3
    filesystem that reads credentials from the standard AWS chain on each node (never pickled into the
    experiment) and the endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (S3-compatible stores)."""
    if not storage:
        path = files.default_storage
        path.mkdir(parents=True, exist_ok=True)
        return str(path), None, str(path)
    if storage.startswith("s3://"):
        import pyarrow.fs as pafs

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, Any] = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(
                endpoint_override=host.rstrip("/") if host else scheme, scheme=scheme if host else "https"
            )
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        fs = pafs.S3FileSystem(**kwargs)
        return storage[len("s3://") :].rstrip("/"), fs, storage.rstrip("/")
    if "://" in storage:
        raise ConfigError(f"--storage {storage!r}: use a local folder or s3://bucket/prefix")
    path = Path(os.path.expanduser(storage)).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path), None, str(path)


def _filesystem_for(storage_uri: str | None) -> tuple[Any, str | None]:
    """The filesystem for checkpoint paths recorded under `storage_uri` (None: local)."""
    if storage_uri and storage_uri.startswith("s3://"):
        _, fs, _ = storage_location(storage_uri, ExperimentFiles(Path(".")))
        return fs, storage_uri
    return None, storage_uri


@dataclass
class RaySession:
    started_here: bool
    trial_slots: bool  # the cluster has our `trial_slot` resource (local Ray started by the runner)
    gpus: float
    cpus: float
    address: str | None


RUNTIME_ENV_VARS = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",  # trials keep the driver's working directory (paths are absolute anyway)
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


def start_ray(options: SearchOptions, trial_slots: int) -> RaySession:
    """Local Ray (with the dashboard: Ray Train needs its state API to release stopped trials' resources) or
    the cluster at --address. A Ray already started by the caller is used as it is."""
    import ray

    for k, v in RUNTIME_ENV_VARS.items():
        os.environ.setdefault(k, v)
    # Snapshot the experiment at least every 2 s, so a killed driver loses little (finished trials that the
    # last snapshot missed are still kept: see TrialContext.done).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not options.verbose:
        # failures are reported by the ledger, one line each (the tracebacks stay in the trials' error files)
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        for name in ("ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.WARNING)
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "log_to_driver": options.verbose,
            "logging_level": logging.INFO if options.verbose else logging.WARNING,
            "runtime_env": {"env_vars": dict(RUNTIME_ENV_VARS)},
        }
        address = options.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(
                address="local",  # a new local Ray, never another one that happens to run on this machine
                resources={"trial_slot": trial_slots},
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                **kwargs,
            )
        started = True
    res = ray.cluster_resources()
    return RaySession(
        started_here=started,
        trial_slots="trial_slot" in res,
        gpus=float(res.get("GPU", 0)),
        cpus=float(res.get("CPU", 0)),
        address=options.address,
    )


def _stop_orphans(exp: Mapping[str, Any]) -> list[int]:
    """Processes of the local Ray that a killed driver left behind (recorded at start), ended by their id."""
    ended = []
    for pid in exp.get("ray_pids") or []:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        session = exp.get("ray_session") or ""
        if not session or session not in cmdline:
            continue  # not a process of that Ray session (the id may have been reused)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            ended.append(pid)
    return ended


def _local_ray_pids() -> tuple[list[int], str]:
    try:
        import ray._private.worker as w

        node = w._global_node
        pids = []
        for infos in node.all_processes.values():
            for info in infos:
                pids.append(info.process.pid)
        return pids, os.path.basename(node.get_session_dir_path())
    except Exception:  # private API: best effort only
        return [], ""


# ------------------------------------------------------------------------------------------- the run


def _fingerprint(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _absolute_overrides(raw: Mapping[str, Any]) -> list[str]:
    """Overrides that make the spec's local paths absolute, so trials (whose working directory differs) and
    other nodes read the same files."""
    from mae.spec import get_path

    out = []
    for key in (
        "dataset.train_data_sources",
        "dataset.val_data_sources",
        "train.pretrained_model_path",
    ):
        value = get_path(raw, key)
        if isinstance(value, str) and value and "://" not in value and not os.path.isabs(value):
            out.append(f"{key}={os.path.abspath(os.path.expanduser(value))}")
        elif isinstance(value, list) and any(
            isinstance(v, str) and "://" not in v and not os.path.isabs(v) for v in value
        ):
            fixed = [
                v if "://" in v or os.path.isabs(v) else os.path.abspath(os.path.expanduser(v)) for v in value
            ]
            out.append(f"{key}={json.dumps(fixed)}")
    return out


def preflight_data(cfg) -> None:
    """Before starting Ray: every local data source exists and a folder holds at least one image (found by a
    scan that stops at the first one), so a typo fails in a second instead of in every trial."""
    from mae.data.sources import is_image_name
    from mae.errors import DataError

    problems = []
    for key in ("train_data_sources", "val_data_sources"):
        value = getattr(cfg.dataset, key)
        for src in [value] if isinstance(value, str) else (value or []):
            if not src or "://" in src:
                continue
            p = Path(os.path.expanduser(src))
            if not p.exists():
                problems.append(f"dataset.{key}={src!r}: no such file or folder")
            elif p.is_dir() and not any(is_image_name(name) for _, _, names in os.walk(p) for name in names):
                problems.append(f"dataset.{key}={src!r}: the folder holds no images")
    if problems:
        raise DataError("\n".join(problems))


def _max_epochs(plan) -> int:
    if "train.num_epochs" in plan.space:
        p = plan.space["train.num_epochs"]
        return int(p.high if p.choices is None else max(p.choices))
    return int(plan.config.train.num_epochs)


def _trial_dirname(trial) -> str:
    return trial.trial_id


def run(
    spec: str | os.PathLike | Mapping | None,
    overrides: Iterable[str] = (),
    options: SearchOptions | None = None,
    **kwargs: Any,
) -> AutoMLResult:
    """`automl run`: route by the policy, then search (or resume, or extend), then deploy the best model.

    `options` (or keyword arguments with the same names) are SearchOptions. Returns an AutoMLResult; raises
    MAEError subclasses for what a user can fix (ConfigError exits 2 on the CLI)."""
    from automl.policy import resolve_policy

    options = dataclasses.replace(options or SearchOptions(), **kwargs)
    overrides = list(overrides)
    decision = resolve_policy(options.policy)
    (log.warning if decision.warning else log.info)(decision.reason)
    if not decision.use_automl:
        return _train_directly(spec, overrides)
    return _search(spec, overrides, options, decision)


def _train_directly(spec, overrides: list[str]) -> AutoMLResult:
    from mae.actions.train import run as train
    from mae.spec import load_spec

    cfg = load_spec(spec, overrides, action="train")
    result = train(cfg)
    return AutoMLResult("direct", Path(cfg.results_dir).resolve(), train=result)


def _validate_options(options: SearchOptions) -> list[str]:
    problems = []
    if options.max_trials < 1:
        problems.append(f"--max-trials {options.max_trials}: must be at least 1")
    if options.time_budget is not None and options.time_budget <= 0:
        problems.append(f"--time-budget {options.time_budget:g}: must be > 0 seconds")
    if options.gpu_hours is not None and options.gpu_hours <= 0:
        problems.append(f"--gpu-hours {options.gpu_hours:g}: must be > 0")
    if options.max_concurrent is not None and options.max_concurrent < 1:
        problems.append(f"--max-concurrent {options.max_concurrent}: must be at least 1")
    if options.extend is not None and options.extend < 1:
        problems.append(f"--extend {options.extend}: must be at least 1")
    if options.cpus_per_trial <= 0:
        problems.append(f"--cpus-per-trial {options.cpus_per_trial:g}: must be > 0")
    if options.gpus_per_trial is not None and not 0 < options.gpus_per_trial:
        problems.append(f"--gpus-per-trial {options.gpus_per_trial:g}: must be > 0 (a fraction shares a GPU)")
    if (
        options.gpus_per_trial is not None
        and options.gpus_per_trial > 1
        and options.gpus_per_trial != int(options.gpus_per_trial)
    ):
        problems.append(f"--gpus-per-trial {options.gpus_per_trial:g}: a fraction below 1 or a whole number")
    if options.max_retries < 0:
        problems.append(f"--max-retries {options.max_retries}: must be >= 0")
    if options.reduction_factor <= 1:
        problems.append(f"--reduction-factor {options.reduction_factor:g}: must be > 1")
    if options.grace_period < 1:
        problems.append(f"--grace-period {options.grace_period}: must be at least 1 epoch")
    return problems


def _search(spec, overrides: list[str], options: SearchOptions, decision) -> AutoMLResult:
    from automl.space import plan_search
    from mae.spec import build_raw, read_yaml

    problems = _validate_options(options)
    if problems:
        raise ConfigError(problems)
    algorithm = resolve_algorithm(options.algorithm, options.scheduler)
    if algorithm.note:
        print(f"automl: --algorithm {algorithm.requested}: {algorithm.note}")
    skill_metric = (decision.skill_info or {}).get("monitoring_metric") or "train_loss"
    plan = plan_search(
        spec,
        overrides,
        params=options.params,
        space_file=options.search_space,
        metric=options.metric,
        mode=options.mode,
        allow_objective_change=options.allow_objective_change,
        skill_metric=skill_metric,
    )
    for notice in plan.notices:
        print(f"automl: {notice}")
    preflight_data(plan.config)
    raw, _ = build_raw(spec, overrides)
    spec_data = (
        copy.deepcopy(dict(spec)) if isinstance(spec, Mapping) else (read_yaml(spec) if spec else None)
    )
    results_dir = Path(os.path.expanduser(plan.config.results_dir)).resolve()
    files = ExperimentFiles(results_dir)
    fixed_overrides = _absolute_overrides(raw)
    base_overrides = tuple([*overrides, *fixed_overrides, f"results_dir={results_dir}"])
    seed = options.seed if options.seed is not None else plan.config.train.seed
    t = plan.config.train
    workers = t.num_gpus * t.num_nodes
    max_epochs = _max_epochs(plan)
    space_text = Path(options.search_space).read_text() if options.search_space else None
    fingerprint = _fingerprint(
        {
            "spec": raw,
            "params": list(options.params),
            "space_file": space_text,
            "space": plan.space.describe(),
            "searcher": algorithm.searcher,
            "scheduler": algorithm.scheduler,
            "metric": plan.metric,
            "mode": plan.mode,
            "seed": seed,
            "workers": workers,
        }
    )

    exp = files.read("experiment")
    if exp is not None and exp.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{files.root} holds an AutoML experiment started with other settings "
            f"({exp.get('command_summary', 'another spec or search')}); rerun that command to resume it, "
            "add --extend N to it to search further, or choose another results_dir"
        )
    if exp is None and options.extend:
        raise ConfigError(f"--extend {options.extend}: there is no experiment in {files.root} to extend yet")
    rounds: list[dict[str, Any]] = exp["rounds"] if exp else []
    pending = [r for r in rounds if r["status"] != "finished"]
    if exp is not None and not pending and not options.extend:
        print(
            f"automl: the experiment in {files.root} is finished ({_count_trials(files)} trials); "
            "showing its results (add --extend N to search N more trials)"
        )
        summary = _finish(files, plan, algorithm, options, spec_data, base_overrides, redeploy=False)
        return _result(files, summary)

    if options.gpu_hours is not None:
        pass  # checked once Ray is up (it knows whether there are GPUs)

    # ---- Ray
    if exp is not None:
        ended = _stop_orphans(exp)
        if ended:
            print(f"automl: stopped {len(ended)} Ray processes left behind by the interrupted run")
    slots = options.max_concurrent or 10_000
    session = start_ray(options, slots)
    try:
        if options.gpu_hours is not None and session.gpus == 0:
            raise ConfigError(
                f"--gpu-hours {options.gpu_hours:g}: this Ray cluster has no GPU, so no GPU-hours would ever be "
                "spent; limit the search by wall-clock time with --time-budget SECONDS instead"
                + (" (if your cluster autoscales GPU nodes, start one first)" if options.address else "")
            )
        if options.gpus_per_trial and session.gpus == 0 and not options.address:
            raise ConfigError(
                f"--gpus-per-trial {options.gpus_per_trial:g}: this machine has no GPU for Ray; drop the flag "
                "(trials then train on the CPU)"
            )
        use_gpu = session.gpus > 0 or (options.gpus_per_trial or 0) > 0
        gpus_per_trial = (options.gpus_per_trial or 1.0) if use_gpu else 0.0
        gpus_held = gpus_per_trial if workers == 1 else (workers * 1.0 if use_gpu else 0.0)

        storage_path, storage_fs, storage_uri = storage_location(
            options.storage or (exp or {}).get("storage"), files
        )
        from automl.tracking import ExperimentTracker, run_context_tags

        tracker = ExperimentTracker(
            results_dir, plan.config.model_name, (exp or {}).get("mlflow_parent_run_id")
        )
        if exp is None:
            exp = {
                "version": STATE_VERSION,
                "created": _now(),
                "fingerprint": fingerprint,
                "command_summary": f"metric {plan.metric} ({plan.mode}), {algorithm.name}, "
                f"{len(plan.space)} parameters",
                "spec": str(Path(spec).resolve()) if isinstance(spec, (str, os.PathLike)) else None,
                "overrides": list(overrides),
                "metric": plan.metric,
                "mode": plan.mode,
                "stage": plan.stage,
                "algorithm": dataclasses.asdict(algorithm),
                "space": plan.space.describe(),
                "space_names": plan.space.names,
                "notices": plan.notices,
                "seed": seed,
                "storage": storage_uri,
                "workers_per_trial": workers,
                "max_epochs": max_epochs,
                "rounds": [],
                "budgets": {},
            }
            tags = run_context_tags(plan.config)
            tracker.start_parent(
                params={
                    "metric": plan.metric,
                    "mode": plan.mode,
                    "algorithm": algorithm.requested,
                    "searcher": algorithm.searcher,
                    "scheduler": algorithm.scheduler,
                    "policy": decision.policy,
                    "max_trials": options.max_trials,
                    "time_budget_s": options.time_budget,
                    "gpu_hours": options.gpu_hours,
                    "max_concurrent": options.max_concurrent,
                    "seed": seed,
                    "space_file": str(plan.space_file) if plan.space_file else None,
                    **{f"space.{p.name}": p.describe() for p in plan.space},
                },
                tags={**tags, "policy_reason": decision.reason, "automl.experiment": str(files.root)},
            )
            exp["mlflow_parent_run_id"] = tracker.parent_run_id
        for r in pending:
            if not options.extend and options.max_trials != r["trials"]:
                print(
                    f"automl: resuming {r['name']} with its {r['trials']} trials (--max-trials "
                    f"{options.max_trials} applies to new experiments; add trials with --extend N)"
                )
        if not pending or options.extend:
            n = options.extend if options.extend else options.max_trials
            rounds.append(
                {"name": f"round-{len(rounds) + 1}", "trials": n, "status": "running", "started": _now()}
            )
            exp["rounds"] = rounds
        current = [r for r in rounds if r["status"] != "finished"]
        pids, session_name = _local_ray_pids() if session.started_here and not options.address else ([], "")
        exp["ray_pids"], exp["ray_session"] = pids, session_name
        for r in current:
            exp["budgets"][r["name"]] = options.budget()
        _atomic_write_json(files.experiment, exp)
        tracker.resume_parent()

        ctx = TrialContext(
            spec=spec_data,
            overrides=base_overrides,
            results_dir=str(results_dir),
            metric=plan.metric,
            mode=plan.mode,
            space=plan.space,
            workers=workers,
            use_gpu=use_gpu,
            cpus_per_worker=options.cpus_per_trial,
            gpus_per_worker=1.0,
            storage_path=(storage_path.rstrip("/") + "/train-runs") if workers > 1 else None,
            storage_filesystem=storage_fs if workers > 1 else None,
            callbacks=tuple(options.trial_callbacks),
            done=_finished_trials(files),
        )
        interrupted = False
        for r in current:
            print(
                f"automl: {'resuming' if _round_exists(storage_path, storage_fs, r['name']) else 'starting'} "
                f"{r['name']}: {r['trials']} trials, {algorithm.searcher} + {algorithm.scheduler}, "
                f"{plan.metric} ({plan.mode}), up to {max_epochs} epochs each; results in {files.root}"
            )
            interrupted = _run_round(
                r,
                files=files,
                plan=plan,
                options=options,
                algorithm=algorithm,
                ctx=ctx,
                seed=seed,
                session=session,
                storage=(storage_path, storage_fs),
                max_epochs=max_epochs,
                gpus_held=gpus_held,
                tracker=tracker,
            )
            if interrupted:
                break
            r["status"] = "finished"
            r["ended"] = _now()
            _atomic_write_json(files.experiment, exp)
    finally:
        if session.started_here:
            import ray

            ray.shutdown()
    if interrupted:
        print(f"automl: interrupted; rerun the same command to resume (state in {files.root})")
        raise KeyboardInterrupt
    summary = _finish(files, plan, algorithm, options, spec_data, base_overrides, redeploy=True)
    return _result(files, summary)


def _finished_trials(files: ExperimentFiles) -> dict[str, dict[str, Any]]:
    """Trials the record shows finished ({trial_id: {status, failure}}): if Tune's last snapshot before a crash
    missed their end, the resumed experiment would run them again; the trial function returns at once instead
    (or fails again with the recorded reason)."""
    state = files.read("state") or {}
    return {
        tid: {"status": t["status"], "failure": t.get("failure")}
        for tid, t in state.get("trials", {}).items()
        if t.get("status") in _FINAL
    }


def _round_exists(storage_path: str, fs: Any, name: str) -> bool:
    from ray.tune import Tuner

    path = f"s3://{storage_path}/{name}" if fs is not None else os.path.join(storage_path, name)
    with contextlib.suppress(Exception):
        return Tuner.can_restore(path, storage_filesystem=fs) if fs is not None else Tuner.can_restore(path)
    return False


def _count_trials(files: ExperimentFiles) -> int:
    return len((files.read("state") or {}).get("trials", {}))


def _result(files: ExperimentFiles, summary: dict[str, Any]) -> AutoMLResult:
    return AutoMLResult(
        "automl", files.results_dir, summary=summary, summary_path=files.summary, best=summary.get("best")
    )


def _run_round(
    r: dict[str, Any],
    *,
    files: ExperimentFiles,
    plan,
    options: SearchOptions,
    algorithm: Algorithm,
    ctx: TrialContext,
    seed: int,
    session: RaySession,
    storage: tuple[str, Any],
    max_epochs: int,
    gpus_held: float,
    tracker,
) -> bool:
    """One Tuner run (a fresh round, or the restore of an interrupted one). Returns True when interrupted."""
    from ray import tune
    from ray.tune.execution.placement_groups import PlacementGroupFactory
    from ray.tune.search import ConcurrencyLimiter

    storage_path, storage_fs = storage
    name = r["name"]
    path = f"s3://{storage_path}/{name}" if storage_fs is not None else os.path.join(storage_path, name)

    # resources of one trial
    if ctx.workers > 1:
        bundle: dict[str, float] = {"CPU": 0}
        if session.trial_slots:
            bundle["trial_slot"] = 1
        else:
            bundle["CPU"] = 0.01  # a driver that only waits on its workers
    else:
        bundle = {"CPU": options.cpus_per_trial}
        if ctx.use_gpu:
            bundle["GPU"] = options.gpus_per_trial or 1.0
        if session.trial_slots:
            bundle["trial_slot"] = 1
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, ctx=ctx), PlacementGroupFactory([bundle])
    )

    ledger = Ledger(
        files,
        name,
        plan.metric,
        plan.mode,
        max_epochs=max_epochs,
        gpus_per_trial=gpus_held,
        max_consecutive_failures=options.max_consecutive_failures,
        progress_interval_s=options.progress_interval_s,
        space_names=plan.space.names,
    )
    callbacks = [
        _make_ledger_callback(ledger),
        tracker.tune_callback(ctx, plan.metric, plan.mode, max_epochs, name),
    ]

    if _round_exists(storage_path, storage_fs, name):
        tuner = tune.Tuner.restore(
            path,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            storage_filesystem=storage_fs,
        )
    else:
        tuner = _new_tuner(
            r,
            files=files,
            plan=plan,
            options=options,
            algorithm=algorithm,
            seed=seed,
            session=session,
            storage=storage,
            max_epochs=max_epochs,
            trainable=trainable,
            callbacks=callbacks,
            stopper=_make_stopper(ledger),
            # A paused HyperBand trial gives its slot back and resumes from its checkpoint (a reused actor would
            # keep it in memory); multi-worker trials gain nothing from reuse (their workers start anew).
            reuse=ctx.workers == 1 and algorithm.scheduler != "hyperband",
            concurrency_limiter=ConcurrencyLimiter,
        )
    try:
        tuner.fit()
    except KeyboardInterrupt:
        return True
    state = files.read("state") or {}
    reason = (state.get("rounds", {}).get(name) or {}).get("stop_reason")
    if reason:
        print(f"automl: stopped early: {reason}")
    return False


def _new_tuner(
    r,
    *,
    files,
    plan,
    options,
    algorithm,
    seed,
    session,
    storage,
    max_epochs,
    trainable,
    callbacks,
    stopper,
    reuse,
    concurrency_limiter,
):
    from ray import tune

    storage_path, storage_fs = storage
    n = int(r["trials"])
    scheduler = make_scheduler(
        algorithm.scheduler,
        plan.metric,
        plan.mode,
        max_epochs=max_epochs,
        grace_period=options.grace_period,
        reduction_factor=options.reduction_factor,
        space=plan.space,
        perturbation_interval=options.perturbation_interval,
        seed=seed,
    )
    # HyperBand fills each bracket before it decides, and PBT time-shares its population: a concurrency
    # limiter would keep the trials those need from ever being created. Their concurrency comes from the
    # resources instead (the local `trial_slot` resource stands for --max-concurrent).
    limit_by_searcher = algorithm.scheduler not in ("hyperband", "pbt")
    if not limit_by_searcher and options.max_concurrent and not session.trial_slots:
        print(
            f"automl: --max-concurrent is not applied with {algorithm.scheduler} on this cluster (its brackets "
            "need every trial created); the cluster's resources limit how many run at once"
        )
    if algorithm.searcher == "pbt":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        start = _best_configs(files, plan.mode, n)
        population = initial_population(plan.space, n, seed + zlib.crc32(r["name"].encode()), start)
        search_alg = BasicVariantGenerator(points_to_evaluate=population)
        param_space = {name: None for name in plan.space.names}  # the keys the population fills in
    else:
        param_space = None
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        from ray.tune.search.optuna import OptunaSearch

        from automl.space import define_by_run

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        files.root.mkdir(parents=True, exist_ok=True)
        searcher = OptunaSearch(
            space=define_by_run(plan.space),
            metric=plan.metric,
            mode=plan.mode,
            sampler=make_sampler(algorithm.searcher, seed + zlib.crc32(r["name"].encode()) % 10_000, n),
            storage=JournalStorage(JournalFileBackend(str(files.journal))),
            study_name="automl",
        )
        search_alg = searcher
        max_concurrent = options.max_concurrent if limit_by_searcher else None
        if max_concurrent:
            search_alg = concurrency_limiter(searcher, max_concurrent=max_concurrent)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=n,
            reuse_actors=reuse,
            trial_dirname_creator=_trial_dirname,
            trial_name_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=r["name"],
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            callbacks=callbacks,
            stop=stopper,
            verbose=1 if options.verbose else 0,
            failure_config=tune.FailureConfig(max_failures=options.max_retries),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=3, checkpoint_score_attribute=plan.metric, checkpoint_score_order=plan.mode
            ),
        ),
    )


def _best_configs(files: ExperimentFiles, mode: str, n: int) -> list[dict[str, Any]]:
    """The configurations of the best trials so far (for PBT's warm start in --extend)."""
    state = files.read("state") or {}
    done = [t for t in state.get("trials", {}).values() if t.get("best")]
    done.sort(key=lambda t: t["best"]["value"], reverse=(mode == "max"))
    return [t["config"] for t in done[:n]]


# ----------------------------------------------------------------------------------- after the search


def _finish(files, plan, algorithm, options, spec_data, base_overrides, *, redeploy: bool) -> dict[str, Any]:
    """summary.json, best/ (spec, checkpoint, ONNX, engine), plots and the MLflow parent's record; prints
    the best trial."""
    from automl.deploy import deploy_best
    from automl.tracking import ExperimentTracker, write_plots

    exp = files.read("experiment") or {}
    state = files.read("state") or {"trials": {}, "rounds": {}}
    mode = exp.get("mode", plan.mode)
    metric = exp.get("metric", plan.metric)
    best = best_trial(state, mode)
    old = files.read("summary")
    deploy: dict[str, Any] | None = (old or {}).get("deploy") if not redeploy else None
    if (
        best is not None
        and options.deploy
        and (redeploy or deploy is None or (old or {}).get("best", {}).get("trial_id") != best["trial_id"])
    ):
        fs, _ = _filesystem_for(exp.get("storage"))
        ctx = TrialContext(
            spec=spec_data,
            overrides=base_overrides,
            results_dir=str(files.results_dir),
            metric=metric,
            mode=mode,
            space=plan.space,
        )
        deploy = deploy_best(files, best, ctx, storage_filesystem=fs)
    plots = write_plots(files, state, plan.space, metric, mode)
    summary = build_summary(files, exp, state, best, deploy, plots)
    _atomic_write_json(files.summary, summary)
    tracker = ExperimentTracker(files.results_dir, plan.config.model_name, exp.get("mlflow_parent_run_id"))
    tracker.finish_parent(summary, files, plots)
    print(format_summary(summary))
    return summary


def build_summary(
    files: ExperimentFiles,
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
    return out


def _tracking_uri(files: ExperimentFiles) -> str:
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
    if s and status.get("finished") and (s.get("deploy") or {}).get("onnx_file"):
        lines.append(f"best model: {s['deploy']['onnx_file']}")
    return "\n".join(lines)
