"""`automl run`: route by the policy, plan the search, run it on Ray Tune round by round, then report and deploy.

    result = run("spec.yaml", ["dataset.train_data_sources=/data/train"], SearchOptions(max_trials=8))

What happens (docs/automl.md):
  1. The policy decides (automl.policy): --policy off trains the spec as written and stops there.
  2. The search is planned (automl.plan.plan_search): the bound space, the metric and mode, the notices, and
     the user's spec resolved once for every trial.
  3. An experiment lives in `<results_dir>/automl/` (mae.layout.ExperimentLayout): experiment.json (what was
     asked, the rounds, the MLflow parent run), state.json (every trial, kept by automl.ledger), Ray Tune's own
     state under `ray/` (or `--storage s3://...`), the trials' training folders under `trials/<trial_id>/`, and
     after the search summary.json, best/ and plots/ (automl.report, automl.deploy, automl.tracking).
  4. Rerunning the same command resumes an unfinished experiment (Tuner.restore: finished trials are kept,
     in-flight ones continue from their last checkpoint); a finished one is reported again; `--extend N` adds
     a round of N trials whose searcher is warm-started from every earlier trial (Optuna's study is kept in
     `optuna.journal`; PBT starts its new population from the best configurations so far).
  5. After the search the best trial's best epoch is exported (automl.deploy), MLflow gets the summary and the
     plots (automl.tracking), and the best trial is printed.
Searchers and schedulers: automl.algorithms. The Ray session and storage: automl.ray_session.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl.algorithms import (
    Algorithm,
    check_multi_objective,
    option_notices,
    plan_notices,
    resolve_algorithm,
)
from automl.experiment import (
    STATE_VERSION,
    ExperimentLayout,
    count_trials,
    fingerprint,
    finished_trials,
    now,
    write_json,
)
from automl.finish import finish
from automl.ledger import Ledger, make_ledger_callback, make_stopper
from automl.multi_objective import profile_shapes
from automl.options import SearchOptions
from automl.plan import ResolvedSpec, SearchPlan, absolute_overrides, max_epochs, preflight_data
from automl.ray_session import (
    RaySession,
    check_devices,
    local_ray_pids,
    round_exists,
    start_ray,
    stop_orphans,
    storage_location,
)
from automl.trial import TrialContext, train_trial
from automl.tuner import new_tuner
from automl.warm_start import WarmStart, read_warm_start, seed_study
from mae.errors import ConfigError

log = logging.getLogger("automl")

__all__ = ["AutoMLResult", "SearchOptions", "preflight_data", "run"]


@dataclass
class AutoMLResult:
    route: str  # "automl" or "direct"
    results_dir: Path
    summary: dict[str, Any] | None = None
    summary_path: Path | None = None
    best: dict[str, Any] | None = None
    train: dict[str, Any] | None = None  # the direct training's result (route "direct")


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

    options = (options or SearchOptions()).replace(**kwargs) if kwargs else (options or SearchOptions())
    overrides = list(overrides)
    decision = resolve_policy(options.policy)
    (log.warning if decision.warning else log.info)(decision.reason)
    if not decision.use_automl:
        return _train_directly(spec, overrides)
    search = _prepare(spec, overrides, options, decision)
    exp = _existing_experiment(search)
    if exp is not None and all(r["status"] == "finished" for r in exp["rounds"]) and not options.extend:
        print(
            f"automl: the experiment in {search.files.root} is finished ({count_trials(search.files)} trials); "
            "showing its results (add --extend N to search N more trials)"
        )
        return _result(search.files, finish(search, redeploy=False))
    _run_search(search, exp)
    return _result(search.files, finish(search, redeploy=True))


def _train_directly(spec, overrides: list[str]) -> AutoMLResult:
    from mae.actions.train import run as train
    from mae.spec import load_spec

    cfg = load_spec(spec, overrides, action="train")
    result = train(cfg)
    return AutoMLResult("direct", Path(cfg.results_dir).resolve(), train=result)


@dataclass
class Search:
    """What one `automl run` settled before Ray starts: the plan, the algorithm, the files, the trials' spec."""

    plan: SearchPlan
    algorithm: Algorithm
    options: SearchOptions
    decision: Any  # automl.policy.PolicyDecision
    files: ExperimentLayout
    spec: ResolvedSpec  # the user's spec and overrides, local paths made absolute, results_dir set
    spec_path: str | None
    overrides: list[str]
    seed: int
    workers: int  # devices per trial (num_gpus x num_nodes)
    max_epochs: int
    fingerprint: str
    warm: WarmStart | None = None  # earlier experiments' trials for a new study (--warm-start)
    deploy: dict = dataclasses.field(default_factory=dict)  # shape -> deploy metrics (measured before Ray)


