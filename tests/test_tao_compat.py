"""NVIDIA's generated TAO files load unchanged: the five spec templates and train.schema.json (fixtures written
from the facts of those files), and what TAO runs or ignores gets one line instead of a refusal or silence."""

from __future__ import annotations

import json
import logging
import math

import pytest
import yaml

from automl.schema import load_search_space, read_schema
from mae.cli import main as mae_main
from mae.config import ACTIONS
from mae.engine.schedule import lr_factor_fn
from mae.spec import flatten, load_spec
from mae.tao_compat import spec_notices
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures"
TEMPLATES = FIXTURES / "tao_specs"
NVIDIA_SCHEMA = FIXTURES / "nvidia_mae_train.schema.json"


def template(action: str):
    return TEMPLATES / f"spec_template_{action}.yaml"


def missing_keys(action: str) -> list[str]:
    return sorted(k for k, v in flatten(yaml.safe_load(template(action).read_text())).items() if v == "???")


def run(argv, capsys) -> tuple[int, list[str], str]:
    code = mae_main(argv)
    out, err = capsys.readouterr()
    return code, [line for line in err.splitlines() if line.strip()], out


@pytest.fixture
def inputs(tmp_path):
    """Values for every `???` of the templates (files that exist, as the actions' path checks require)."""
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "model.ckpt").write_bytes(b"")
    (tmp_path / "model.onnx").write_bytes(b"")
    return {
        "dataset.train_data_sources": images,
        "dataset.val_data_sources": images,
        "dataset.test_data_sources": images,
        "evaluate.checkpoint": tmp_path / "model.ckpt",
        "inference.checkpoint": tmp_path / "model.ckpt",
        "export.checkpoint": tmp_path / "model.ckpt",
        "export.onnx_file": tmp_path / "out" / "model.onnx",
        "gen_trt_engine.onnx_file": tmp_path / "model.onnx",
        "gen_trt_engine.trt_engine": tmp_path / "out" / "model.engine",
    }


# ------------------------------------------------------------------------------------- spec templates


@pytest.mark.parametrize("action", ACTIONS)
def test_nvidia_template_reports_only_its_missing_values(action, capsys):
    """As with our own templates, --print-config names each `???` the action needs, and nothing else."""
    code, lines, out = run([action, "-e", str(template(action)), "--print-config"], capsys)
    assert code == 2 and out == ""
    expected = [
        f"mae: error: {k}: the spec has '???' (a value you must supply) and {action} needs it"
        for k in missing_keys(action)
    ]
    assert lines == expected
    ours = REPO / "schemas" / f"spec_template_{action}.yaml"
    code, our_lines, _ = run([action, "-e", str(ours), "--print-config"], capsys)
    assert code == 2 and all("the spec has '???'" in line for line in our_lines)


@pytest.mark.parametrize("action", ACTIONS)
def test_nvidia_template_loads_once_values_are_given(action, inputs, capsys, tmp_path):
    overrides = [f"{k}={inputs[k]}" for k in missing_keys(action)]
    code, lines, out = run([action, "-e", str(template(action)), "--print-config", *overrides], capsys)
    assert code == 0, lines
    printed = yaml.safe_load(out)
    # TAO's empty names take our defaults, with a notice saying which
    assert printed["model_name"] == "mae" and printed["results_dir"] == "results"
    assert "[mae] INFO: model_name is empty (as in TAO's templates): using the default 'mae'" in lines
    assert "[mae] INFO: results_dir is empty (as in TAO's templates): using the default 'results'" in lines
    assert printed["train"]["optim"]["milestones"] == [88, 96] and printed["train"]["num_epochs"] == 10
    train_lines = [line for line in lines if "milestones" in line or "backbone_multiplier" in line]
    if action == "train":
        assert train_lines == [
            "[mae] WARNING: train.optim.milestones=[88, 96]: 88, 96 never fire with train.num_epochs=10 "
            "(epochs 0..9), as in TAO; the learning rate stays constant after warmup",
            "[mae] INFO: train.optim.backbone_multiplier=0.1: TAO ignores this key, but here the encoder trains "
            "at 0.1x the decoder's learning rate; set train.optim.backbone_multiplier=1.0 to train as TAO does",
        ]
    else:
        assert train_lines == []  # other actions do not train: training settings say nothing
    assert len(lines) == (4 if action == "train" else 2)  # nothing else is said
    assert not any("Traceback" in line for line in lines)


