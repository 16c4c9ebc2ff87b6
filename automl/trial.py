"""One AutoML trial: a `mae` training run inside a Ray Tune trial that reports every epoch with a checkpoint.

    tune.with_parameters(train_trial, ctx=TrialContext(...))     # the Tune function of the search

A trial turns Tune's config (flat dotted keys from the Optuna define-by-run function, or PBT's mutated values)
into a spec with `automl.space.trial_spec`, trains it in `<results_dir>/automl/trials/<trial_id>`, and after
every epoch reports the epoch's metrics (train_loss, val_loss, knn_acc or ACC_all, images/s, peak memory) with a
Tune checkpoint: the Lightning checkpoint of that epoch. Tune keeps the best few checkpoints of each trial by
the search metric plus the latest, so:
  - a paused trial (HyperBand, PBT) or a restored one (a retry, a resumed experiment) continues from its latest
    checkpoint, PBT's exploit restores another trial's checkpoint with mutated values (the module re-applies
    the new optimizer settings after the restore), and the best epoch of the best trial is what gets exported;
  - with storage on S3 no node needs a shared file system: checkpoints travel through the storage.

Resources: a single-device trial (train.num_gpus 1, num_nodes 1) trains in-process in its Tune actor (actors
are reused between trials); a multi-GPU or multi-node trial runs a Ray Train `TorchTrainer` with one worker
per device from inside the Tune function, and its workers' resources go back when a scheduler stops it.

Failures are recorded as one line with a kind, `[nan]`, `[oom]`, `[no-metric]` or `[error]`, at the start of the
exception's message. A NaN loss or a trial that never logs the metric fails the same way on every retry, so
the trial leaves a `failure.json` in its folder and a retry fails at once instead of training again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from automl.multi_objective import INFEASIBLE, INFEASIBLE_REASON, VIOLATION, WEIGHTED, Goals, shape_key
from automl.parameters import is_number
from automl.plan import ResolvedSpec, trial_results_dir, trial_spec
from automl.space import SearchSpace
from mae.config import ExperimentConfig
from mae.fileio import atomic_write_json
from mae.layout import TUNE_CHECKPOINT_FILE as CHECKPOINT_FILE
from mae.layout import TUNE_EPOCH_FILE as EPOCH_FILE
from mae.metrics import METRIC_MODES, MONITORS

log = logging.getLogger("automl")

FAILURE_FILE = "failure.json"  # in a trial folder: a failure that a retry would only repeat
INFEASIBLE_FILE = "infeasible.json"  # in a trial folder: refused before training (a deploy constraint)
DETERMINISTIC_FAILURES = ("nan", "no-metric")
FAILURE_KINDS = ("nan", "oom", "no-metric", "error")


class TrialFailure(RuntimeError):
    """A trial that failed for a reason the experiment records: `kind` is one of FAILURE_KINDS."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        self.reason = message
        super().__init__(f"[{kind}] {message}")

    def __reduce__(self):  # crosses process boundaries inside Ray errors
        return (TrialFailure, (self.kind, self.reason))


def failure_of(text: str | None) -> tuple[str, str]:
    """(kind, one-line reason) from an exception's text (a Ray error carries the whole traceback)."""
    if not text:
        return "error", "the trial ended with an error"
    for line in reversed(str(text).strip().splitlines()):
        for kind in FAILURE_KINDS:
            tag = f"[{kind}] "
            if tag in line:
                return kind, line.split(tag, 1)[1].strip()
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else str(text)
    if "OutOfMemoryError" in last or "out of memory" in last.lower():
        return "oom", last
    return "error", last[:500]


def error_text(trial: Any) -> str | None:
    """The text of a Tune trial's latest error: its local error file (written at once, before the upload to
    the experiment storage that `Trial.get_error` reads), else the stored copy."""
    path = getattr(trial, "error_file", None)
    if path:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            pass
    getter = getattr(trial, "get_error", None)
    try:
        return getter() if getter else None
    except Exception:  # storage unreachable: the reason is then unknown, the failure still recorded
        return None


# ------------------------------------------------------------------------------------------- context