def _prepare(spec, overrides: list[str], options: SearchOptions, decision) -> Search:
    from automl.plan import plan_search

    algorithm = resolve_algorithm(options.algorithm, options.scheduler)
    if algorithm.note:
        print(f"automl: --algorithm {algorithm.requested}: {algorithm.note}")
    for line in option_notices(options, algorithm):
        print(f"automl: {line}")
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
        objectives=options.objectives,
        constraints=options.constraints,
        latency_batch=options.latency_batch,
        pick=options.pick,
        objective_weights=options.objective_weights,
    )
    check_multi_objective(algorithm, plan.goals)
    for notice in plan.notices:
        print(f"automl: {notice}")
    t = plan.config.train
    for line in plan_notices(options, algorithm, t.num_gpus * t.num_nodes, max_epochs(plan)):
        print(f"automl: {line}")
    preflight_data(plan.config)
    results_dir = Path(os.path.expanduser(plan.config.results_dir)).resolve()
    # Trials run elsewhere (another working directory, another node): local paths become absolute.
    base_overrides = [*overrides, *absolute_overrides(plan.spec.raw), f"results_dir={results_dir}"]
    seed = options.seed if options.seed is not None else plan.config.train.seed
    t = plan.config.train
    workers = t.num_gpus * t.num_nodes
    space_text = Path(options.search_space).read_text() if options.search_space else None
    warm = None
    if options.warm_start:
        if algorithm.searcher == "pbt":
            raise ConfigError(
                "--warm-start feeds an Optuna searcher; PBT has none (use --algorithm tpe, gp, ...)"
            )
        warm = read_warm_start(
            options.warm_start, plan.space, stage=plan.stage, metric=plan.metric, mode=plan.mode
        )
    return Search(
        warm=warm,
        plan=plan,
        algorithm=algorithm,
        options=options,
        decision=decision,
        files=ExperimentLayout(results_dir),
        spec=ResolvedSpec.of(spec, base_overrides),
        spec_path=str(Path(spec).resolve()) if isinstance(spec, (str, os.PathLike)) else None,
        overrides=overrides,
        seed=seed,
        workers=workers,
        max_epochs=max_epochs(plan),
        fingerprint=fingerprint(
            {
                "spec": plan.spec.raw,
                "params": list(options.params),
                "space_file": space_text,
                "space": plan.space.describe(),
                "searcher": algorithm.searcher,
                "scheduler": algorithm.scheduler,
                "metric": plan.metric,
                "mode": plan.mode,
                "seed": seed,
                "workers": workers,
                **({"goals": plan.goals.describe()} if plan.goals.several or plan.goals.constraints else {}),
            }
        ),
    )


def _existing_experiment(search: Search) -> dict[str, Any] | None:
    """The experiment already in the results folder (to resume or extend), checked to be this search's."""
    files, options = search.files, search.options
    exp = files.read("experiment")
    if exp is not None and exp.get("fingerprint") != search.fingerprint:
        raise ConfigError(
            f"{files.root} holds an AutoML experiment started with other settings "
            f"({exp.get('command_summary', 'another spec or search')}); rerun that command to resume it, "
            "add --extend N to it to search further, or choose another results_dir"
        )
    if exp is None and options.extend:
        raise ConfigError(f"--extend {options.extend}: there is no experiment in {files.root} to extend yet")
    return exp


def _new_experiment(search: Search, storage_uri: str) -> dict[str, Any]:
    plan, algorithm = search.plan, search.algorithm
    return {
        "version": STATE_VERSION,
        "created": now(),
        "fingerprint": search.fingerprint,
        "command_summary": f"metric {plan.metric} ({plan.mode}), {algorithm.name}, {len(plan.space)} parameters",
        "spec": search.spec_path,
        "overrides": list(search.overrides),
        "metric": plan.metric,
        "mode": plan.mode,
        "stage": plan.stage,
        "algorithm": dataclasses.asdict(algorithm),
        "space": plan.space.describe(),
        "space_names": plan.space.names,
        "notices": plan.notices,
        "seed": search.seed,
        "storage": storage_uri,
        "workers_per_trial": search.workers,
        "max_epochs": search.max_epochs,
        "rounds": [],
        "budgets": {},
    }


