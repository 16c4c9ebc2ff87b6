"""Generate (or check) the committed `schemas/` folder from `mae.config`.

    python -m mae.schemas            # write schemas/
    python -m mae.schemas --check    # exit 1 when the committed files differ from what the code generates

Per action `<action>.schema.json`: a self-contained JSON Schema (draft 2020-12, nested objects inlined) that
validates a whole spec, with NVIDIA's root keys (`default`, the whole default spec; `popular`, keyed by action;
`x_tao_schema`, the metadata) and TAO's AutoML keywords on every leaf (`automl_enabled`, `option_weights`,
`math_cond`, `depends_on`, `parent_param`, `popular`) and our extensions `log_scale` and `automl_range`
(see mae/config.py). Every object and the root carry `automl_default_parameters` and
`automl_disabled_parameters` (dotted paths; containers are listed as disabled, as TAO does, since containers
themselves are never searched). Only the train schema has searched parameters: AutoML searches training.
Also written: `manifest.json`, `spec_template_<action>.yaml` (the defaults, with `???` where the action needs
a value), `spec_template_deploy_gen_trt_engine.yaml` and `skill_info.yaml`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from mae.config import ACTIONS, ExperimentConfig
from mae.fileio import atomic_write_text
from mae.resources import schema_dir
from mae.spec import ACTION_IGNORES, ACTION_REQUIRED, ACTION_SECTIONS, set_path

SCHEMA_DIR = schema_dir()  # the repository's schemas/ (from a wheel: the installed copy)
MONITOR_METRIC = "train_loss"
_SKIP_KEYS = {"title"}
_TYPE_ORDER = ["boolean", "integer", "number", "string", "array", "object", "null"]


def _inline(node: Any, defs: dict) -> Any:
    """Replace every $ref with the (recursively inlined) definition; drop pydantic's titles."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            return _inline({**target, **extra}, defs)
        return {k: _inline(v, defs) for k, v in node.items() if k not in _SKIP_KEYS and k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _flatten_anyof(node: dict) -> dict:
    """pydantic writes `int | None` as anyOf; TAO's reader wants one `type` (a list when nullable).

    Hoisting the members' keywords is equivalent here: each keyword applies to one JSON type only
    (minimum to numbers, items to arrays, ...), and no two members share a type.
    """
    if "anyOf" not in node:
        return node
    members = node.pop("anyOf")
    types: list[str] = []
    for m in members:
        if set(m) - {
            "type",
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
            "items",
            "minItems",
            "maxItems",
            "minLength",
            "enum",
        }:
            raise ValueError(f"cannot flatten anyOf member {m}")
        t = m.get("type")
        types.append(t)
        node.update({k: v for k, v in m.items() if k != "type"})
    node["type"] = sorted(set(types), key=_TYPE_ORDER.index)
    return node


def _leaves(schema: dict, prefix: str = "") -> list[tuple[str, dict]]:
    out = []
    for name, sub in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        if sub.get("type") == "object" and "properties" in sub:
            out.extend(_leaves(sub, key + "."))
        else:
            out.append((key, sub))
    return out


def _containers(schema: dict, prefix: str = "") -> list[str]:
    out = []
    for name, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            out.append(f"{prefix}{name}")
            out.extend(_containers(sub, f"{prefix}{name}."))
    return out


def _annotate(node: dict, prefix: str, searchable: bool, default_set: list[str], disabled: list[str]) -> None:
    """Per-object automl lists (dotted full paths of what lies below the object)."""
    below = prefix + "." if prefix else ""
    node["automl_default_parameters"] = [k for k in default_set if k.startswith(below)]
    node["automl_disabled_parameters"] = [k for k in disabled if k.startswith(below) and k != prefix]
    for name, sub in node.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            _annotate(sub, f"{below}{name}", searchable, default_set, disabled)


def build_schema(action: str) -> dict:
    """The JSON Schema of a spec for `action`."""
    raw = ExperimentConfig.model_json_schema(mode="validation")
    schema = _inline(raw, raw.get("$defs", {}))

    def walk(node: dict) -> None:
        for sub in node.get("properties", {}).values():
            _flatten_anyof(sub)
            if sub.get("type") == "object":
                walk(sub)

    walk(schema)
    searchable = action == "train"
    leaves = _leaves(schema)
    default_set = []
    for key, leaf in leaves:
        if leaf.pop("automl_default", False) and searchable:
            default_set.append(key)
        if not searchable:
            leaf["automl_enabled"] = False
    disabled = sorted(_containers(schema) + [k for k, leaf in leaves if not leaf.get("automl_enabled")])
    _annotate(schema, "", searchable, default_set, disabled)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"mae-automl/{action}.schema.json",
        "title": f"MAE {action} spec",
        "description": schema.get("description", ""),
        "x-action": action,
        # NVIDIA's generated schemas carry these root keys; tools written for them read ours too
        "x_tao_schema": {
            "action": action,
            "core_module": "mae.config",
            "model": "mae",
            "network_arch": "mae",
            "schema_action": action,
            "schema_version": "1.0",
            "source": "mae-automl",
        },
        "default": ExperimentConfig().model_dump(mode="json"),
        "popular": {a: [k for k, leaf in leaves if leaf.get("popular") and _reads(a, k)] for a in ACTIONS},
        **{k: v for k, v in schema.items() if k not in ("description",)},
    }


