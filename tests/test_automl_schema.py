"""The schema reader: our generated schemas and a hand-written TAO-dialect schema with every AutoML keyword."""

from __future__ import annotations

import json
import math

import pytest

from automl.parameters import Condition, parse_math_cond
from automl.schema import Refinement, load_search_space, read_schema
from mae.config import ACTIONS
from mae.errors import ConfigError
from mae.spec import all_keys
from tests.conftest import REPO

SCHEMAS = REPO / "schemas"
TAO = REPO / "tests" / "fixtures" / "tao_dialect.schema.json"


def write_schema(tmp_path, properties: dict, defaults=(), disabled=(), name="s.schema.json"):
    path = tmp_path / name
    path.write_text(
        json.dumps(
            {
                "type": "object",
                "automl_default_parameters": list(defaults),
                "automl_disabled_parameters": list(disabled),
                "properties": properties,
            }
        )
    )
    return path


def problems(excinfo) -> str:
    return "\n".join(excinfo.value.problems)


# ----------------------------------------------------------------------------------------- our schemas


@pytest.mark.parametrize("action", ACTIONS)
def test_reads_every_generated_schema(action):
    schema = read_schema(SCHEMAS / f"{action}.schema.json")
    assert set(schema.fields) == set(all_keys())
    assert {"dataset", "dataset.augmentation", "train", "train.optim", "train.cudnn"} <= schema.containers
    space = load_search_space(SCHEMAS / f"{action}.schema.json")
    if action == "train":
        assert space.names == [
            "train.optim.lr",
            "train.optim.weight_decay",
            "train.optim.lr_scheduler",
            "train.optim.warmup_epochs",
        ]
        # every parameter the schema marks automl_enabled builds with its own range
        searchable = schema.searchable()
        assert {"train.mask_ratio", "dataset.batch_size", "model.decoder_embed_dim"} <= set(searchable)
        assert all(schema.parameter(name).name == name for name in searchable)
        assert "train.num_epochs" not in searchable and "model.arch" not in searchable
    else:
        assert len(space) == 0  # only training is searched
        with pytest.raises(ConfigError, match="train.optim.lr: AutoML is disabled"):
            load_search_space(SCHEMAS / f"{action}.schema.json", ["train.optim.lr"])


def test_our_train_schema_keywords():
    space = load_search_space(SCHEMAS / "train.schema.json")
    lr = space["train.optim.lr"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-5, 1e-2, True)  # automl_range + log_scale
    assert not lr.low_open  # 1e-5 lies inside the exclusive bound 0, so it is a closed end
    sched = space["train.optim.lr_scheduler"]
    assert sched.kind == "categorical" and sched.choices == ("MultiStep", "cosine")
    assert sched.weights == pytest.approx((0.3, 0.7))
    warm = space["train.optim.warmup_epochs"]
    assert (warm.kind, warm.low, warm.high) == ("int", 0, 10)
    assert warm.depends_on == "train.num_epochs" and warm.condition == Condition("<", None, "< depends_on")
    schema = read_schema(SCHEMAS / "train.schema.json")
    assert schema.parameter("dataset.batch_size").power == 2
    assert schema.parameter("model.decoder_embed_dim").step == 16
    assert schema.parameter("train.mask_ratio").high == 0.9  # automl_range inside (0, 1)
    depth = schema.parameter("model.decoder_depth")  # type ["integer", "null"]
    assert (depth.kind, depth.low, depth.high) == ("int", 1, 8)


# ----------------------------------------------------------------------------------- TAO's dialect


def test_tao_types():
    schema = read_schema(TAO)
    unbounded = {"train.optim.weight_decay", "train.accum_grad_batches"}  # need a range: see below
    p = {n: schema.parameter(n) for n in schema.searchable() if n not in unbounded}
    assert p["dataset.batch_size"].kind == "int" and p["dataset.batch_size"].power == 2
    assert p["model.decoder_depth"].kind == "int" and p["model.decoder_depth"].choices == (1, 2, 4, 8)
    assert p["model.decoder_embed_dim"].kind == "int" and p["model.decoder_embed_dim"].step == 32
    assert p["train.optim.lr"].kind == "float"
    assert p["train.mask_ratio"].kind == "float"  # standard "number"
    assert p["train.norm_pix_loss"].kind == "bool" and p["train.norm_pix_loss"].choices == (False, True)
    assert p["train.optim.lr_scheduler"].kind == "categorical"
    assert p["model.arch"].kind == "categorical"
    for name, why in [
        ("train.freeze", "a list value is not searched"),
        ("train.optim.type", "is a constant"),
        ("dataset.augmentation.auto_aug", "a free-form string (no enum) is not searched"),
        ("train.optim.gamma", "AutoML is disabled"),  # automl_enabled: "FALSE"
    ]:
        assert why in schema.not_searchable(name)