def _parent_run_params(search: Search) -> dict[str, Any]:
    plan, algorithm, options = search.plan, search.algorithm, search.options
    return {
        "metric": plan.metric,
        "mode": plan.mode,
        "algorithm": algorithm.requested,
        "searcher": algorithm.searcher,
        "scheduler": algorithm.scheduler,
        "policy": search.decision.policy,
        "max_trials": options.max_trials,
        "time_budget_s": options.time_budget,
        "gpu_hours": options.gpu_hours,
        "max_concurrent": options.max_concurrent,
        "seed": search.seed,
        "space_file": str(plan.space_file) if plan.space_file else None,
        **{f"space.{p.name}": p.describe() for p in plan.space},
    }


def _open_rounds(exp: dict[str, Any], options: SearchOptions) -> list[dict[str, Any]]:
    """The rounds to run now: the unfinished ones (resume), or a new one (a new search or --extend)."""
    rounds = exp["rounds"]
    pending = [r for r in rounds if r["status"] != "finished"]
    for r in pending:
        if not options.extend and options.max_trials != r["trials"]:
            print(
                f"automl: resuming {r['name']} with its {r['trials']} trials (--max-trials "
                f"{options.max_trials} applies to new experiments; add trials with --extend N)"
            )
    if not pending or options.extend:
        n = options.extend if options.extend else options.max_trials
        rounds.append(
            {"name": f"round-{len(rounds) + 1}", "trials": n, "status": "running", "started": now()}
        )
    return [r for r in rounds if r["status"] != "finished"]


def _run_search(search: Search, exp: dict[str, Any] | None) -> None:
    """Start (or reconnect to) Ray, record the experiment, run its open rounds; Ray is shut down after."""
    from automl.tracking import ExperimentTracker, run_context_tags

    files, options, plan = search.files, search.options, search.plan
    if exp is not None:
        ended = stop_orphans(exp)
        if ended:
            print(f"automl: stopped {len(ended)} Ray processes left behind by the interrupted run")
    deploy = {}
    if (
        plan.goals.constraints
    ):  # a trial refused before training reports its deploy metrics, not the objective
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if plan.goals.needs_deploy:  # before Ray and before any trial: nothing else on the CPU while timing
        deploy = profile_shapes(plan.goals, plan, files.deploy_profile)
    search.deploy = deploy
    session = start_ray(options, options.max_concurrent or 10_000)
    interrupted = False
    try:
        check_devices(options, session)
        use_gpu = session.gpus > 0 or (options.gpus_per_trial or 0) > 0
        gpus_per_trial = (options.gpus_per_trial or 1.0) if use_gpu else 0.0
        gpus_held = gpus_per_trial if search.workers == 1 else (search.workers * 1.0 if use_gpu else 0.0)
        storage_path, storage_fs, storage_uri = storage_location(
            options.storage or (exp or {}).get("storage"), files
        )
        tracker = ExperimentTracker(
            files.results_dir, plan.config.model_name, (exp or {}).get("mlflow_parent_run_id")
        )
        if exp is None:
            exp = _new_experiment(search, storage_uri)
            if search.warm is not None:
                seed_study(files.journal, plan.mode, search.warm.trials)
                print(f"automl: {search.warm.notice()}")
                exp["warm_start"] = {"from": list(options.warm_start), "trials": len(search.warm.trials)}
            tracker.start_parent(
                params=_parent_run_params(search),
                tags={
                    **run_context_tags(plan.config),
                    "policy_reason": search.decision.reason,
                    "automl.experiment": str(files.root),
                },
            )
            exp["mlflow_parent_run_id"] = tracker.parent_run_id
        elif options.warm_start:
            print("automl: --warm-start applies to a new experiment; this one already has its own trials")
        current = _open_rounds(exp, options)
        pids, session_name = local_ray_pids() if session.started_here and not options.address else ([], "")
        exp["ray_pids"], exp["ray_session"] = pids, session_name
        for r in current:
            exp["budgets"][r["name"]] = options.budget()
        write_json(files.experiment, exp)
        tracker.resume_parent()

        ctx = TrialContext(
            spec=search.spec,
            results_dir=str(files.results_dir),
            metric=plan.metric,
            mode=plan.mode,
            space=plan.space,
            workers=search.workers,
            use_gpu=use_gpu,
            cpus_per_worker=options.cpus_per_trial,
            gpus_per_worker=1.0,
            storage_path=(storage_path.rstrip("/") + "/train-runs") if search.workers > 1 else None,
            storage_filesystem=storage_fs if search.workers > 1 else None,
            callbacks=tuple(options.trial_callbacks),
            done=finished_trials(files),
            goals=plan.goals,
            deploy=deploy,
        )
        for r in current:
            verb = "resuming" if round_exists(storage_path, storage_fs, r["name"]) else "starting"
            print(
                f"automl: {verb} {r['name']}: {r['trials']} trials, {search.algorithm.searcher} + "
                f"{search.algorithm.scheduler}, {plan.metric} ({plan.mode}), up to {search.max_epochs} epochs "
                f"each; results in {files.root}"
            )
            interrupted = _run_round(
                r,
                search=search,
                ctx=ctx,
                session=session,
                storage=(storage_path, storage_fs),
                gpus_held=gpus_held,
                tracker=tracker,
            )
            if interrupted:
                break
            r["status"] = "finished"
            r["ended"] = now()
            write_json(files.experiment, exp)
    finally:
        if session.started_here:
            import ray

            ray.shutdown()
    if interrupted:
        print(f"automl: interrupted; rerun the same command to resume (state in {files.root})")
        raise KeyboardInterrupt


