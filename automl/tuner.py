"""One round's Ray Tune `Tuner`: the searcher and the scheduler of `automl run`, from what the runner settled.

    tuner = new_tuner(round, search=search, session=session, storage=(path, fs), trainable=...,
                      callbacks=[...], stopper=stopper, reuse=False)

The searcher is Optuna (TPE, random, GP, CMA-ES; multi-objective and constrained when the goals say so, with
one first trial per feasible model shape) behind a concurrency limit, or PBT's initial population; the
scheduler comes from automl.algorithms.make_scheduler (MO-ASHA in multi-objective mode).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

from automl.algorithms import initial_population, make_sampler, make_scheduler
from automl.experiment import best_configs
from automl.multi_objective import Feasibility, make_constrained_search, shape_seeds

if TYPE_CHECKING:
    from automl.ray_session import RaySession
    from automl.runner import Search


def _trial_dirname(trial) -> str:
    return trial.trial_id


def search_algorithm(r: dict[str, Any], search: Search, session: RaySession) -> tuple[Any, dict | None]:
    """(Tune search algorithm, param_space) of a new round: Optuna behind a concurrency limit, or PBT's
    initial population."""
    plan, options, algorithm, files = search.plan, search.options, search.algorithm, search.files
    n = int(r["trials"])
    round_seed = search.seed + zlib.crc32(r["name"].encode())
    if algorithm.searcher == "pbt":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        start = best_configs(files, plan.mode, n)
        population = initial_population(plan.space, n, round_seed, start)
        return BasicVariantGenerator(points_to_evaluate=population), {k: None for k in plan.space.names}

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from automl.plan import define_by_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    files.root.mkdir(parents=True, exist_ok=True)
    goals, fresh = plan.goals, not files.journal.exists()
    kwargs = dict(
        space=define_by_run(plan.space),
        metric=goals.metrics if goals.multi else plan.metric,
        mode=goals.modes if goals.multi else plan.mode,
        sampler=make_sampler(algorithm.searcher, round_seed % 10_000, n),
        storage=JournalStorage(JournalFileBackend(str(files.journal))),
        study_name="automl",
    )
    if goals.several or goals.constraints:
        cfg = plan.config
        feasible = Feasibility(
            goals, search.deploy, cfg.model.arch, cfg.dataset.augmentation.input_size, files.refused
        )
        seeds = shape_seeds(plan, feasible, n) if goals.several and fresh else []
        if seeds:
            print(f"automl: {len(seeds)} first trial(s): one per feasible model shape, fastest to slowest")
        searcher = make_constrained_search(
            goals.constraints,
            goals.metrics if goals.multi else [plan.metric],
            feasible,
            points_to_evaluate=seeds or None,
            **kwargs,
        )
    else:
        searcher = OptunaSearch(**kwargs)
    # HyperBand fills each bracket before it decides, and PBT time-shares its population: a concurrency
    # limiter would keep the trials those need from ever being created. Their concurrency comes from the
    # resources instead (the local `trial_slot` resource stands for --max-concurrent).
    if algorithm.scheduler == "hyperband":
        if options.max_concurrent and not session.trial_slots:
            print(
                "automl: --max-concurrent is not applied with hyperband on this cluster (its brackets need every "
                "trial created); the cluster's resources limit how many run at once"
            )
        return searcher, None
    if options.max_concurrent:
        return ConcurrencyLimiter(searcher, max_concurrent=options.max_concurrent), None
    return searcher, None


def new_tuner(r, *, search: Search, session, storage, trainable, callbacks, stopper, reuse: bool):
    """The Tuner of a new round `r` (its name and trial count): storage is (path, pyarrow filesystem or None)."""
    from ray import tune

    plan, options = search.plan, search.options
    storage_path, storage_fs = storage
    scheduler = make_scheduler(
        search.algorithm.scheduler,
        plan.metric,
        plan.mode,
        max_epochs=search.max_epochs,
        grace_period=options.grace_period,
        reduction_factor=options.reduction_factor,
        space=plan.space,
        perturbation_interval=options.perturbation_interval,
        seed=search.seed,
        goals=plan.goals,
        state_path=search.files.root / f"mo_asha-{r['name']}.json",
    )
    search_alg, param_space = search_algorithm(r, search, session)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=int(r["trials"]),
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