def test_tao_infinity_bounds():
    schema = read_schema(TAO)
    assert schema.fields["train.num_epochs"]["maximum"] == math.inf  # bare JSON Infinity
    # an infinite bound with no range cannot be searched, and the message says what to do
    for name, hint in [
        ("train.optim.weight_decay", "uniform(low, high)"),  # "maximum": "inf"
        ("train.accum_grad_batches", "int(low, high)"),  # "maximum": "Infinity"
    ]:
        with pytest.raises(ConfigError) as e:
            schema.parameter(name)
        assert f"{name} (in tao_dialect.schema.json): the search range" in problems(e)
        assert "is unbounded" in problems(e) and f"--param {name}={hint}" in problems(e)
    # ... until a range is given, which must lie inside the bounds
    wd = schema.parameter("train.optim.weight_decay", Refinement(low=0.0, high=0.3))
    assert (wd.low, wd.high, wd.low_open) == (0.0, 0.3, False)  # ">= 0": inclusive
    acc = schema.parameter("train.accum_grad_batches", Refinement(low=1, high=8))
    assert acc.power == 2
    # a relation may bound the infinite end: warmup_epochs < train.num_epochs, maximum Infinity
    warm = schema.parameter("train.optim.warmup_epochs")
    assert warm.high == math.inf
    space = load_search_space(TAO, ["train.optim.warmup_epochs"]).bind({"train.num_epochs": 3})
    assert {space.sample(i)["train.optim.warmup_epochs"] for i in range(60)} == {0, 1, 2}


def test_tao_every_math_cond_form():
    schema = read_schema(TAO)
    lr = schema.parameter("train.optim.lr")  # "> 0.0", minimum 0: strict
    assert (lr.low, lr.low_open, lr.high, lr.high_open) == (0.0, True, 1.0, False)
    wd = schema.parameter("train.optim.weight_decay", Refinement(low=0.0, high=1.0))  # ">= 0"
    assert (wd.low, wd.low_open) == (0.0, False)
    mom = schema.parameter("train.optim.momentum")  # "< 1.0", maximum 1: strict
    assert (mom.high, mom.high_open) == (1.0, True)
    ld = schema.parameter("train.optim.layer_decay")  # "<= 0.9" tightens maximum 1
    assert (ld.high, ld.high_open) == (0.9, False)
    assert schema.parameter("dataset.batch_size").power == 2  # "^ 2"
    assert schema.parameter("model.decoder_embed_dim").step == 32  # "/ 32"
    for name, op, parent in [
        ("dataset.augmentation.max_scale", ">", "dataset.augmentation.min_scale"),
        ("dataset.augmentation.max_ratio", ">=", "dataset.augmentation.min_ratio"),
        ("train.optim.warmup_epochs", "<", "train.num_epochs"),
        ("train.validation_interval", "<=", "train.checkpoint_interval"),
    ]:
        p = schema.parameter(name)
        assert p.relation is not None and p.relation.op == op and p.depends_on == parent


@pytest.mark.parametrize(
    "text,expected",
    [
        ("> 0.0", Condition(">", 0.0, "> 0.0")),
        (">= 0", Condition(">=", 0.0, ">= 0")),
        ("<1", Condition("<", 1.0, "<1")),
        ("<= 10", Condition("<=", 10.0, "<= 10")),
        ("^ 2", Condition("^", 2.0, "^ 2")),
        ("/ 32", Condition("/", 32.0, "/ 32")),
        ("> depends_on", Condition(">", None, "> depends_on")),
        ("<= depends_on", Condition("<=", None, "<= depends_on")),
    ],
)
def test_parse_math_cond(text, expected):
    assert parse_math_cond(text, "x") == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("% 3", "is not understood; allowed forms: '> 0.0', '>= 0'"),
        ("> abc", "is not understood"),
        ("^ 1.5", "the base of a power must be an integer >= 2"),
        ("/ 0", "the step of a multiple must be > 0"),
        ("^ depends_on", "only > >= < <= compare with depends_on"),
    ],
)
def test_bad_math_cond(text, message):
    with pytest.raises(ConfigError) as e:
        parse_math_cond(text, "x")
    assert problems(e).startswith(f"x: math_cond {text!r}") and message in problems(e)


def test_tao_dependencies_are_sampled_after_their_parents():
    space = load_search_space(TAO)
    names = space.names
    assert names[:3] == [  # parent_param ones first ("TRUE" and true both count)
        "train.checkpoint_interval",
        "dataset.augmentation.min_scale",
        "dataset.augmentation.min_ratio",
    ]
    for child in space:
        if child.depends_on in space:
            assert names.index(child.depends_on) < names.index(child.name)


def test_tao_disabled_leaves_and_containers():
    schema = read_schema(TAO)
    # containers listed as disabled do not disable their leaves
    assert "train.optim" in schema.data["automl_disabled_parameters"]
    space = load_search_space(TAO)
    assert "train.optim.lr" in space and "dataset.augmentation.min_scale" in space
    assert schema.disabled == {
        "dataset.num_workers_per_gpu",
        "train.num_epochs",
        "train.optim.milestones",
        "train.precision",
        "train.seed",
    }
    with pytest.raises(ConfigError) as e:
        load_search_space(TAO, ["train.seed", "train.optim", "train.optim.lrr"])
    text = problems(e)
    assert "train.seed: AutoML is disabled for this parameter in tao_dialect.schema.json" in text
    assert (
        "train.optim: is a group of settings, not a parameter; name its leaves (e.g. train.optim.type" in text
    )
    assert (
        "train.optim.lrr: not a parameter of tao_dialect.schema.json (did you mean 'train.optim.lr'" in text
    )
    assert len(e.value.problems) == 3  # every problem at once