@dataclass(frozen=True)
class TrialContext:
    """What every trial of an experiment shares (sent once to the workers through the object store)."""

    spec: ResolvedSpec  # the user's spec with its overrides, absolute paths and results_dir (built once)
    results_dir: str  # the experiment's results_dir (absolute)
    metric: str
    mode: str
    space: SearchSpace  # bound to the spec's values
    workers: int = 1  # > 1: a Ray Train TorchTrainer with this many workers (one per GPU, or CPU process)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    storage_path: str | None = None  # where multi-worker trials keep Ray Train's own run state
    storage_filesystem: Any = None
    monitor: bool = (
        True  # set train.optim.monitor_name to the metric (the trial's best.ckpt is the best epoch)
    )
    callbacks: tuple[str, ...] = ()  # "module:factory" of extra Lightning callbacks, factory(cfg) -> Callback
    goals: Goals | None = None  # objectives and constraints (None: the single `metric`)
    deploy: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # shape_key -> deploy metrics
    done: Mapping[str, Any] = field(default_factory=dict)  # trials that finished before a crash: not rerun


def load_callbacks(specs: tuple[str, ...] | list[str], cfg: ExperimentConfig) -> list[Any]:
    """Instantiate extra trial callbacks: each "package.module:factory" is imported (on the node that runs the
    trial, so it must be installed there or shipped with the job's runtime_env) and called with the trial's
    spec; it returns a Lightning callback."""
    import importlib

    out = []
    for text in specs:
        module, sep, name = text.partition(":")
        if not sep or not module or not name:
            raise TrialFailure("error", f"trial callback {text!r}: expected 'package.module:factory'")
        factory = getattr(importlib.import_module(module), name)
        out.append(factory(cfg))
    return out


def trial_values(space: SearchSpace, config: Mapping[str, Any], rng: Any = None) -> dict[str, Any]:
    """The searched values of a Tune config, made valid for the space: keys the space does not search are
    dropped, inactive conditional parameters left out, a value outside its domain (PBT multiplies values by
    0.8 or 1.2, which can cross a bound or a relation) clipped to the domain or, failing that, resampled."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out: dict[str, Any] = {}
    for p in space.parameters:
        if not space.active(p, out):
            continue
        dom = space.domain(p, out)
        v = config.get(p.name)
        if v is not None and not dom.contains(v) and is_number(v) and p.choices is None:
            lo, hi = dom.lowest(), dom.highest()
            c = min(max(v, lo), hi)
            v = int(round(c)) if p.kind == "int" else float(c)
        if v is None or not dom.contains(v):
            v = dom.sample(gen)
        out[p.name] = _plain(v)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def build_trial_spec(ctx: TrialContext, values: Mapping[str, Any], trial_id: str) -> ExperimentConfig:
    """The spec this trial trains (in its own folder, monitoring the search metric when the spec can)."""
    extra = {"train.optim.monitor_name": ctx.metric} if ctx.monitor and ctx.metric in MONITORS else None
    return trial_spec(ctx.spec, values, trial_results_dir(ctx.results_dir, trial_id), extra)


# ------------------------------------------------------------------------------------ epoch reports


def _peak_host_memory_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class EpochReporter:
    """The Lightning callback of a trial: after each epoch (validation included), saves a checkpoint into a
    temporary folder and hands it with the epoch's metrics to `report(metrics, checkpoint_dir)` (Tune's or
    Ray Train's). Epochs that do not log the metric (validation every N epochs) are not reported."""

    def __init__(
        self,
        metric: str,
        report: Callable[[dict[str, float], str | None], None],
        static: Mapping[str, float] | None = None,
        goals: Goals | None = None,
    ):
        import pytorch_lightning as pl

        class _Callback(pl.Callback):
            def on_train_epoch_end(cb, trainer, pl_module):  # noqa: N805
                self._epoch_end(trainer)

        self.callback = _Callback()
        self.metric = metric
        self.report = report
        self.extra: dict[str, float] = {}  # from EpochRecorder's hook: time, images/s, peak memory
        self.static = dict(static or {})  # the same every epoch: the trial's deploy metrics
        self.goals = goals
        self.reported = 0
        self.seen: set[str] = set()

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.extra = dict(metrics)

    def _epoch_end(self, trainer) -> None:
        from mae.engine.callbacks import epoch_metrics

        if trainer.sanity_checking:
            return
        metrics = {**epoch_metrics(trainer), **self.extra, **self.static}
        if self.goals is not None and self.goals.weights:
            score = self.goals.weighted(metrics)
            if score is not None:
                metrics[WEIGHTED] = score
        metrics["epoch"] = trainer.current_epoch
        metrics["step"] = trainer.global_step
        metrics["peak_host_memory_gb"] = _peak_host_memory_gb()
        self.extra = {}
        self.seen.update(metrics)
        value = metrics.get(self.metric)
        if value is None:
            trainer.strategy.barrier()
            return
        if not math.isfinite(value):
            raise TrialFailure(
                "nan",
                f"{self.metric} became {value} at epoch {trainer.current_epoch}: training diverged; lower "
                "train.optim.lr, add warmup (train.optim.warmup_epochs) or use fp32",
            )
        tmp = tempfile.mkdtemp(prefix="automl-ckpt-")
        try:
            trainer.save_checkpoint(os.path.join(tmp, CHECKPOINT_FILE), weights_only=False)
            if trainer.is_global_zero:
                with open(os.path.join(tmp, EPOCH_FILE), "w") as f:
                    json.dump({k: v for k, v in metrics.items() if math.isfinite(v)}, f)
            self.report(metrics, tmp if trainer.is_global_zero else None)
            self.reported += 1
            trainer.strategy.barrier()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _node_id() -> str | None:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (never in a trial)
        return None


