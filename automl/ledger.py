"""The trial ledger: every trial's config, per-epoch metrics, checkpoints, status and failure, the budget spent
and why the search stopped; kept by the Tune driver, written to state.json as the search goes (what
`automl status` reads and what survives a crash of the driver), and printed as a progress table."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from automl.experiment import FINAL_STATUSES, STATE_VERSION, finite, now, write_json
from automl.multi_objective import INFEASIBLE, INFEASIBLE_REASON
from automl.trial import error_text, failure_of
from mae.layout import ExperimentLayout
from mae.metrics import DEPLOY_METRIC_MODES, EPOCH_KEYS

log = logging.getLogger("automl")


_STATUS = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused"}


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


class Ledger:
    """The experiment's record, kept by the Tune driver: every trial's config, per-epoch metrics, checkpoints,
    status and failure; the budget spent; why the search stopped. Written to state.json after every event (and
    every few seconds), which is what `automl status` reads and what survives a crash of the driver.

    Also the budget guard: `stop_reason` becomes a sentence once the wall-clock or GPU-hour budget is spent or
    `max_consecutive_failures` trials in a row ended without reporting the metric; ExperimentStopper then
    stops the experiment."""

    def __init__(
        self,
        files: ExperimentLayout,
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
            self.round, {"elapsed_s": 0.0, "gpu_hours": 0.0, "stop_reason": None, "started": now()}
        )
        r["stop_reason"] = None
        exp = self.files.read("experiment") or {}
        self.budget = dict((exp.get("budgets") or {}).get(self.round) or {})
        self.stop_reason = None
        self._last_step = None

    def save(self) -> None:
        self.state["updated"] = now()
        write_json(self.files.state, self.state)
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
        rec["started"] = rec["started"] or now()
        self.save()

    def on_result(self, trial, result: Mapping[str, Any]) -> None:
        rec = self.record(trial)
        it = int(result.get("training_iteration", 0))
        entry = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        keep = {k: v for k, v in entry.items() if k in (self.metric, "epoch", "time_total_s", *EPOCH_KEYS)}
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
        if result.get(INFEASIBLE):  # refused before training (a deploy constraint): never trained
            rec["infeasible"] = str(result.get(INFEASIBLE_REASON) or "violates a constraint before training")
            rec["epochs"] = 0
            rec["history"] = {}
            rec["deploy"] = {k: v for k, v in entry.items() if k in DEPLOY_METRIC_MODES}
        if finite(keep.get(self.metric)) is not None:
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
        value = finite(entry.get(self.metric))
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
        rec["ended"] = now()
        if error:
            kind, reason = failure_of(error_text(trial))
            rec["status"] = "failed"
            rec["failure"] = {"kind": kind, "reason": reason}
        elif rec.get("infeasible"):
            rec["status"] = "infeasible"
            rec["failure"] = None
        else:
            rec["status"] = "completed" if rec["epochs"] >= self.max_epochs else "stopped"
            rec["failure"] = None
        if rec["best"] is None and rec["status"] != "infeasible":
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
            if rec.get("round") == self.round and tid not in known and rec["status"] not in FINAL_STATUSES
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
                if rec["status"] != status and rec["status"] not in FINAL_STATUSES:
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
        last = finite((t.get("last") or {}).get(metric))
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
            and finite(b.get("value")) is not None
            and _better(b["value"], best["best"]["value"] if best else None, mode)
        ):
            best = t
    return best


def make_ledger_callback(ledger: Ledger):
    from ray.tune import Callback

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


def make_stopper(ledger: Ledger):
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
