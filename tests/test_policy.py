"""The AutoML policy table (PRODUCT.md section 5), case by case."""

from __future__ import annotations

import shutil

import pytest

from automl.policy import parse_policy, resolve_policy
from mae.errors import ConfigError
from tests.conftest import REPO

FILES = ("skill_info.yaml", "train.schema.json", "spec_template_train.yaml")


@pytest.fixture
def schemas(tmp_path):
    """A copy of the generated skill_info.yaml, train schema and template."""
    for name in FILES:
        shutil.copy(REPO / "schemas" / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize(
    "text,expected",
    [
        ("auto", "auto"),
        ("AUTO", "auto"),
        ("on", "auto"),
        ("off", "off"),
        ("Off", "off"),
        ("turn off AutoML", "off"),
        ("disable AutoML", "off"),
        ("no HPO", "off"),
        ("plain training", "off"),
        ("Plain training, please", "off"),
        ("no-HPO", "off"),
        ("disable automl for this run", "off"),
    ],
)
def test_parse_policy(text, expected):
    assert parse_policy(text) == expected


@pytest.mark.parametrize("text", ["", "maybe", "turn on automl", "don't turn off automl", "autom"])
def test_unknown_policy_is_an_error_listing_what_is_allowed(text):
    with pytest.raises(ConfigError) as e:
        parse_policy(text)
    (line,) = e.value.problems
    assert line.startswith(f"--policy {text!r}: not understood") and "allowed: 'auto', 'off'" in line


def test_auto_with_everything_in_place_searches(schemas):
    d = resolve_policy("auto", schemas)
    assert d.use_automl and d.route == "automl" and d.policy == "auto" and not d.warning
    assert d.automl_enabled is True and d.skill_info["monitoring_metric"] == "train_loss"
    assert "searching hyperparameters" in d.reason
    assert resolve_policy("auto").use_automl  # the committed schemas/ folder


@pytest.mark.parametrize("phrase", ["off", "turn off AutoML", "disable AutoML", "no HPO", "plain training"])
def test_off_and_phrases_train_directly(schemas, phrase):
    d = resolve_policy(phrase, schemas)
    assert not d.use_automl and d.route == "direct" and d.policy == "off" and not d.warning
    assert d.reason == f"AutoML is off for this run (--policy {phrase!r}): training the spec as written"


@pytest.mark.parametrize("missing", ["train.schema.json", "spec_template_train.yaml"])
def test_missing_schema_or_template_trains_directly_and_says_why(schemas, missing):
    (schemas / missing).unlink()
    d = resolve_policy("auto", schemas)
    assert not d.use_automl and d.warning and d.automl_enabled is True
    assert d.reason.startswith("AutoML is enabled but not runnable until schemas are generated")
    assert f"{missing} is missing" in d.reason and "make schemas" in d.reason


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("train.schema.json", '{"properties": ', "train.schema.json does not parse"),
        ("train.schema.json", "[]", "train.schema.json is not a spec schema"),
        ("spec_template_train.yaml", "a: [", "spec_template_train.yaml does not parse"),
        ("spec_template_train.yaml", "- 1\n", "spec_template_train.yaml is not a spec template"),
    ],
)
def test_unparseable_schema_or_template_trains_directly(schemas, name, content, expected):
    (schemas / name).write_text(content)
    d = resolve_policy("auto", schemas)
    assert not d.use_automl and d.warning and expected in d.reason
    assert d.reason.startswith("AutoML is enabled but not runnable until schemas are generated")


def test_automl_disabled_in_skill_info_trains_directly(schemas):
    info = schemas / "skill_info.yaml"
    info.write_text(info.read_text().replace("automl_enabled: true", "automl_enabled: false"))
    d = resolve_policy("auto", schemas)
    assert not d.use_automl and not d.warning and d.automl_enabled is False
    assert (
        d.reason
        == "AutoML is disabled for this model (skill_info.yaml: automl_enabled: false): training the spec directly"
    )


@pytest.mark.parametrize("content", [None, "name: [", "- just a list\n"])
def test_missing_or_broken_skill_info_trains_directly(schemas, content):
    info = schemas / "skill_info.yaml"
    if content is None:
        info.unlink()
    else:
        info.write_text(content)
    d = resolve_policy("auto", schemas)
    assert not d.use_automl and d.warning and d.automl_enabled is None
    assert "so AutoML is not enabled for this model: training the spec directly" in d.reason


def test_off_needs_no_schema_at_all(tmp_path):
    assert resolve_policy("plain training", tmp_path).route == "direct"


def test_other_actions_never_search(schemas):
    d = resolve_policy("auto", schemas, action="export")
    assert not d.use_automl and d.reason == "AutoML searches training only; export runs directly"


def test_a_per_run_policy_never_changes_skill_info(schemas):
    info = schemas / "skill_info.yaml"
    before = info.read_bytes(), info.stat().st_mtime_ns
    for policy in ("off", "no HPO", "auto"):
        resolve_policy(policy, schemas)
    assert (info.read_bytes(), info.stat().st_mtime_ns) == before


def test_bad_policy_is_an_error_even_with_schemas(schemas):
    with pytest.raises(ConfigError, match="--policy 'sometimes'"):
        resolve_policy("sometimes", schemas)