def _result(files: ExperimentLayout, summary: dict[str, Any]) -> AutoMLResult:
    return AutoMLResult(
        "automl", files.results_dir, summary=summary, summary_path=files.summary, best=summary.get("best")
    )


def _trial_bundle(search: Search, ctx: TrialContext, session: RaySession) -> dict[str, float]:
    """The resources of one trial's Tune actor."""
    if ctx.workers > 1:
        # a driver that only waits on its Ray Train workers (which hold the CPUs/GPUs)
        bundle: dict[str, float] = {"CPU": 0} if session.trial_slots else {"CPU": 0.01}
    else:
        bundle = {"CPU": search.options.cpus_per_trial}
        if ctx.use_gpu:
            bundle["GPU"] = search.options.gpus_per_trial or 1.0
    if session.trial_slots:
        bundle["trial_slot"] = 1
    return bundle


def _run_round(
    r: dict[str, Any],
    *,
    search: Search,
    ctx: TrialContext,
    session: RaySession,
    storage: tuple[str, Any],
    gpus_held: float,
    tracker,
) -> bool:
    """One Tuner run (a fresh round, or the restore of an interrupted one). Returns True when interrupted."""
    from ray import tune
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    plan, options, files = search.plan, search.options, search.files
    storage_path, storage_fs = storage
    name = r["name"]
    path = f"s3://{storage_path}/{name}" if storage_fs is not None else os.path.join(storage_path, name)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, ctx=ctx),
        PlacementGroupFactory([_trial_bundle(search, ctx, session)]),
    )
    ledger = Ledger(
        files,
        name,
        plan.metric,
        plan.mode,
        max_epochs=search.max_epochs,
        gpus_per_trial=gpus_held,
        max_consecutive_failures=options.max_consecutive_failures,
        progress_interval_s=options.progress_interval_s,
        space_names=plan.space.names,
    )
    callbacks = [
        make_ledger_callback(ledger),
        tracker.tune_callback(ctx, plan.metric, plan.mode, search.max_epochs, name),
    ]
    if round_exists(storage_path, storage_fs, name):
        tuner = tune.Tuner.restore(
            path,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            storage_filesystem=storage_fs,
        )
    else:
        tuner = new_tuner(
            r,
            search=search,
            session=session,
            storage=storage,
            trainable=trainable,
            callbacks=callbacks,
            stopper=make_stopper(ledger),
            # A paused HyperBand trial gives its slot back and resumes from its checkpoint (a reused actor would
            # keep it in memory); multi-worker trials gain nothing from reuse (their workers start anew).
            reuse=ctx.workers == 1 and search.algorithm.scheduler != "hyperband",
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