def test_tao_option_weights():
    space = load_search_space(TAO)
    assert space["model.decoder_depth"].weights == pytest.approx((0.1, 0.2, 0.3, 0.4))
    assert space["train.norm_pix_loss"].weights == pytest.approx((0.25, 0.75))  # of [false, true]
    assert space["train.optim.lr_scheduler"].weights == pytest.approx((0.3, 0.7))


@pytest.mark.parametrize(
    "field,message",
    [
        ({"type": "float", "minimum": 0, "maximum": 1, "math_cond": "> depends_on"}, "needs depends_on"),
        (
            {"type": "float", "minimum": 0, "maximum": 1, "math_cond": "> depends_on", "depends_on": "a.zz"},
            "depends_on='a.zz' is not a parameter of s.schema.json",
        ),
        (
            {"type": "categorical", "enum": ["x", "y"], "option_weights": [1]},
            "1 option_weights for 2 choices",
        ),
        (
            {"type": "categorical", "enum": ["x", "y"], "option_weights": [1, -1]},
            "must be >= 0 with a positive sum",
        ),
        (
            {"type": "float", "minimum": 0, "maximum": 1, "option_weights": [1, 2]},
            "option_weights need an enum",
        ),
        ({"type": "float", "minimum": "lots", "maximum": 1}, "minimum='lots' is not a number"),
        ({"type": "float", "minimum": 2, "maximum": 1}, "its bounds [2, 1] are empty"),
        ({"type": "float", "minimum": 0, "maximum": 1, "automl_range": [0.5]}, "automl_range=[0.5] must be"),
        ({"type": "float", "minimum": 0, "maximum": 1, "automl_range": [0.5, 2]}, "high=2 is outside"),
        ({"type": "int", "minimum": 5, "maximum": 7, "math_cond": "^ 2"}, "no value in [5, 7] satisfies"),
        (
            {"type": "float", "minimum": 0, "maximum": 1, "math_cond": "% 2"},
            "math_cond '% 2' is not understood",
        ),
        (
            {"type": "float", "minimum": 0, "maximum": 1, "log_scale": True},
            "a log scale needs a range above 0",
        ),
        ({"type": "ordered_int", "enum": [1, 2.5]}, "must hold integers"),
        ({"type": "tensor"}, "type 'tensor' in s.schema.json is not understood"),
        (
            {"type": "float", "minimum": 0, "maximum": 1, "math_cond": "> depends_on", "depends_on": "a.c"},
            "compares with a.c, which is not a number",
        ),
    ],
)
def test_bad_schema_content_names_the_parameter(tmp_path, field, message):
    path = write_schema(
        tmp_path, {"a": {"type": "object", "properties": {"b": field, "c": {"type": "string"}}}}
    )
    with pytest.raises(ConfigError) as e:
        load_search_space(path, ["a.b"])
    assert problems(e).startswith("a.b"), problems(e)
    assert message in problems(e)


def test_bad_schema_lists_and_files(tmp_path):
    props = {"a": {"type": "float", "minimum": 0, "maximum": 1}, "g": {"type": "object", "properties": {}}}
    with pytest.raises(
        ConfigError, match="zz: listed in automl_default_parameters of s.schema.json but is not"
    ):
        read_schema(write_schema(tmp_path, props, defaults=["zz"]))
    with pytest.raises(ConfigError, match="a: listed in both automl_default_parameters and automl_disabled"):
        read_schema(write_schema(tmp_path, props, defaults=["a"], disabled=["a"]))
    bad = tmp_path / "bad.json"
    bad.write_text('{"properties": {"a": }')
    with pytest.raises(ConfigError, match=r"bad.json: invalid JSON at line 1, column 22: Expecting value"):
        read_schema(bad)
    with pytest.raises(ConfigError, match="does not exist; run `make schemas`"):
        read_schema(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ConfigError, match="not a spec schema"):
        read_schema(tmp_path / "list.json")


def test_draft4_exclusive_bounds_and_standard_types(tmp_path):
    path = write_schema(
        tmp_path,
        {
            "x": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 2},
            "n": {"type": ["integer", "null"], "minimum": 1, "exclusiveMaximum": 9},
            "e": {"type": "string", "enum": ["a", "b"]},
            "f": {"type": "boolean"},
        },
        defaults=["x", "n", "e", "f"],
    )
    space = load_search_space(path)
    assert (space["x"].low, space["x"].low_open) == (0, True)
    assert (space["n"].kind, space["n"].high, space["n"].high_open) == ("int", 9, True)
    assert {space.sample(i)["n"] for i in range(200)} == set(range(1, 9))
    assert space["e"].kind == "categorical" and space["f"].kind == "bool"
