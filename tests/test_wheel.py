"""The package as users install it: a wheel (not editable) carries schemas/ and search_spaces/ as package
resources, and `automl` run from that install reads them there, not from the repository.

The wheel is built from a copy of the sources (so the working tree gets no build/ folder), installed with
`pip install --target` and run with PYTHONPATH pointing at it, from a folder outside the repository, by this
virtualenv's interpreter for the dependencies (torch, Ray, ... cannot be installed offline into a fresh one).
The installed copy comes first on sys.path, so `mae` and `automl` import from it; the test asserts that.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mae.resources import schema_dir, search_spaces_dir
from tests.data_fixtures import write_image

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "mae", "automl", "schemas", "search_spaces")


def _package_folders() -> set[str]:
    """Dotted names of the code packages in the checkout (folders of .py files under mae/ and automl/)."""
    found = set()
    for top in ("mae", "automl"):
        for py in (REPO / top).rglob("*.py"):
            found.add(".".join(py.parent.relative_to(REPO).parts))
    return found


def _pyproject_packages() -> list[str]:
    from setuptools.config.pyprojecttoml import read_configuration

    return read_configuration(REPO / "pyproject.toml", expand=False)["tool"]["setuptools"]["packages"]


def test_pyproject_lists_every_package():
    # pyproject.toml lists packages by hand (find cannot name the data packages): a new folder must be added
    missing = sorted(_package_folders() - set(_pyproject_packages()))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"


def test_checkout_resolves_to_top_level_folders():
    # the dev install (editable) and a plain checkout read and regenerate the repository's own folders
    from automl.schema import TRAIN_SCHEMA
    from automl.space_file import SEARCH_SPACES_DIR
    from mae.schemas import SCHEMA_DIR

    assert schema_dir() == SCHEMA_DIR == REPO / "schemas"
    assert search_spaces_dir() == SEARCH_SPACES_DIR == REPO / "search_spaces"
    assert TRAIN_SCHEMA == REPO / "schemas" / "train.schema.json"


def test_source_tree_without_install_falls_back_to_top_level(tmp_path):
    # a source tree put on sys.path (no install): the resource packages do not import, the folders beside
    # the packages are used
    src = tmp_path.resolve() / "src"
    (src / "mae").mkdir(parents=True)
    for name in ("__init__.py", "resources.py"):
        shutil.copy(REPO / "mae" / name, src / "mae" / name)
    (src / "schemas").mkdir()
    (src / "search_spaces").mkdir()
    out = _python(
        "import json, mae.resources as r; print(json.dumps([str(r.schema_dir()), str(r.search_spaces_dir())]))",
        src,
        cwd=tmp_path,
    )
    assert json.loads(out) == [str(src / "schemas"), str(src / "search_spaces")]


def _env(pythonpath: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=str(pythonpath), PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _run(cmd: list[str], pythonpath: Path, cwd: Path, timeout: float = 120) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=_env(pythonpath), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{' '.join(cmd[:4])} ... failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _python(code: str, pythonpath: Path, cwd: Path) -> str:
    return _run([sys.executable, "-c", code], pythonpath, cwd)


# Run from the wheel install: where everything imports from, and a search plan (curated space + schema).
_PROBE = textwrap.dedent(
    """
    import importlib.resources, json, sys

    import automl, mae, mae.resources, mae.schemas
    from automl.plan import plan_search
    from automl.schema import TRAIN_SCHEMA
    from automl.space_file import SEARCH_SPACES_DIR

    plan = plan_search({"dataset": {"train_data_sources": sys.argv[1]}, "train": {"stage": "pretrain"}})
    print(json.dumps({
        "mae": mae.__file__,
        "automl": automl.__file__,
        "schema_dir": str(mae.resources.schema_dir()),
        "search_spaces_dir": str(mae.resources.search_spaces_dir()),
        "SCHEMA_DIR": str(mae.schemas.SCHEMA_DIR),
        "SEARCH_SPACES_DIR": str(SEARCH_SPACES_DIR),
        "TRAIN_SCHEMA": str(TRAIN_SCHEMA),
        "resource_schema": importlib.resources.files("mae.schema_files").joinpath("train.schema.json").is_file(),
        "resource_space": importlib.resources.files("mae.search_spaces").joinpath("pretrain.yaml").is_file(),
        "plan_space_file": str(plan.space_file),
        "plan_sources": sorted({p.source for p in plan.space}),
        "plan_names": sorted(plan.space.names),
    }))
    """
)


@pytest.mark.slow
def test_wheel_install_finds_schemas_and_search_spaces(tmp_path):
    tmp_path = tmp_path.resolve()  # the install reports resolved paths
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, src / name)
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    # setuptools comes from this virtualenv (no build isolation, no index): nothing is downloaded
    pip = [sys.executable, "-m", "pip", "--no-input", "-q"]
    _run(
        [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist)],
        work,
        work,
    )
    (wheel,) = dist.glob("mae_automl-*.whl")
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], work, work)
    shutil.rmtree(src)  # nothing may read the sources the wheel was built from

    # the wheel carries every module and both data folders, byte for byte
    installed = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    for py in list((REPO / "mae").rglob("*.py")) + list((REPO / "automl").rglob("*.py")):
        assert py.relative_to(REPO).as_posix() in installed, f"{py.relative_to(REPO)} is not in the wheel"
    for folder, package in (
        (REPO / "schemas", "mae/schema_files"),
        (REPO / "search_spaces", "mae/search_spaces"),
    ):
        files = sorted(folder.iterdir())
        assert files, folder
        for f in files:
            copy = site / package / f.name
            assert copy.is_file(), f"{package}/{f.name} is not in the wheel"
            assert copy.read_bytes() == f.read_bytes(), f"{package}/{f.name} differs from {f}"

    images = work / "images"
    for i in range(4):
        write_image(images / f"img{i}.png", size=(36, 36), color=(40 * i, 90, 160))
    out = _run([sys.executable, "-c", _PROBE, str(images)], site, work)
    facts = json.loads(out.strip().splitlines()[-1])
    for key in ("mae", "automl", "schema_dir", "search_spaces_dir", "SCHEMA_DIR", "SEARCH_SPACES_DIR"):
        assert Path(facts[key]).is_relative_to(site), f"{key} = {facts[key]} is not in the wheel install"
    assert facts["schema_dir"] == facts["SCHEMA_DIR"] == str(site / "mae" / "schema_files")
    assert facts["search_spaces_dir"] == facts["SEARCH_SPACES_DIR"] == str(site / "mae" / "search_spaces")
    assert facts["TRAIN_SCHEMA"] == str(site / "mae" / "schema_files" / "train.schema.json")
    assert facts["resource_schema"] and facts["resource_space"]
    # the plan read the installed curated space (its parameters, labelled as curated) and the train schema
    assert facts["plan_space_file"] == str(site / "mae" / "search_spaces" / "pretrain.yaml")
    # (the learning rate's source also says how its per-256 range was scaled to the spec's batch)
    assert facts["plan_sources"] == [
        "search_spaces/pretrain.yaml",
        "search_spaces/pretrain.yaml: [4e-05, 0.001] per 256 images, scaled to 64 per step",
    ]
    curated = yaml.safe_load((REPO / "search_spaces" / "pretrain.yaml").read_text())["parameters"]
    assert facts["plan_names"] == sorted(curated)

    # the installed console script: the spec resolves (with the schema's defaults) and nothing runs
    spec = work / "spec.yaml"
    spec.write_text(
        yaml.safe_dump({"dataset": {"train_data_sources": str(images)}, "results_dir": str(work / "r")})
    )
    printed = yaml.safe_load(
        _run(
            [str(site / "bin" / "automl"), "run", "-e", str(spec), "--print-config", "num_epochs=3"],
            site,
            work,
        )
    )
    assert printed["train"]["num_epochs"] == 3 and printed["dataset"]["train_data_sources"] == str(images)
    assert not (work / "r").exists()

    # the installed schemas are what the installed code generates
    assert "is up to date" in _run([sys.executable, "-m", "mae.schemas", "--check"], site, work)
