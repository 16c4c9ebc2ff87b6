"""The Optuna define-by-run path: the same constraints as `SearchSpace.sample` (statistical tests, fixed
seeds), and the dotted names through Ray Tune's OptunaSearch (in process, no Ray cluster)."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import optuna
import pytest

from automl.plan import define_by_run
from automl.schema import load_search_space
from automl.space_file import build_space
from tests.conftest import REPO

TAO = REPO / "tests" / "fixtures" / "tao_dialect.schema.json"
N = 2000


def tol(p: float, n: int = N, sds: float = 4.5) -> float:
    return sds * math.sqrt(p * (1 - p) / n)


def run_study(fn, n: int, sampler, objective=None) -> tuple[optuna.Study, list[dict]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler)
    configs = []
    for _ in range(n):
        trial = study.ask()
        config = fn(trial)
        configs.append(config)
        study.tell(trial, objective(config) if objective else 0.0)
    return study, configs


@pytest.fixture(scope="module")
def random_run():
    space = load_search_space(TAO)
    fixed = {"train.num_epochs": 4}
    study, configs = run_study(define_by_run(space, fixed), N, optuna.samplers.RandomSampler(seed=11))
    return space.bind(fixed), study, configs


def test_define_by_run_respects_every_constraint(random_run):
    space, _, configs = random_run
    assert all(space.check(c) == [] for c in configs)
    assert all(c["dataset.augmentation.max_scale"] > c["dataset.augmentation.min_scale"] for c in configs)
    assert all(c["dataset.augmentation.max_ratio"] >= c["dataset.augmentation.min_ratio"] for c in configs)
    assert all(c["train.validation_interval"] <= c["train.checkpoint_interval"] for c in configs)
    assert {c["train.optim.warmup_epochs"] for c in configs} == {0, 1, 2, 3}  # < num_epochs (fixed 4)
    assert all(0 < c["train.optim.lr"] <= 1 and c["train.optim.momentum"] < 1 for c in configs)
    dims = {c["model.decoder_embed_dim"] for c in configs}
    assert all(d % 32 == 0 for d in dims) and min(dims) == 128 and max(dims) == 992


def test_define_by_run_distributions(random_run):
    _, _, configs = random_run
    batch = Counter(c["dataset.batch_size"] for c in configs)  # each power of 2 equally likely
    assert set(batch) == {8, 16, 32, 64, 128, 256}
    assert all(abs(v / N - 1 / 6) < tol(1 / 6) for v in batch.values()), batch
    for key, expected in [
        ("train.optim.lr_scheduler", {"MultiStep": 0.3, "cosine": 0.7}),
        ("model.decoder_depth", {1: 0.1, 2: 0.2, 4: 0.3, 8: 0.4}),
        ("train.norm_pix_loss", {False: 0.25, True: 0.75}),
    ]:
        got = Counter(c[key] for c in configs)
        assert set(got) == set(expected)
        for value, p in expected.items():
            assert abs(got[value] / N - p) < tol(p), (key, value, got)


def test_define_by_run_log_scale_and_strictness(tmp_path):
    path = tmp_path / "s.schema.json"
    path.write_text(
        json.dumps(
            {
                "automl_default_parameters": ["lr", "strict", "inclusive"],
                "properties": {
                    "lr": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 1,
                        "automl_range": [1e-5, 1e-2],
                        "log_scale": True,
                    },
                    "strict": {"type": "float", "minimum": 0.0, "maximum": 5e-324, "math_cond": "> 0.0"},
                    "inclusive": {"type": "float", "minimum": 0.0, "maximum": 5e-324},
                },
            }
        )
    )
    study, configs = run_study(
        define_by_run(load_search_space(path)), N, optuna.samplers.RandomSampler(seed=2)
    )
    lr = np.array([c["lr"] for c in configs])
    for lo in (1e-5, 1e-4, 1e-3):
        assert abs(np.mean((lr >= lo) & (lr < lo * 10)) - 1 / 3) < tol(1 / 3), lo
    assert all(c["strict"] > 0.0 for c in configs)
    assert any(c["inclusive"] == 0.0 for c in configs)  # what ignoring strictness would give
    assert study.trials[0].distributions["lr"].log


def test_define_by_run_when_conditions_and_latent_records(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(
        "parameters:\n"
        "  train.optim.lr_scheduler: 'choice(MultiStep: 0.3, cosine: 0.7)'\n"
        "  train.optim.momentum: {low: 0.85, high: 0.95, when: {train.optim.lr_scheduler: MultiStep}}\n"
        "  dataset.batch_size: int(16, 128)\n"
    )
    study, configs = run_study(
        define_by_run(build_space(space_file=f), {"train.num_epochs": 10}),
        N,
        optuna.samplers.RandomSampler(seed=4),
    )
    with_m = [c for c in configs if "train.optim.momentum" in c]
    assert all(c["train.optim.lr_scheduler"] == "MultiStep" for c in with_m)
    assert abs(len(with_m) / N - 0.3) < tol(0.3)
    # Optuna records the latent u (weighted choice) and the exponent (power of 2) under the name; the real
    # values are in the returned config and in the user attribute automl_config
    t = study.trials[0]
    assert isinstance(t.params["train.optim.lr_scheduler"], float)
    assert t.params["dataset.batch_size"] in (4, 5, 6, 7)  # 2**4 .. 2**7
    assert t.user_attrs["automl_config"] == configs[0]
    assert ("train.optim.momentum" in t.params) == (configs[0]["train.optim.lr_scheduler"] == "MultiStep")


def test_tpe_keeps_constraints_while_it_learns():
    space = load_search_space(TAO)
    fixed = {"train.num_epochs": 4}

    # the optimum is lr 0.2 with decoder_depth 4 (an ordered, weighted choice searched through u):
    # TPE should move there after its 10 random trials, always inside the constraints
    def objective(c):
        return abs(c["train.optim.lr"] - 0.2) + 0.1 * (c["model.decoder_depth"] != 4)

    _, configs = run_study(
        define_by_run(space, fixed), 60, optuna.samplers.TPESampler(seed=0, n_startup_trials=10), objective
    )
    bound = space.bind(fixed)
    assert all(bound.check(c) == [] for c in configs)
    first, last = (
        np.mean([objective(c) for c in configs[:10]]),
        np.mean([objective(c) for c in configs[-20:]]),
    )
    assert last < first / 2, (first, last)


def test_ray_optuna_search_keeps_dotted_names(tmp_path):
    """Ray Tune's OptunaSearch merges the define-by-run return value over the captured suggestions and
    unflattens on '/', so dotted names arrive as flat keys with the real values (powers, weighted choices);
    the searcher's checkpoint (a pickle of its state, the function included) saves and restores."""
    from ray import tune  # ray[tune] is a project dependency: no skip when it is missing
    from ray.tune.search import SearchGenerator
    from ray.tune.search.optuna import OptunaSearch

    space = build_space(params=["dataset.batch_size=int(8, 256)"])
    fn = define_by_run(space, {"train.num_epochs": 10})
    searcher = OptunaSearch(space=fn, metric="train_loss", mode="min", seed=0)
    config = searcher.suggest("t0")
    assert set(config) == set(space.names)  # flat dotted keys, nothing nested, no latent extras
    assert config["dataset.batch_size"] in (8, 16, 32, 64, 128, 256)
    assert config["train.optim.lr_scheduler"] in ("MultiStep", "cosine")
    assert space.bind({"train.num_epochs": 10}).check(config) == []
    searcher.on_trial_complete("t0", {"train_loss": 1.0, **config})

    # Tune checkpoints the searcher by pickling it, define-by-run function included; restore goes on
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = OptunaSearch(space=fn, metric="train_loss", mode="min")
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert len(restored._ot_study.trials) == 1
    assert space.bind({"train.num_epochs": 10}).check(restored.suggest("t1")) == []

    # the whole trial-creation path of Tune (no cluster needed) keeps them too
    def trainable(config):  # pragma: no cover - never run
        pass

    tune.register_trainable("automl_space_naming_check", trainable)
    generator = SearchGenerator(OptunaSearch(space=fn, metric="train_loss", mode="min", seed=0))
    generator.add_configurations(
        {"exp": {"run": "automl_space_naming_check", "config": {"trial_kind": "x"}, "num_samples": 1}}
    )
    trial = generator.next_trial()
    assert trial.config["trial_kind"] == "x"
    assert {k for k in trial.config if k != "trial_kind"} == set(space.names)