# -------------------------------------------------------------------- what TAO runs: warn, not refuse


def notices(overrides, *, action="train") -> list[str]:
    cfg = load_spec(None, overrides)
    return [n.text for n in spec_notices(cfg, action)]


def test_warmup_as_long_as_the_run_loads_with_one_warning(tmp_path, capsys):
    # TAO's AutoML samples warmup_epochs in [0, 100] with num_epochs 10, and TAO runs it
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"dataset": {"train_data_sources": str(tmp_path)}}))
    code, lines, _ = run(
        ["train", "-e", str(spec), "--print-config", "num_epochs=10", "train.optim.warmup_epochs=20"], capsys
    )
    assert code == 0
    assert lines == [
        "[mae] WARNING: train.optim.warmup_epochs=20 is not below train.num_epochs=10: the warmup never "
        "finishes (the learning rate ends near 50% of train.optim.lr), as in TAO"
    ]
    # ... and the schedule does what the line says: a linear ramp that never reaches the peak
    for kind in ("MultiStep", "cosine"):
        f = lr_factor_fn(kind, total_steps=100, steps_per_epoch=10, warmup_epochs=20)
        assert f(0) == 0.0 and f(99) == pytest.approx(99 / 200)
        assert all(f(s) < f(s + 1) for s in range(99))


def test_milestones_tao_runs_warn_and_behave_as_torch():
    assert notices(["num_epochs=10", "train.optim.milestones=[3,7]"]) == []
    assert notices(["num_epochs=10", "train.optim.milestones=[-2,3,12]"]) == [
        "train.optim.milestones=[-2, 3, 12]: -2, 12 never fire with train.num_epochs=10 (epochs 0..9), as in TAO; "
        "the others do"
    ]
    assert notices(["num_epochs=10", "train.optim.milestones=[7,3,3]"]) == [
        "train.optim.milestones=[7, 3, 3] is not strictly increasing: applied in increasing order, a repeated "
        "epoch multiplying by gamma once per repeat (as torch's MultiStepLR does)"
    ]
    assert notices(["train.optim.lr_scheduler=cosine", "train.optim.milestones=[3]"]) == [
        "train.optim.milestones=[3] is not used: train.optim.lr_scheduler='cosine' (milestones belong to "
        "MultiStep)"
    ]
    # torch's MultiStepLR: a negative milestone never fires, a repeat multiplies twice, order does not matter
    f = lr_factor_fn(
        "MultiStep", total_steps=100, steps_per_epoch=10, warmup_epochs=0, milestones=[7, -2, 3, 3], gamma=0.5
    )
    assert [f(e * 10) for e in (0, 2, 3, 6, 7, 9)] == [1.0, 1.0, 0.25, 0.25, 0.125, 0.125]


def test_refusals_that_stay_are_what_would_crash(capsys, tmp_path):
    # torch's uniform_ refuses a crop scale range with min > max: TAO crashes on it too
    code, lines, _ = run(
        [
            "train",
            "--print-config",
            "-e",
            str(template("train")),
            f"dataset.train_data_sources={tmp_path}",
            "dataset.augmentation.min_scale=0.9",
            "dataset.augmentation.max_scale=0.5",
        ],
        capsys,
    )
    assert code == 2
    assert [line for line in lines if "error" in line] == [
        "mae: error: dataset.augmentation.min_scale=0.9 must not exceed dataset.augmentation.max_scale=0.5"
    ]


# --------------------------------------------------------------- what TAO ignores and we apply: notice


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.optim.momentum=0.9", "train.optim.backbone_multiplier=1.0"], []),  # as TAO behaves
        (
            ["train.optim.momentum=0.5"],
            [
                "train.optim.momentum=0.5: TAO ignores this key, but here it is AdamW's beta1 (0.5; AdamW's "
                "default is 0.9); set train.optim.momentum=0.9 to train as TAO does"
            ],
        ),
        (
            ["train.stage=finetune", "train.optim.backbone_multiplier=0.25"],
            [
                "train.optim.backbone_multiplier=0.25: TAO ignores this key, but here the encoder trains at 0.25x "
                "the classifier head's learning rate; set train.optim.backbone_multiplier=1.0 to train as TAO "
                "does"
            ],
        ),
        (["model.arch=convnextv2_base", "model.decoder_depth=1"], []),  # FCMAE's published decoder
        (
            ["model.arch=vit_base_patch16", "model.decoder_depth=1"],
            [
                "model.decoder_depth=1: TAO ignores this key, but here the MAE decoder has 1 block(s) instead of "
                "vit_base_patch16's published 8; set model.decoder_depth=8 to train as TAO does"
            ],
        ),
    ],
)
def test_values_tao_ignores_get_a_notice(overrides, expected):
    assert notices(overrides) == expected
    assert notices(overrides, action="export") == []


