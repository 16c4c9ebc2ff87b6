"""The generated schemas/: in sync with mae/config.py, valid JSON Schema, templates validate, AutoML keywords."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from mae import schemas
from mae.config import ACTIONS, ExperimentConfig
from mae.spec import all_keys, flatten
from tests.conftest import REPO

SCHEMA_DIR = REPO / "schemas"


def load(action: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{action}.schema.json").read_text())


def leaves(node: dict, prefix: str = "") -> dict[str, dict]:
    out = {}
    for name, sub in node.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            out.update(leaves(sub, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = sub
    return out


def test_committed_schemas_match_the_code():
    assert schemas.check() == []


def test_check_mode_fails_on_drift(tmp_path, capsys):
    assert schemas.main(["--dir", str(tmp_path)]) == 0
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 0
    path = tmp_path / "train.schema.json"
    path.write_text(path.read_text().replace('"default": 0.0002', '"default": 0.5'))
    (tmp_path / "stray.json").write_text("{}")
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "train.schema.json: differs" in err and "stray.json: not generated" in err


@pytest.mark.parametrize("action", ACTIONS)
def test_schema_is_valid_and_template_validates(action):
    schema = load(action)
    jsonschema.Draft202012Validator.check_schema(schema)
    template = yaml.safe_load((SCHEMA_DIR / f"spec_template_{action}.yaml").read_text())
    jsonschema.validate(template, schema)
    jsonschema.validate(schema["default"], schema)
    assert set(leaves(schema)) == set(all_keys())  # one list of keys: the config's


def test_deploy_template_validates():
    template = yaml.safe_load((SCHEMA_DIR / "spec_template_deploy_gen_trt_engine.yaml").read_text())
    jsonschema.validate(template, load("gen_trt_engine"))
    assert template["gen_trt_engine"]["onnx_file"] == "???"


@pytest.mark.parametrize(
    "spec,ok",
    [
        ({"train": {"optim": {"lr": 1e-3}}}, True),
        ({"dataset": {"train_data_sources": ["a.tar.gz", "s3://b/c.tar.gz"]}}, True),
        ({"train": {"optim": {"lr": 0.0}}}, False),  # exclusive minimum
        ({"train": {"optim": {"lrr": 1e-3}}}, False),  # unknown key
        ({"train": {"precision": "fp64"}}, False),  # enum
        ({"model": {"decoder_depth": None}}, True),  # nullable
        ({"model": {"decoder_depth": 0}}, False),
        ({"train": {"num_epochs": "10"}}, False),  # wrong type
    ],
)
def test_schema_and_pydantic_agree(spec, ok):
    schema = load("train")
    schema_ok = jsonschema.Draft202012Validator(schema).is_valid(spec)
    try:
        ExperimentConfig.model_validate(spec)
        pydantic_ok = True
    except ValueError:
        pydantic_ok = False
    assert schema_ok == pydantic_ok == ok


def test_default_searched_parameters_change_results():
    schema = load("train")
    defaults = schema["automl_default_parameters"]
    assert set(defaults) == {
        "train.optim.lr",
        "train.optim.weight_decay",
        "train.optim.lr_scheduler",
        "train.optim.warmup_epochs",
    }
    # not searched by default: they change the monitored loss, or do little on AdamW
    for key in (
        "train.mask_ratio",
        "train.norm_pix_loss",
        "train.optim.momentum",
        "train.optim.backbone_multiplier",
    ):
        assert key not in defaults
    fields = leaves(schema)
    for key in ("train.optim.lr", "train.optim.weight_decay"):
        assert fields[key]["log_scale"] is True
        low, high = fields[key]["automl_range"]
        assert 0 < low < high  # a log range cannot start at 0 (TAO searched lr uniformly in [0, 1])
    assert fields["train.optim.lr"]["automl_range"][1] <= 1e-2


def test_automl_keywords_are_consistent():
    schema = load("train")
    fields = leaves(schema)
    containers = {
        "dataset",
        "dataset.augmentation",
        "model",
        "train",
        "train.cudnn",
        "train.optim",
        "evaluate",
        "inference",
        "export",
        "gen_trt_engine",
        "gen_trt_engine.tensorrt",
        "wandb",
    }
    disabled = set(schema["automl_disabled_parameters"])
    assert containers <= disabled  # TAO lists containers as disabled ...
    assert not set(schema["automl_default_parameters"]) & disabled  # ... without disabling their leaves
    for key, f in fields.items():
        assert "automl_enabled" in f, key
        assert (key in disabled) == (not f["automl_enabled"]), key
        if "option_weights" in f:
            assert len(f["option_weights"]) == len(f["enum"]) and min(f["option_weights"]) > 0, key
        if "depends_on" in f:
            assert f["depends_on"] in fields and fields[f["depends_on"]].get("parent_param"), key
            assert f["math_cond"] in ("< depends_on", "<= depends_on", "> depends_on", ">= depends_on"), key
        if "automl_range" in f:
            low, high = f["automl_range"]
            assert (
                f.get("minimum", f.get("exclusiveMinimum", -1e99)) <= low < high <= f.get("maximum", 1e99)
            ), key
    # per-object lists hold the dotted paths below that object
    optim = schema["properties"]["train"]["properties"]["optim"]
    assert set(optim["automl_default_parameters"]) == set(schema["automl_default_parameters"])
    assert schema["properties"]["dataset"]["automl_default_parameters"] == []


@pytest.mark.parametrize("action", [a for a in ACTIONS if a != "train"])
def test_only_train_is_searched(action):
    schema = load(action)
    assert schema["automl_default_parameters"] == []
    assert not any(f["automl_enabled"] for f in leaves(schema).values())


def test_skill_info_and_manifest():
    info = yaml.safe_load((SCHEMA_DIR / "skill_info.yaml").read_text())
    assert info["automl_enabled"] is True and info["monitoring_metric"] == "train_loss"
    manifest = json.loads((SCHEMA_DIR / "manifest.json").read_text())
    assert manifest["actions"] == list(ACTIONS)
    for name in [*manifest["schemas"].values(), *manifest["templates"].values(), manifest["skill_info"]]:
        assert (SCHEMA_DIR / name).is_file(), name


def test_templates_mark_required_inputs():
    train = yaml.safe_load((SCHEMA_DIR / "spec_template_train.yaml").read_text())
    assert train["dataset"]["train_data_sources"] == "???"
    assert flatten(train)["train.optim.lr"] == 2e-4