def _tune_report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
    from ray import tune

    ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    tune.report({**metrics, "node_id": _node_id()}, checkpoint=ckpt)


def _train_report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
    import ray.train

    ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report({**metrics, "node_id": _node_id()}, checkpoint=ckpt)


# --------------------------------------------------------------------------------- failure markers


def _write_failure(trial_dir: Path, kind: str, reason: str) -> None:
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / FAILURE_FILE).write_text(json.dumps({"kind": kind, "reason": reason, "time": time.time()}))


def _check_failure(trial_dir: Path) -> None:
    path = trial_dir / FAILURE_FILE
    if path.is_file():
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if info.get("kind") in DETERMINISTIC_FAILURES:
            raise TrialFailure(info["kind"], f"{info.get('reason', '')} (not retried: it would fail again)")


def _classify(exc: BaseException, metric: str, seen: set[str]) -> TrialFailure:
    from mae.engine.modules import NonFiniteLossError

    if isinstance(exc, TrialFailure):
        return exc
    if isinstance(exc, NonFiniteLossError):
        return TrialFailure("nan", str(exc))
    text = f"{type(exc).__name__}: {exc}"
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return TrialFailure("oom", f"out of memory: {str(exc).splitlines()[0] if str(exc) else ''}")
    except AttributeError:
        pass
    if "out of memory" in str(exc).lower():
        return TrialFailure("oom", text.splitlines()[0])
    first = text.splitlines()[0] if text else type(exc).__name__
    return TrialFailure("error", first[:500])


def _no_metric(metric: str, seen: set[str]) -> TrialFailure:
    logged = sorted(k for k in seen if k in METRIC_MODES)
    return TrialFailure(
        "no-metric",
        f"the trial finished without logging {metric!r} (it logged {', '.join(logged) or 'nothing'}); "
        "check --metric, dataset.val_data_sources and train.validation_interval",
    )


# ----------------------------------------------------------------------------------- the function


def restore_dir(trial_dir: Path) -> Path:
    return trial_dir / "restored"


def _prepare_resume(trial_dir: Path, checkpoint: Any) -> Path | None:
    """The Lightning checkpoint to resume from: Tune's checkpoint of this trial (a pause, a retry, a resumed
    experiment, or PBT's exploit of another trial), downloaded into the trial folder. Without one, stale
    checkpoints of an earlier attempt are cleared so that the trial starts from scratch."""
    target = restore_dir(trial_dir)
    shutil.rmtree(target, ignore_errors=True)
    if checkpoint is None:
        shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)
        return None
    checkpoint.to_directory(str(target))
    path = target / CHECKPOINT_FILE
    return path if path.is_file() else None