def test_notices_only_for_values_the_spec_sets(caplog):
    caplog.set_level(logging.INFO, logger="mae")
    load_spec(None, [])  # our defaults: nothing to say
    assert caplog.records == []
    load_spec(None, ["train.optim.backbone_multiplier=0.1"])
    assert [r.levelname for r in caplog.records] == ["INFO"]


# ------------------------------------------------------------------------------------------ the schema


def test_nvidia_schema_yields_taos_five_default_parameters():
    space = load_search_space(NVIDIA_SCHEMA)
    assert space.names == [
        "train.optim.lr",
        "train.optim.weight_decay",
        "train.optim.momentum",
        "train.optim.backbone_multiplier",
        "train.optim.warmup_epochs",
    ]
    for name in space.names[:4]:
        p = space[name]
        assert (p.kind, p.low, p.high, p.log, p.low_open, p.high_open) == (
            "float",
            0.0,
            1.0,
            False,
            False,
            False,
        )
        assert p.choices is None and p.condition is None
    warm = space["train.optim.warmup_epochs"]  # no math_cond in NVIDIA's file: [0, 100] whatever num_epochs
    assert (warm.kind, warm.low, warm.high, warm.condition, warm.depends_on) == ("int", 0, 100, None, None)
    values = space.bind({"train.num_epochs": 10}).sample(0)
    assert set(values) == set(space.names) and 0 <= values["train.optim.warmup_epochs"] <= 100


def test_nvidia_schema_structures_are_read():
    data = json.loads(NVIDIA_SCHEMA.read_text())
    # the fixture holds every structure of NVIDIA's file
    assert {
        "automl_default_parameters",
        "automl_disabled_parameters",
        "default",
        "popular",
        "properties",
        "type",
        "x_tao_schema",
    } <= set(data)
    assert isinstance(data["properties"]["automl_disabled_parameters"], list)
    schema = read_schema(NVIDIA_SCHEMA)
    assert "automl_disabled_parameters" not in schema.fields  # TAO's container list, not a field
    assert {"train", "train.optim", "dataset", "model"} <= schema.containers
    assert "train.optim.gamma" in schema.disabled and "train.optim.lr" not in schema.disabled
    # a sampled TAO configuration is a spec we run (warmup past num_epochs included)
    values = load_search_space(NVIDIA_SCHEMA).bind({"train.num_epochs": 10}).sample(3)
    cfg = load_spec(
        template("train"), [f"{k}={v}" for k, v in values.items()] + ["train.optim.warmup_epochs=60"]
    )
    assert cfg.train.optim.warmup_epochs == 60 and math.isclose(cfg.train.optim.lr, values["train.optim.lr"])


def test_a_bad_properties_entry_is_still_an_error(tmp_path):
    from mae.errors import ConfigError

    path = tmp_path / "s.schema.json"
    path.write_text(json.dumps({"type": "object", "properties": {"lr": 3}}))
    with pytest.raises(ConfigError, match="lr: the schema entry in s.schema.json is not an object"):
        read_schema(path)


@pytest.mark.parametrize("action", ACTIONS)
def test_our_schemas_carry_nvidias_root_keys(action):
    data = json.loads((REPO / "schemas" / f"{action}.schema.json").read_text())
    meta = data["x_tao_schema"]
    assert meta["action"] == meta["schema_action"] == action and meta["model"] == "mae"
    assert data["default"]["train"]["optim"]["lr"] == 2e-4  # the whole default spec
    assert set(data["popular"]) == set(ACTIONS)
    assert "dataset.train_data_sources" in data["popular"]["train"]
    assert "dataset.train_data_sources" not in data["popular"]["evaluate"]  # evaluate does not read it
