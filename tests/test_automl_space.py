"""Search spaces: sampling that honours every constraint (statistical tests, fixed seeds), curated files,
--param overrides, the objective guard, trial specs and the search plan."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import yaml

from automl.objective import guard_objective, resolve_objective
from automl.plan import ResolvedSpec, plan_search, trial_results_dir, trial_spec
from automl.schema import SearchSpace, load_search_space, read_schema
from automl.space_file import (
    SEARCH_SPACES_DIR,
    build_space,
    parse_expression,
    parse_param,
    read_space_file,
    scale_to_batch,
    space_file_for_stage,
)
from mae.config import ExperimentConfig
from mae.errors import ConfigError
from tests.conftest import REPO

TAO = REPO / "tests" / "fixtures" / "tao_dialect.schema.json"
N = 4000


def freqs(values) -> dict:
    c = Counter(values)
    return {k: v / len(values) for k, v in c.items()}


def binomial_tol(p: float, n: int, sds: float = 4.5) -> float:
    return sds * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def tao_samples():
    space = load_search_space(TAO).bind({"train.num_epochs": 4})
    rng = np.random.default_rng(1234)
    return space, [space.sample(rng) for _ in range(N)]


def write_schema(tmp_path, properties: dict, defaults=()):
    path = tmp_path / "s.schema.json"
    path.write_text(json.dumps({"automl_default_parameters": list(defaults), "properties": properties}))
    return path


# -------------------------------------------------------------------------------------------- sampling


def test_samples_are_valid_and_cover_the_bounds(tao_samples):
    space, samples = tao_samples
    assert all(space.check(s) == [] for s in samples)
    lr = [s["train.optim.lr"] for s in samples]  # uniform in (0, 1] (TAO searches its bounds)
    assert 0 < min(lr) < 0.01 and 0.99 < max(lr) <= 1.0
    assert abs(np.mean(lr) - 0.5) < binomial_tol(0.5, N) / 2
    mom = [s["train.optim.momentum"] for s in samples]  # [0, 1): "< 1.0"
    assert max(mom) < 1.0 and min(mom) >= 0.0
    assert max(s["train.optim.layer_decay"] for s in samples) <= 0.9  # "<= 0.9"
    mask = [s["train.mask_ratio"] for s in samples]  # exclusiveMinimum/exclusiveMaximum
    assert 0.0 < min(mask) and max(mask) < 1.0
    assert all(type(s["train.optim.lr"]) is float and type(s["dataset.batch_size"]) is int for s in samples)


def test_check_catches_bad_values(tao_samples):
    space, samples = tao_samples
    good = dict(samples[0])
    for key, bad, message in [
        ("dataset.batch_size", 48, "outside its domain"),  # not a power of 2
        ("model.decoder_embed_dim", 500, "outside its domain"),  # not a multiple of 32
        ("train.optim.lr", 0.0, "outside its domain"),  # "> 0.0"
        ("train.optim.warmup_epochs", 4, "outside its domain"),  # < num_epochs = 4
        ("train.optim.lr_scheduler", "step", "outside its domain"),
        ("train.norm_pix_loss", 1, "outside its domain"),  # a bool, not 1
    ]:
        problems = space.check({**good, key: bad})
        assert len(problems) == 1 and problems[0].startswith(f"{key}=") and message in problems[0]
    assert space.check({**good, "x.y": 1}) == ["x.y: not a searched parameter"]


def test_strict_bounds_are_never_hit(tmp_path):
    # "> 0.0" on [0, 5e-324] (the smallest float above 0): only 5e-324 is allowed; a sampler that ignored
    # strictness would return 0.0 about half the time, as the inclusive twin shows.
    path = write_schema(
        tmp_path,
        {
            "strict": {"type": "float", "minimum": 0.0, "maximum": 5e-324, "math_cond": "> 0.0"},
            "inclusive": {"type": "float", "minimum": 0.0, "maximum": 5e-324},
            "count": {"type": "int", "minimum": 0, "maximum": 3, "math_cond": "> 0"},
        },
        defaults=["strict", "inclusive", "count"],
    )
    space = load_search_space(path)
    rng = np.random.default_rng(7)
    samples = [space.sample(rng) for _ in range(400)]
    assert all(s["strict"] > 0.0 for s in samples)
    assert 0.3 < sum(s["inclusive"] == 0.0 for s in samples) / 400 < 0.7
    counts = freqs([s["count"] for s in samples])
    assert set(counts) == {1, 2, 3}


def test_log_scale_is_log_uniform():
    space = load_search_space(REPO / "schemas" / "train.schema.json").bind({"train.num_epochs": 50})
    rng = np.random.default_rng(0)
    lr = np.array([space.sample(rng)["train.optim.lr"] for _ in range(N)])
    assert lr.min() >= 1e-5 and lr.max() <= 1e-2
    # each decade of [1e-5, 1e-2] gets a third (a linear scale would put 99% in the last decade)
    for lo in (1e-5, 1e-4, 1e-3):
        share = np.mean((lr >= lo) & (lr < lo * 10))
        assert abs(share - 1 / 3) < binomial_tol(1 / 3, N), (lo, share)


def test_integer_forms(tao_samples):
    _, samples = tao_samples
    batch = freqs([s["dataset.batch_size"] for s in samples])  # "^ 2" in [8, 256]: each power equally likely
    assert set(batch) == {8, 16, 32, 64, 128, 256}
    assert all(abs(f - 1 / 6) < binomial_tol(1 / 6, N) for f in batch.values()), batch
    dims = [s["model.decoder_embed_dim"] for s in samples]  # "/ 32" in [128, 1000]
    assert all(d % 32 == 0 for d in dims) and min(dims) == 128 and max(dims) == 992
    assert len(set(dims)) == (992 - 128) // 32 + 1


def test_option_weights(tao_samples):
    _, samples = tao_samples
    for key, expected in [
        ("train.optim.lr_scheduler", {"MultiStep": 0.3, "cosine": 0.7}),
        ("model.decoder_depth", {1: 0.1, 2: 0.2, 4: 0.3, 8: 0.4}),  # ordered_int
        ("train.norm_pix_loss", {False: 0.25, True: 0.75}),  # bool
    ]:
        got = freqs([s[key] for s in samples])
        assert set(got) == set(expected)
        for value, p in expected.items():
            assert abs(got[value] - p) < binomial_tol(p, N), (key, value, got)


def test_relations_and_dependencies(tao_samples):
    _, samples = tao_samples
    for s in samples:
        assert s["dataset.augmentation.max_scale"] > s["dataset.augmentation.min_scale"]
        assert s["dataset.augmentation.max_ratio"] >= s["dataset.augmentation.min_ratio"]
        assert s["train.validation_interval"] <= s["train.checkpoint_interval"]
    warm = freqs([s["train.optim.warmup_epochs"] for s in samples])  # < num_epochs = 4, from the spec
    assert set(warm) == {0, 1, 2, 3}
    assert all(abs(f - 0.25) < binomial_tol(0.25, N) for f in warm.values())
    # the child's range follows the parent: with min_ratio near its top, max_ratio starts above it
    high = [s for s in samples if s["dataset.augmentation.min_ratio"] > 0.95]
    assert high and all(s["dataset.augmentation.max_ratio"] >= 0.95 for s in high)


def test_parents_are_narrowed_so_children_keep_a_value(tmp_path):
    # c < b < a with c in [5, 8]: b must exceed 5 and a must exceed b's lowest value (6)
    path = write_schema(
        tmp_path,
        {
            "a": {"type": "int", "minimum": 0, "maximum": 10},
            "b": {"type": "int", "minimum": 0, "maximum": 10, "math_cond": "< depends_on", "depends_on": "a"},
            "c": {"type": "int", "minimum": 5, "maximum": 8, "math_cond": "< depends_on", "depends_on": "b"},
        },
        defaults=["c", "b", "a"],
    )
    space = load_search_space(path)
    assert space.names == ["a", "b", "c"]
    rng = np.random.default_rng(3)
    samples = [space.sample(rng) for _ in range(500)]
    assert all(s["c"] < s["b"] < s["a"] for s in samples)
    assert {s["a"] for s in samples} == {7, 8, 9, 10} and {s["c"] for s in samples} == {5, 6, 7, 8}
    # a fixed parent that leaves the child nothing is an error naming both
    with pytest.raises(ConfigError, match=r"c: no valid value is left in \[5, 3\) with b=3"):
        load_search_space(path, ["c"]).bind({"b": 3})
    with pytest.raises(ConfigError, match="c: needs the value of b, which is not searched"):
        load_search_space(path, ["c"]).sample(0)
    # a cycle is reported
    path.write_text(
        json.dumps(
            {
                "properties": {
                    "x": {
                        "type": "int",
                        "minimum": 0,
                        "maximum": 9,
                        "math_cond": "< depends_on",
                        "depends_on": "y",
                    },
                    "y": {
                        "type": "int",
                        "minimum": 0,
                        "maximum": 9,
                        "math_cond": "< depends_on",
                        "depends_on": "x",
                    },
                }
            }
        )
    )
    with pytest.raises(ConfigError, match=r"circular dependency between searched parameters \(x -> y -> x\)"):
        load_search_space(path, ["x", "y"])


def test_sampling_is_reproducible(tao_samples):
    space, samples = tao_samples
    rng = np.random.default_rng(1234)
    assert [space.sample(rng) for _ in range(5)] == samples[:5]


def test_when_conditions(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(
        "parameters:\n"
        "  train.optim.lr_scheduler: 'choice(MultiStep: 0.3, cosine: 0.7)'\n"
        "  train.optim.momentum: {low: 0.85, high: 0.95, when: {train.optim.lr_scheduler: MultiStep}}\n"
    )
    space = build_space(space_file=f, fixed={"train.num_epochs": 10})
    rng = np.random.default_rng(5)
    samples = [space.sample(rng) for _ in range(N)]
    with_m = [s for s in samples if "train.optim.momentum" in s]
    assert all(s["train.optim.lr_scheduler"] == "MultiStep" for s in with_m)
    assert all(0.85 <= s["train.optim.momentum"] <= 0.95 for s in with_m)
    assert abs(len(with_m) / N - 0.3) < binomial_tol(0.3, N)
    assert all(space.check(s) == [] for s in samples[:50])
    f.write_text(
        "parameters:\n"
        "  train.optim.lr_scheduler: choice(MultiStep, cosine)\n"
        "  train.optim.momentum: {low: 0.85, high: 0.95, when: {train.optim.lr_scheduler: multistep}}\n"
    )
    with pytest.raises(
        ConfigError, match=r"when train.optim.lr_scheduler in \['multistep'\]: .* never takes"
    ):
        build_space(space_file=f, fixed={})


# -------------------------------------------------------------------------------- files and --param


@pytest.mark.parametrize("path", sorted(SEARCH_SPACES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_search_space_file_loads_and_validates(path, tmp_path):
    sf = read_space_file(path)
    assert sf.stage == path.stem and sf.refinements
    assert space_file_for_stage(path.stem) == path
    space = build_space(stage=path.stem, fixed={"train.num_epochs": 20})
    assert space.names and all(p.source == f"search_spaces/{path.name}" and not p.explicit for p in space)
    # the plan for a spec of that stage checks sampled trial specs, and each sample is a valid trial spec
    data = tmp_path / "img"
    data.mkdir()
    spec = {"dataset": {"train_data_sources": str(data)}, "train": {"stage": path.stem, "num_epochs": 20}}
    plan = plan_search(spec, check_samples=64)
    assert plan.space_file == path
    for seed in range(8):
        cfg = trial_spec(plan.spec, plan.space.sample(seed), tmp_path / "trial")
        assert isinstance(cfg, ExperimentConfig)


def test_pretrain_space_is_what_we_ship():
    space = build_space(stage="pretrain")
    assert set(space.names) == {
        "train.optim.lr",
        "train.optim.weight_decay",
        "train.optim.lr_scheduler",
        "train.optim.warmup_epochs",
    }
    # the learning rate is written per 256 images (MAE's base lr); without a batch it stays as written
    lr = space["train.optim.lr"]
    assert lr.log and (lr.low, lr.high) == (4e-5, 1e-3)
    assert read_space_file(SEARCH_SPACES_DIR / "pretrain.yaml").refinements["train.optim.lr"].per_batch == 256
    assert space["train.optim.lr_scheduler"].weights == pytest.approx((0.8, 0.2))
    text = (SEARCH_SPACES_DIR / "pretrain.yaml").read_text()
    assert text.count("#") > 20  # the reasons are written down


def test_a_per_batch_range_follows_the_specs_images_per_step(tmp_path):
    data = tmp_path / "img"
    data.mkdir()

    def lr_range(dataset=None, train=None, **kw):
        spec = {
            "dataset": {"train_data_sources": str(data), **(dataset or {})},
            "train": {"stage": "pretrain", "num_epochs": 20, **(train or {})},
        }
        p = plan_search(spec, check_samples=4, **kw).space["train.optim.lr"]
        return p.low, p.high, p.source

    low, high, source = lr_range({"batch_size": 64})
    assert (low, high) == pytest.approx((1e-5, 2.5e-4))  # 4e-5 and 1e-3 per 256 images, x 64/256
    assert "per 256 images, scaled to 64 per step" in source
    # images per optimizer step: batch x accumulation x GPUs x nodes
    low, high, _ = lr_range({"batch_size": 32}, {"accum_grad_batches": 4, "num_gpus": 2, "num_nodes": 2})
    assert (low, high) == pytest.approx((4e-5 * 2, 1e-3 * 2))
    # the same in a --param EXPR; an absolute --param range replaces it
    low, high, _ = lr_range({"batch_size": 128}, params=["train.optim.lr=loguniform(1e-4, 2e-3) per 256"])
    assert (low, high) == pytest.approx((5e-5, 1e-3))
    low, high, source = lr_range({"batch_size": 128}, params=["train.optim.lr=loguniform(1e-4, 2e-3)"])
    assert (low, high, source) == (1e-4, 2e-3, "--param")
    # a batch that is itself searched cannot scale the range
    with pytest.raises(ConfigError, match="follows the batch, but dataset.batch_size is searched"):
        lr_range(params=["dataset.batch_size=int(16, 128)"])
    # a file's mapping form, scaled the same way
    f = tmp_path / "mine.yaml"
    f.write_text("parameters:\n  train.optim.lr: {low: 1e-4, high: 1e-3, log: true, per_batch: 512}\n")
    low, high, _ = lr_range({"batch_size": 256}, space_file=f)
    assert (low, high) == pytest.approx((5e-5, 5e-4))


@pytest.mark.parametrize(
    "expr,error",
    [
        ("int(1, 8) per 256", "`per N` scales a float range"),
        ("loguniform(1e-5, 1e-3) per 0", "must be a whole number of images"),
        ("loguniform(1e-5, 1e-3) per lots", "must be a whole number of images"),
        ({"low": 1e-5, "high": 1e-3, "per_batch": 2.5}, "must be a whole number of images"),
    ],
)
def test_bad_per_batch_ranges_are_refused(expr, error):
    with pytest.raises(ConfigError, match=error):
        parse_expression(expr, "train.optim.lr", "test")


def test_a_per_batch_range_needs_both_ends():
    ref = parse_expression({"high": 1e-3, "per_batch": 256}, "train.optim.lr", "test")
    with pytest.raises(ConfigError, match="per_batch needs both low and high"):
        scale_to_batch(ref, "train.optim.lr", 64)


@pytest.mark.parametrize(
    "text,name,fields",
    [
        ("train.optim.lr=loguniform(1e-5, 1e-3)", "train.optim.lr", {"low": 1e-5, "high": 1e-3, "log": True}),
        ("train.optim.lr=uniform(1e-5,1e-3)", "train.optim.lr", {"low": 1e-5, "high": 1e-3, "log": False}),
        ("learning_rate=range(1e-4, 1e-3)", "train.optim.lr", {"low": 1e-4, "high": 1e-3, "log": None}),
        (
            "train.optim.warmup_epochs=int(0, 5)",
            "train.optim.warmup_epochs",
            {"low": 0, "high": 5, "kind": "int"},
        ),
        ("dataset.batch_size=logint(8, 64)", "dataset.batch_size", {"low": 8, "high": 64, "log": True}),
        (
            "train.optim.lr_scheduler=choice(cosine, MultiStep)",
            "train.optim.lr_scheduler",
            {"choices": ["cosine", "MultiStep"]},
        ),
        (
            "train.optim.lr_scheduler=choice(cosine: 3, MultiStep: 1)",
            "train.optim.lr_scheduler",
            {"choices": ["cosine", "MultiStep"], "weights": [3.0, 1.0]},
        ),
        ("train.norm_pix_loss=choice(true, false)", "train.norm_pix_loss", {"choices": [True, False]}),
    ],
)
def test_parse_param(text, name, fields):
    got_name, ref = parse_param(text)
    assert got_name == name
    for key, value in fields.items():
        assert getattr(ref, key) == value, key
    assert ref.explicit and ref.source == "--param"


def test_param_off_removes_and_overrides_refine():
    space = build_space(
        stage="pretrain",
        params=[
            "train.optim.weight_decay=off",
            "train.optim.lr=loguniform(1e-4,1e-3)",
            "train.optim.momentum=range(0.85, 0.95)",
        ],
    )
    assert "train.optim.weight_decay" not in space
    lr = space["train.optim.lr"]
    assert (lr.low, lr.high, lr.log, lr.source, lr.explicit) == (1e-4, 1e-3, True, "--param", True)
    assert space["train.optim.momentum"].high == 0.95 and space["train.optim.momentum"].explicit
    # an exclusive schema bound stays exclusive: uniform(0, 0.5) on lr (> 0) never gives 0
    lr0 = build_space(params=["train.optim.lr=uniform(0, 0.5)"])["train.optim.lr"]
    assert lr0.low == 0 and lr0.low_open


@pytest.mark.parametrize(
    "param,message",
    [
        (
            "train.optim.lr=uniform(1e-5, 2.0)",
            "train.optim.lr=uniform(1e-5, 2.0) (--param): high=2.0 is outside the schema's bounds (0.0, 1.0]",
        ),
        ("train.optim.lr=loguniform(-1, 1e-3)", "low=-1 is outside the schema's bounds (0.0, 1.0]"),
        ("train.optim.lr=loguniform(0, 1e-3)", "a log scale needs a range above 0"),
        (
            "train.mask_ratio=uniform(0.5, 1.0)",
            None,
        ),  # ok: the end equals the exclusive bound, stays exclusive
        ("train.optim.warmup_epochs=int(-1, 5)", "low=-1 is outside the schema's bounds [0, 10000]"),
        (
            "train.optim.lrr=loguniform(1e-5, 1e-3)",
            "train.optim.lrr: not a parameter of train.schema.json (did you mean 'train.optim.lr'",
        ),
        ("train.num_epochs=int(1, 10)", "train.num_epochs: AutoML is disabled for this parameter"),
        ("train.optim=uniform(0, 1)", "train.optim: is a group of settings"),
        (
            "dataset.batch_size=uniform(8, 64)",
            "dataset.batch_size is an integer parameter; use int(low, high) or logint(low, high)",
        ),
        ("train.optim.lr=int(1, 2)", "train.optim.lr is a float parameter; use uniform(low, high)"),
        ("train.optim.warmup_epochs=int(0, 2.5)", "2.5 is not an integer; int takes integers"),
        (
            "train.optim.lr_scheduler=choice(cosine, step)",
            "'step' is not allowed for train.optim.lr_scheduler; allowed: 'MultiStep', 'cosine'",
        ),
        (
            "train.optim.lr_scheduler=uniform(0, 1)",
            "takes one of ['MultiStep', 'cosine']; narrow it with choice",
        ),
        (
            "train.optim.lr_scheduler=choice(cosine: 1, MultiStep)",
            "weigh every choice (x: 0.7, y: 0.3) or none",
        ),
        ("train.optim.lr_scheduler=choice(cosine: 1, MultiStep: 0)", None),
        ("train.optim.lr_scheduler=choice(cosine: 0, MultiStep: 0)", "must be >= 0 with a positive sum"),
        ("dataset.batch_size=choice(16, 48)", "48 is not a power of 2"),
        ("model.decoder_embed_dim=choice(128, 200)", "200 is not a multiple of 16"),
        ("train.optim.lr=normal(0, 1)", "not understood; write uniform(a, b)"),
        ("train.optim.lr=loguniform(1e-5)", "loguniform takes two values"),
        ("train.optim.lr=loguniform(a, b)", "'a' is not a number"),
        ("=uniform(0, 1)", "expected NAME=EXPR with a dotted name"),
        ("train.optim.lr", "expected NAME=EXPR"),
        (
            "train.optim.weight_decay=off",
            "train.optim.weight_decay is not searched, so there is nothing to turn off",
        ),
    ],
)
def test_param_errors(param, message):
    # the pretrain file does not search weight decay's twin; use the schema defaults with weight_decay off first
    params = ["train.optim.weight_decay=off", param] if param.endswith("=off") else [param]
    if message is None:
        build_space(params=params)
        return
    with pytest.raises(ConfigError) as e:
        build_space(params=params)
    text = "\n".join(e.value.problems)
    assert message in text, text
    assert len(e.value.problems) == 1


def test_space_file_errors(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("parameters:\n  train.optim.lr_scheduler: choice(cosine: 0.8, MultiStep: 0.2)\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line 2: .*quote expressions that contain ': '"):
        read_space_file(f)
    f.write_text("stage: pretrain\nparams: {}\n")
    with pytest.raises(ConfigError, match="expected a mapping with `parameters"):
        read_space_file(f)
    f.write_text(
        yaml.safe_dump(
            {
                "stage": "pretrain",
                "paramters_x": 1,
                "parameters": {"train.optim.lr": {"low": 1e-5, "hgh": 1e-3}, "train.optim.momentum": 0.9},
            }
        )
    )
    with pytest.raises(ConfigError) as e:
        read_space_file(f)
    text = "\n".join(e.value.problems)
    assert "unknown key 'paramters_x'" in text
    assert "train.optim.lr (" in text and "unknown key 'hgh' (did you mean 'high'?)" in text
    assert "train.optim.momentum (" in text and "0.9 is not a search range" in text
    f.write_text(
        yaml.safe_dump({"stage": "finetune", "parameters": {"train.optim.lr": "loguniform(1e-5, 1e-3)"}})
    )
    with pytest.raises(ConfigError, match="is for train.stage=finetune, but the spec trains stage pretrain"):
        build_space(stage="pretrain", space_file=f)
    space = build_space(stage="finetune", space_file=f)
    assert space.names == ["train.optim.lr"] and space["train.optim.lr"].explicit  # a user's file is explicit
    f.write_text(yaml.safe_dump({"parameters": {"train.optim.lr": {"low": 1e-5, "high": 2.0, "log": True}}}))
    with pytest.raises(
        ConfigError, match=r"train.optim.lr \(.*mine.yaml\): high=2.0 is outside the schema's bounds"
    ):
        build_space(space_file=f)


# ------------------------------------------------------------------------------------ objective guard


def test_guard_refuses_mask_ratio_under_train_loss_and_accepts_it_when_allowed():
    space = build_space(params=["train.mask_ratio=uniform(0.6, 0.9)"])
    with pytest.raises(ConfigError) as e:
        guard_objective(space, "train_loss", "pretrain")
    (line,) = e.value.problems
    assert line.startswith(
        "train.mask_ratio: not searched while optimizing train_loss: it changes the fraction"
    )
    assert "--metric knn_acc" in line and "--allow-objective-change" in line
    kept, notices = guard_objective(space, "train_loss", "pretrain", allow=True)
    assert "train.mask_ratio" in kept and notices == [
        "train.mask_ratio: searched although it changes the fraction of patches the reconstruction loss is "
        "measured on, so train_loss values of different trials are not comparable (allowed by "
        "--allow-objective-change)"
    ]
    # a held-out metric that mask_ratio does not define allows it
    assert "train.mask_ratio" in guard_objective(space, "knn_acc", "pretrain")[0]
    # the pretraining val_loss is still a masked reconstruction loss
    with pytest.raises(ConfigError, match="train.mask_ratio: not searched while optimizing val_loss"):
        guard_objective(space, "val_loss", "pretrain")


@pytest.mark.parametrize(
    "name,metric,stage,refused",
    [
        ("train.norm_pix_loss", "train_loss", "pretrain", True),
        ("train.norm_pix_loss", "knn_acc", "pretrain", False),
        ("dataset.augmentation.mixup", "train_loss", "finetune", True),
        ("dataset.augmentation.mixup", "val_loss", "finetune", False),
        ("dataset.augmentation.mixup", "ACC_all", "finetune", False),
        ("dataset.augmentation.min_scale", "val_loss", "pretrain", False),
        ("train.optim.lr", "train_loss", "pretrain", False),
    ],
)
def test_guard_table(name, metric, stage, refused):
    p = read_schema().parameter(name, parse_expression(None, name, "--param"))  # the user asked for it
    space = SearchSpace((p,))
    if refused:
        with pytest.raises(ConfigError, match=f"^{name}: not searched while optimizing {metric}"):
            guard_objective(space, metric, stage)
    else:
        assert guard_objective(space, metric, stage) == (space, [])


def test_guard_leaves_out_default_parameters_with_a_notice():
    space = build_space(stage="finetune")  # curated: not explicit
    kept, notices = guard_objective(space, "train_loss", "finetune")
    assert "dataset.augmentation.mixup" not in kept and "train.optim.lr" in kept
    assert notices[0].startswith(
        "dataset.augmentation.mixup: left out of the search: it changes the training"
    )


def test_resolve_objective(tmp_path):
    data = str(tmp_path)
    pre = ExperimentConfig.model_validate({"dataset": {"train_data_sources": data}})
    assert resolve_objective(pre) == ("train_loss", "min")
    fin = ExperimentConfig.model_validate(
        {"dataset": {"train_data_sources": data, "val_data_sources": data}, "train": {"stage": "finetune"}}
    )
    assert resolve_objective(fin) == ("ACC_all", "max")
    raw = {"dataset": {"train_data_sources": data, "val_data_sources": data}}
    raw["train"] = {"stage": "finetune", "optim": {"monitor_name": "val_loss"}}
    explicit = ExperimentConfig.model_validate(raw)
    assert resolve_objective(explicit, raw) == ("val_loss", "min")  # the spec's explicit monitor_name
    assert resolve_objective(fin, None, "val_loss", "max") == ("val_loss", "max")
    with pytest.raises(ConfigError, match="metric 'acc' is not one this product reports"):
        resolve_objective(fin, None, "acc")
    with pytest.raises(ConfigError, match="metric 'val_loss' is measured on validation data"):
        resolve_objective(pre, None, "val_loss")
    with pytest.raises(ConfigError, match="'ACC_all' needs a classifier"):
        resolve_objective(pre.model_copy(update={"dataset": fin.dataset}), None, "ACC_all")


# ---------------------------------------------------------------------------------- trial specs / plan


@pytest.fixture
def user(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    ckpt = tmp_path / "pre.ckpt"
    ckpt.write_bytes(b"x")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "results_dir": str(tmp_path / "results"),
                "dataset": {"train_data_sources": str(data), "batch_size": 32},
                "train": {
                    "num_epochs": 6,
                    "optim": {"lr": 5e-4},
                    "resume_training_checkpoint_path": str(ckpt),
                },
                "wandb": {"run_id": "abc"},
            }
        )
    )
    overrides = [
        "train.num_gpus=2",
        "train.gpu_ids=[0,1]",
        f"train.pretrained_model_path={ckpt}",
        "learning_rate=1e-3",  # TAO shorthand: pins train.optim.lr
        "dataset.val_data_sources=s3://bucket/images_val.tar.gz",
    ]
    return spec, overrides, tmp_path


def test_trial_spec_keeps_user_overrides_and_writes_its_own_folder(user):
    spec, overrides, tmp = user
    trial_dir = trial_results_dir(tmp / "results", "t_0001")
    assert trial_dir == str(tmp / "results" / "automl" / "trials" / "t_0001")
    values = {"train.optim.lr": 3e-4, "train.optim.weight_decay": 0.07, "train.optim.warmup_epochs": 2}
    resolved = ResolvedSpec.of(spec, overrides)
    cfg = trial_spec(resolved, values, trial_dir)
    assert cfg.train.num_gpus == 2 and cfg.train.gpu_ids == [0, 1]
    assert cfg.train.pretrained_model_path == str(tmp / "pre.ckpt")
    assert cfg.dataset.val_data_sources == "s3://bucket/images_val.tar.gz"
    assert cfg.dataset.batch_size == 32 and cfg.results_dir == str(tmp / "results")
    assert cfg.train.optim.lr == 1e-3  # pinned by the user's override: the trial's value does not apply
    assert cfg.train.optim.weight_decay == 0.07 and cfg.train.optim.warmup_epochs == 2
    assert cfg.train.results_dir == trial_dir and cfg.action_results_dir("train") == trial_dir
    assert cfg.train.resume_training_checkpoint_path is None  # trials never resume another run
    assert cfg.wandb.run_id is None
    # TAO runs a warmup as long as the run (it never finishes), so a trial may too
    assert trial_spec(resolved, {"train.optim.warmup_epochs": 6}, trial_dir).train.optim.warmup_epochs == 6
    with pytest.raises(ConfigError, match="trial id '../x'"):
        trial_results_dir(tmp, "../x")


def test_plan_pins_explicit_overrides_only(user):
    spec, overrides, _ = user
    plan = plan_search(spec, overrides)
    assert (plan.metric, plan.mode, plan.stage) == ("train_loss", "min", "pretrain")
    assert "train.optim.lr" not in plan.space and plan.pinned == {"train.optim.lr": 1e-3}
    assert (
        "train.optim.lr: pinned by your override train.optim.lr=0.001; left out of the search" in plan.notices
    )
    assert any("resume_training_checkpoint_path is ignored by trials" in n for n in plan.notices)
    # the spec file's own values (lr 5e-4 above) are the starting point, not a pin
    plan = plan_search(spec, [o for o in overrides if not o.startswith("learning_rate")])
    assert "train.optim.lr" in plan.space and plan.pinned == {}
    # the bound space reads num_epochs from the spec: warmup < 6
    assert {plan.space.sample(i)["train.optim.warmup_epochs"] for i in range(200)} <= set(range(6))
    with pytest.raises(
        ConfigError, match="train.optim.lr: pinned by your override .* and searched by --param"
    ):
        plan_search(spec, overrides, params=["train.optim.lr=loguniform(1e-5,1e-3)"])


def test_plan_refuses_and_allows(user):
    spec, overrides, _ = user
    with pytest.raises(ConfigError, match="train.mask_ratio: not searched while optimizing train_loss"):
        plan_search(spec, overrides, params=["train.mask_ratio=uniform(0.6,0.9)"])
    plan = plan_search(
        spec, overrides, params=["train.mask_ratio=uniform(0.6,0.9)"], allow_objective_change=True
    )
    assert "train.mask_ratio" in plan.space
    plan = plan_search(spec, overrides, params=["train.mask_ratio=uniform(0.6,0.9)"], metric="knn_acc")
    assert (plan.metric, plan.mode) == ("knn_acc", "max") and "train.mask_ratio" in plan.space


def test_plan_catches_invalid_trial_specs(user):
    spec, overrides, _ = user
    # min_scale may exceed max_scale (a cross-field rule the schema's bounds cannot express)
    with pytest.raises(
        ConfigError, match="a sampled trial is not a valid spec: dataset.augmentation.min_scale="
    ):
        plan_search(
            spec,
            [*overrides, "dataset.augmentation.max_scale=0.3"],
            params=["dataset.augmentation.min_scale=uniform(0.2, 1.0)"],
            allow_objective_change=True,
        )
    with pytest.raises(ConfigError, match="nothing is left to search"):
        plan_search(
            spec,
            ["train.optim.weight_decay=0.1", "train.optim.lr=1e-3"],
            params=["train.optim.lr_scheduler=off", "train.optim.warmup_epochs=off"],
        )