def _note_resume(trial_dir: Path, checkpoint: Path, source: str | None, trial_id: str) -> None:
    """A RESUMED line in the trial's status.json: which Tune checkpoint (and epoch) the trial continues from;
    `from_trial` names another trial when PBT made this one exploit that trial's checkpoint."""
    from mae.engine.callbacks import StatusLog

    try:
        epoch = json.loads((checkpoint.parent / EPOCH_FILE).read_text()).get("epoch")
    except (OSError, ValueError):
        epoch = None
    parts = Path(source or "").parts
    owner = parts[-2] if len(parts) >= 2 else None
    other = owner if owner and owner != trial_id else None
    StatusLog(trial_dir / "status.json").write(
        "RESUMED",
        (
            f"Continuing from trial {other}'s checkpoint (PBT exploit)"
            if other
            else "Resuming from the trial's checkpoint"
        )
        + (f" taken after epoch {int(epoch) + 1}" if epoch is not None else "")
        + ".",
        epoch=epoch,
        checkpoint=source,
        from_trial=other,
    )


def _note_stop(trial_dir: Path) -> None:
    """After the engine's FAILURE line for the SystemExit with which Tune ends a trial's thread: say what it
    was (the last line of status.json is what readers look at)."""
    from mae.engine.callbacks import StatusLog

    StatusLog(trial_dir / "status.json").write(
        "STOPPED",
        "Stopped by the AutoML search (a scheduler's decision, a pause, or the last epoch reported).",
    )


def train_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune function: one trial of the search (see the module docstring)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    finished = ctx.done.get(trial_id)
    if finished is not None:  # finished before the driver was interrupted: keep its results, do not rerun
        failure = finished.get("failure")
        if finished["status"] == "failed" and failure:
            raise TrialFailure(failure["kind"], f"{failure['reason']} (recorded before the interruption)")
        return
    values = trial_values(ctx.space, config, rng=zlib.crc32(trial_id.encode()))
    cfg = build_trial_spec(ctx, values, trial_id)
    trial_dir = Path(cfg.train.results_dir)
    _check_failure(trial_dir)
    deploy = dict(ctx.deploy.get(shape_key(cfg.model.arch, cfg.dataset.augmentation.input_size), {}))
    if deploy and ctx.goals is not None:
        violation, reason = ctx.goals.before_training(deploy)
        if reason:  # feasibility first: never trained
            trial_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(trial_dir / INFEASIBLE_FILE, {"reason": reason, "deploy": deploy})
            _tune_report({**deploy, INFEASIBLE: 1.0, VIOLATION: violation, INFEASIBLE_REASON: reason}, None)
            return
    checkpoint = tune.get_checkpoint()
    resume = _prepare_resume(trial_dir, checkpoint)
    if resume is not None:
        cfg.train.resume_training_checkpoint_path = str(resume)
        _note_resume(trial_dir, resume, getattr(checkpoint, "path", None), trial_id)
    try:
        if ctx.workers > 1:
            _fit_distributed(ctx, cfg, trial_id, deploy)
        else:
            _fit_local(ctx, cfg, deploy)
    except TrialFailure as e:
        if e.kind in DETERMINISTIC_FAILURES:
            _write_failure(trial_dir, e.kind, e.reason)
        raise


def _fit_local(ctx: TrialContext, cfg: ExperimentConfig, deploy: Mapping[str, float]) -> None:
    from mae.engine.trainer import run_training

    reporter = EpochReporter(ctx.metric, _tune_report, static=deploy, goals=ctx.goals)
    try:
        run_training(
            cfg,
            on_epoch=reporter.on_epoch,
            mlflow=False,
            enable_progress_bar=False,
            callbacks=[*load_callbacks(ctx.callbacks, cfg), reporter.callback],
        )
    except SystemExit:  # Tune stops a trial (a scheduler's decision, or its last epoch) by ending its thread
        _note_stop(Path(cfg.train.results_dir))
        raise
    except KeyboardInterrupt:
        raise
    except Exception as e:  # classify every failure (a bug inside a trial must not stop the search)
        raise _classify(e, ctx.metric, reporter.seen) from e
    if reporter.reported == 0 and not cfg.train.resume_training_checkpoint_path:
        raise _no_metric(ctx.metric, reporter.seen)  # (a trial resumed after its last epoch has nothing left)