def _reads(action: str, key: str) -> bool:
    """Whether `action` reads the dotted spec key (its sections, less what it ignores)."""
    if key in ACTION_IGNORES.get(action, ()):
        return False
    return any(key == s or key.startswith(s + ".") for s in ACTION_SECTIONS[action])


def build_template(action: str) -> dict:
    """The default spec for `action`, with `???` where the action needs a value from the user."""
    spec = ExperimentConfig().model_dump(mode="json")
    for keys, _ in ACTION_REQUIRED[action]:
        set_path(spec, keys[0], "???")
    return spec


def _yaml(data: Any, header: str) -> str:
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def generate() -> dict[str, str]:
    """File name -> content of every generated file."""
    files: dict[str, str] = {}
    for action in ACTIONS:
        files[f"{action}.schema.json"] = json.dumps(build_schema(action), indent=2) + "\n"
        files[f"spec_template_{action}.yaml"] = _yaml(
            build_template(action),
            f"# Generated by `python -m mae.schemas` from mae/config.py: default {action} spec.\n"
            "# '???' marks a value you must supply.\n",
        )
    deploy = build_template("gen_trt_engine")
    deploy = {k: deploy[k] for k in ("results_dir", "encryption_key", "model_name", "gen_trt_engine")}
    files["spec_template_deploy_gen_trt_engine.yaml"] = _yaml(
        deploy,
        "# Generated by `python -m mae.schemas`: gen_trt_engine spec for a deployment-only machine.\n",
    )
    files["skill_info.yaml"] = _yaml(
        {
            "name": "mae",
            "automl_enabled": True,
            "monitoring_metric": MONITOR_METRIC,
            "metric_mode": "min",
            "stages": ["pretrain", "finetune"],
            "actions": list(ACTIONS),
            "dataset_type": "image_classification",
            "formats": ["ssl"],
        },
        "# Generated by `python -m mae.schemas`: model-level AutoML metadata.\n",
    )
    files["manifest.json"] = (
        json.dumps(
            {
                "model": "mae",
                "actions": list(ACTIONS),
                "schemas": {a: f"{a}.schema.json" for a in ACTIONS},
                "templates": {a: f"spec_template_{a}.yaml" for a in ACTIONS}
                | {"deploy_gen_trt_engine": "spec_template_deploy_gen_trt_engine.yaml"},
                "skill_info": "skill_info.yaml",
            },
            indent=2,
        )
        + "\n"
    )
    return files


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in generate().items():
        written.append(atomic_write_text(directory / name, content))
    return written


def check(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of generated files that are missing or differ from the committed ones (plus strays)."""
    expected = generate()
    problems = []
    for name, content in expected.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_text() != content:
            problems.append(f"{name}: differs from what mae/config.py generates")
    if directory.exists():
        for path in sorted(directory.iterdir()):
            if path.name not in expected:
                problems.append(f"{path.name}: not generated by the code (stray file)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mae.schemas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when schemas/ differs from the code")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help="target folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.dir)
        for p in problems:
            print(f"schemas/{p}", file=sys.stderr)
        if problems:
            print("run `make schemas` (python -m mae.schemas) and commit the result", file=sys.stderr)
            return 1
        print(f"schemas/ is up to date ({len(generate())} files)")
        return 0
    for path in write(args.dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
