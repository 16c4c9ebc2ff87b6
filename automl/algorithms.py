"""Algorithm resolution: --algorithm/--scheduler -> an Optuna sampler and a Ray Tune scheduler (PBT included).

tpe (default), random, gp, cmaes   Optuna samplers, with the asha scheduler unless --scheduler says otherwise
pbt                                Population Based Training: Ray's PBT scheduler explores by itself (it takes
                                   no searcher); the population is drawn with SearchSpace.sample
TAO's names, mapped to real equivalents: bayesian -> gp + fifo, hyperband -> random + hyperband,
asha -> random + asha, bohb -> tpe + hyperband (BOHB's model-based sampling over HyperBand brackets),
pbt -> pbt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from automl.options import SearchOptions, flag_of
from automl.space import SearchSpace
from automl.trial import trial_values
from mae.errors import ConfigError, did_you_mean

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
    goals=None,
    state_path=None,
):
    """The Tune scheduler. With several objectives (`goals.multi`) asha is MO-ASHA (automl.mo_asha): rungs
    decided by Pareto rank and crowding distance, constraints first."""
    if goals is not None and goals.multi and name == "asha":
        from automl.mo_asha import MOASHAScheduler

        return MOASHAScheduler(
            goals.objectives,
            constraints=goals.constraints,
            max_t=max_epochs,
            grace_period=max(1, min(grace_period, max_epochs)),
            reduction_factor=reduction_factor,
            state_path=state_path,
        )
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


def option_notices(options: SearchOptions, algorithm: Algorithm) -> list[str]:
    """One line for each option that the chosen algorithm would otherwise ignore in silence."""
    out = []
    sched = algorithm.scheduler
    for name in ("grace_period", "reduction_factor"):
        if options.explicit(name) and sched in ("fifo", "pbt"):
            out.append(
                f"{flag_of(name)} has no effect with the {sched} scheduler (it applies to asha and hyperband)"
            )
    if options.explicit("grace_period") and sched == "hyperband":
        out.append("--grace-period has no effect with hyperband (its brackets set their own first rung)")
    if options.explicit("perturbation_interval") and sched != "pbt":
        out.append(f"--perturbation-interval has no effect with the {sched} scheduler (it applies to pbt)")
    return out


MULTI_OBJECTIVE_SEARCHERS = ("tpe", "random")
MULTI_OBJECTIVE_SCHEDULERS = ("asha", "fifo")


def check_multi_objective(algorithm: Algorithm, goals) -> None:
    """Searchers and schedulers that cannot take several objectives, refused in one line each."""
    if not goals.multi:
        return
    problems = []
    if algorithm.searcher not in MULTI_OBJECTIVE_SEARCHERS:
        problems.append(
            f"--algorithm {algorithm.requested}: a multi-objective search uses tpe (MOTPE) or random; "
            f"{algorithm.searcher} takes one objective"
        )
    if algorithm.scheduler not in MULTI_OBJECTIVE_SCHEDULERS:
        problems.append(
            f"--scheduler {algorithm.scheduler}: a multi-objective search stops trials with MO-ASHA (asha) or "
            "not at all (fifo); it takes one metric"
        )
    if problems:
        raise ConfigError(problems)


def plan_notices(options: SearchOptions, algorithm: Algorithm, workers: int, max_epochs: int) -> list[str]:
    """Options the planned search adjusts or cannot apply, one line each (said, not silently changed)."""
    out = []
    if options.explicit("gpus_per_trial") and workers > 1:
        out.append(
            f"--gpus-per-trial {options.gpus_per_trial:g} applies to single-device trials; each of this spec's "
            f"{workers} workers per trial (train.num_gpus x num_nodes) takes one whole GPU"
        )
    if algorithm.scheduler == "asha" and options.grace_period > max_epochs:
        out.append(
            f"--grace-period {options.grace_period} is more than the {max_epochs} epochs a trial trains; "
            f"using {max_epochs} (no trial is stopped early)"
        )
    return out