# ------------------------------------------------------------------------- multi-worker (Ray Train)


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: the same training run, under Ray's DDP strategy and environment."""
    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

    from mae.engine.checkpoints import AtomicCheckpointIO
    from mae.engine.trainer import PRECISION, DevicePlan, run_training

    cfg: ExperimentConfig = loop_config["cfg"]
    metric: str = loop_config["metric"]
    rank = ray.train.get_context().get_world_rank()
    if rank != 0:  # status.json and logs of other ranks go to their own folder
        cfg = cfg.model_copy(deep=True)
        cfg.train.results_dir = os.path.join(cfg.train.results_dir, f"rank-{rank}")
    precision = cfg.train.resolved_precision()
    if not loop_config["use_gpu"] and precision == "fp16":
        precision = "bf16"
    plan = DevicePlan(
        accelerator="gpu" if loop_config["use_gpu"] else "cpu",
        devices="auto",
        num_nodes=1,
        strategy=RayDDPStrategy(find_unused_parameters=True, checkpoint_io=AtomicCheckpointIO()),
        precision=PRECISION[precision],
        plugins=[RayLightningEnvironment()],
    )
    reporter = EpochReporter(
        metric, _train_report, static=loop_config.get("static"), goals=loop_config.get("goals")
    )
    try:
        run_training(
            cfg,
            on_epoch=reporter.on_epoch,
            mlflow=False,
            enable_progress_bar=False,
            callbacks=[*load_callbacks(loop_config.get("callbacks", ()), cfg), reporter.callback],
            device_plan=plan,
        )
    except SystemExit:
        _note_stop(Path(cfg.train.results_dir))
        raise
    except KeyboardInterrupt:
        raise
    except Exception as e:
        raise _classify(e, metric, reporter.seen) from e
    if reporter.reported == 0 and not cfg.train.resume_training_checkpoint_path:
        raise _no_metric(metric, reporter.seen)


class _ForwardReports:
    """A Ray Train callback (it runs in the Train controller): forwards rank 0's metrics and the persisted
    checkpoint of each report to the Tune function through a queue."""

    def __new__(cls, queue: Any):
        from ray.train.v2.api.callback import UserCallback

        class Forward(UserCallback):
            def __init__(self, q):
                self.q = q

            def after_report(self, run_context, metrics, checkpoint):
                item = {"metrics": dict(metrics[0]) if metrics else {}}
                if checkpoint is not None:
                    item["checkpoint"] = (checkpoint.path, checkpoint.filesystem)
                self.q.put(item)

        return Forward(queue)


def _fit_distributed(
    ctx: TrialContext, cfg: ExperimentConfig, trial_id: str, deploy: Mapping[str, float]
) -> None:
    """Train with a Ray Train TorchTrainer of `ctx.workers` workers; its reports become this trial's reports.

    fit() runs in a helper thread while this one forwards each report (metrics and checkpoint) to Tune. When a
    scheduler stops the trial, Tune ends this actor; the Train controller and workers it owns end with it, and
    Ray releases their placement group (through the dashboard's state API, which the runner keeps on)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    resources = {"CPU": ctx.cpus_per_worker}
    if ctx.use_gpu:
        resources["GPU"] = ctx.gpus_per_worker
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "cfg": cfg,
            "metric": ctx.metric,
            "use_gpu": ctx.use_gpu,
            "callbacks": ctx.callbacks,
            "static": dict(deploy),
            "goals": ctx.goals,
        },
        torch_config=TorchConfig(backend="nccl" if ctx.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=ctx.workers, use_gpu=ctx.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=f"{trial_id}-{int(time.time() * 1000)}",
            storage_path=ctx.storage_path,
            storage_filesystem=ctx.storage_filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=0),
            callbacks=[_ForwardReports(queue)],
        ),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # handed to the Tune thread below
            outcome["error"] = e

    thread = threading.Thread(target=fit, name=f"train-{trial_id}", daemon=True)
    thread.start()
    reported = 0
    seen: set[str] = set()
    while True:
        try:
            item = queue.get(timeout=0.5)
        except Empty:
            if not thread.is_alive():
                break
            continue
        metrics = item["metrics"]
        seen.update(metrics)
        ckpt = None
        if "checkpoint" in item:
            path, fs = item["checkpoint"]
            ckpt = tune.Checkpoint(path=path, filesystem=fs)
        tune.report({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, checkpoint=ckpt)
        reported += 1
    thread.join()
    error = outcome.get("error")
    if error is not None:
        text = str(error)
        kind, reason = failure_of(text)
        raise TrialFailure(kind, reason) from error
    if reported == 0 and not cfg.train.resume_training_checkpoint_path:
        raise _no_metric(ctx.metric, seen)
