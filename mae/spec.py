"""Spec loading: YAML file + dotted overrides + TAO shorthand keys -> a validated ExperimentConfig.

TAO specs are Hydra/OmegaConf-style YAML and load unchanged:
  - `???` marks a value the user must still supply. It is an error only when the action needs that key
    (a key of a section the action reads, or one of its required inputs); elsewhere the default applies.
  - `${a.b}` interpolates another key (the whole value keeps the referenced type; inside a longer string it is
    substituted as text); `${oc.env:VAR}` / `${oc.env:VAR,default}` read the environment.
  - shorthand keys (`num_epochs`, `learning_rate`, ...) and the `model.mask_ratio`/`model.norm_pix_loss` aliases.
Every problem is reported at once, one line each, naming the dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mae import tao_compat
from mae.config import ACTIONS, ALIASES, SHORTHANDS, ExperimentConfig
from mae.errors import ConfigError, did_you_mean
from mae.metrics import HELD_OUT_METRICS

MISSING = "???"
_UNSET = object()
log = logging.getLogger("mae")
_INTERP = re.compile(r"\$\{([^}]*)\}")

# Sections each action reads: a `???` inside them is an error for that action.
ACTION_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": ("dataset", "model", "train", "wandb"),
    "evaluate": ("dataset", "model", "evaluate"),
    "inference": ("dataset", "model", "inference"),
    "export": ("model", "export", "dataset.augmentation"),
    "gen_trt_engine": ("gen_trt_engine",),
}

# Keys inside those sections that the action does not read.
ACTION_IGNORES: dict[str, tuple[str, ...]] = {
    "train": ("dataset.test_data_sources",),
    "evaluate": ("dataset.train_data_sources", "dataset.test_data_sources"),
    "inference": ("dataset.train_data_sources", "dataset.val_data_sources"),
}

# Inputs each action cannot run without: (dotted keys, one of which must be set; what it is).
ACTION_REQUIRED: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "train": [
        (("dataset.train_data_sources",), "a folder, .tar/.tar.gz archive or s3:// URI of training images")
    ],
    "evaluate": [
        (("dataset.val_data_sources",), "a folder, archive or s3:// URI of class folders"),
        (
            ("evaluate.checkpoint", "evaluate.trt_engine"),
            "a checkpoint, .onnx file, engine or results folder",
        ),
    ],
    "inference": [
        (("dataset.test_data_sources",), "a folder, archive or s3:// URI of images"),
        (
            ("inference.checkpoint", "inference.trt_engine"),
            "a checkpoint, .onnx file, engine or results folder",
        ),
    ],
    "export": [(("export.checkpoint",), "a checkpoint or train results folder")],
    "gen_trt_engine": [(("gen_trt_engine.onnx_file",), "an .onnx file or export results folder")],
}

# Keys that name local paths that must exist when the action runs (s3:// URIs are checked when read).
ACTION_INPUT_PATHS: dict[str, tuple[str, ...]] = {
    "train": (
        "dataset.train_data_sources",
        "dataset.val_data_sources",
        "train.pretrained_model_path",
        "train.resume_training_checkpoint_path",
    ),
    "evaluate": ("dataset.val_data_sources", "evaluate.checkpoint", "evaluate.trt_engine"),
    "inference": ("dataset.test_data_sources", "inference.checkpoint", "inference.trt_engine"),
    "export": ("export.checkpoint",),
    "gen_trt_engine": ("gen_trt_engine.onnx_file",),
}


# ------------------------------------------------------------------------------------------ dict helpers


def get_path(d: Mapping, dotted: str, default: Any = None) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return default
        cur = cur[part]
    return cur


def set_path(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for i, part in enumerate(parts[:-1]):
        nxt = cur.get(part)
        if nxt is None:
            nxt = cur[part] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(
                f"{'.'.join(parts[: i + 1])}: is a value ({nxt!r}), so {dotted} cannot be set below it"
            )
        cur = nxt
    cur[parts[-1]] = value


def _pop_path(d: dict, dotted: str) -> tuple[bool, Any]:
    parts = dotted.split(".")
    cur = d
    for part in parts[:-1]:
        cur = cur.get(part) if isinstance(cur, dict) else None
        if not isinstance(cur, dict):
            return False, None
    if parts[-1] in cur:
        return True, cur.pop(parts[-1])
    return False, None


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}. Lists are leaves."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def all_keys(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the spec."""
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(all_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


# ----------------------------------------------------------------------------------------- normalising


def canonical_key(key: str) -> str:
    """Shorthand and alias spellings -> the canonical dotted key."""
    return ALIASES.get(key, SHORTHANDS.get(key, key))


def _normalise(raw: dict, origin: str) -> dict:
    """Move shorthand/alias keys of a spec to their canonical place; conflicting values are an error."""
    data = copy.deepcopy(raw)
    errors = []
    for alias, target in list(SHORTHANDS.items()) + list(ALIASES.items()):
        found, value = _pop_path(data, alias)
        if not found:
            continue
        existing = get_path(data, target, _UNSET)
        if existing is not _UNSET and existing != value:
            errors.append(
                f"{alias}={value!r} and {target}={existing!r} in {origin} name the same key; keep one"
            )
            continue
        set_path(data, target, value)
    if errors:
        raise ConfigError(errors)
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """'train.optim.lr=1e-3' -> ('train.optim.lr', 0.001). Values are YAML: 1e-3, true, [0, 1], null."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(
            f"override {text!r}: expected key=value with a dotted key, e.g. train.optim.lr=1e-3"
        )
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value  # a plain string such as a path with odd characters
    # YAML reads "1e-3" as a string (it needs a dot); a spec author means the number.
    if isinstance(parsed, str):
        try:
            parsed = float(parsed) if re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", parsed) else parsed
        except ValueError:
            pass
    return canonical_key(key), parsed


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"spec file {str(p)!r} does not exist" if not p.exists() else f"{p} is not a file")
    try:
        data = _fix_yaml_floats(yaml.safe_load(p.read_text()))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"spec file {p}: invalid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"spec file {p}: cannot be read ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"spec file {p}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


def _fix_yaml_floats(node: Any) -> Any:
    """YAML 1.1 reads 1e-3 (no dot) as a string; specs mean a number (TAO's OmegaConf reads it as one)."""
    if isinstance(node, dict):
        return {k: _fix_yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_yaml_floats(v) for v in node]
    if isinstance(node, str) and re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", node):
        return float(node)
    return node


# -------------------------------------------------------------------------------------- interpolation


def _resolve_interpolations(data: dict) -> dict:
    """Resolve `${key}` and `${oc.env:VAR[,default]}` in place (cycles and unknown keys are errors)."""
    errors: list[str] = []
    resolving: list[str] = []
    reported_cycles: set[frozenset] = set()

    class _Reported(Exception):
        """A cycle already reported from another of its keys."""

    def lookup(ref: str, where: str) -> Any:
        ref = ref.strip()
        if ref.startswith("oc.env:"):
            var, _, default = ref[len("oc.env:") :].partition(",")
            value = os.environ.get(var.strip())
            if value is None:
                if not _:
                    raise ConfigError(f"{where}: environment variable {var.strip()!r} is not set")
                value = default.strip()
            return value
        ref = canonical_key(ref)
        if ref in resolving:
            cycle = resolving[resolving.index(ref) :]
            if frozenset(cycle) in reported_cycles:
                raise _Reported
            reported_cycles.add(frozenset(cycle))
            raise ConfigError(f"{where}: interpolation cycle {' -> '.join([*cycle, ref])}")
        value = get_path(data, ref, _UNSET)
        if value is _UNSET:
            value = get_path(ExperimentConfig().model_dump(), ref, _UNSET)
        if value is _UNSET:
            raise ConfigError(f"{where}: ${{{ref}}} names no key{did_you_mean(ref, all_keys())}")
        resolving.append(ref)
        try:
            value = resolve(value, ref)
        finally:
            resolving.pop()
        return value

    def resolve(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v, f"{where}.{k}" if where else k) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        whole = _INTERP.fullmatch(value)
        if whole:
            return lookup(whole.group(1), where)
        return _INTERP.sub(lambda m: str(lookup(m.group(1), where)), value)

    resolved = {}
    for k, v in data.items():
        try:
            resolved[k] = resolve(v, k)
        except ConfigError as e:
            errors.extend(e.problems)
        except _Reported:
            pass
    if errors:
        raise ConfigError(errors)
    return resolved


# ---------------------------------------------------------------------------------------- error lines


def _field_path(loc: tuple) -> tuple[str, list]:
    """Split a pydantic error location into the dotted spec key and the rest (union members, list indices)."""
    model: Any = ExperimentConfig
    parts: list[str] = []
    rest: list = []
    for i, item in enumerate(loc):
        fields = getattr(model, "model_fields", None)
        if fields is not None and isinstance(item, str) and item in fields:
            parts.append(item)
            ann = fields[item].annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        else:
            rest = list(loc[i:])
            break
    return ".".join(parts), rest


def _unknown_key_line(key: str) -> str:
    """'train.lr: unknown key (did you mean 'train.optim.lr'?)': the same leaf elsewhere, else a close sibling."""
    keys = all_keys()
    parent, _, leaf = key.rpartition(".")
    hint = " (did you mean " + " or ".join(repr(k) for k in keys if k.rsplit(".", 1)[-1] == leaf) + "?)"
    if hint.endswith("(did you mean ?)"):
        depth = key.count(".")
        siblings = sorted({".".join(k.split(".")[: depth + 1]) for k in keys if k.startswith(parent)})
        hint = did_you_mean(key, siblings) or did_you_mean(key, keys)
    return f"{key}: unknown key{hint}"


def format_validation_error(err: ValidationError) -> list[str]:
    """One line per problem: `key=value: what is wrong / allowed`."""
    grouped: dict[str, list[dict]] = {}
    lines: list[str] = []
    for e in err.errors(include_url=False):
        key, rest = _field_path(tuple(e["loc"]))
        if e["type"] == "extra_forbidden":
            lines.append(_unknown_key_line(".".join(str(p) for p in e["loc"])))
            continue
        if e["type"] == "value_error":
            # our cross-field checks: the message already names keys and values, one problem per line
            msg = str(e["ctx"]["error"]) if "ctx" in e else e["msg"]
            lines.extend(line for line in msg.splitlines() if line)
            continue
        idx = "".join(f"[{p}]" for p in rest if isinstance(p, int))
        grouped.setdefault(key + idx, []).append(e)
    for key, errs in grouped.items():
        value = errs[0].get("input")
        msgs: list[str] = []
        for e in errs:
            msg = e["msg"][0].lower() + e["msg"][1:]
            if len(msgs) and msg.startswith(
                "input should be "
            ):  # union members: "... a valid string or a valid list"
                msg = msg[len("input should be ") :]
            if e["type"] == "literal_error":
                msg += did_you_mean(str(value), re.findall(r"'([^']*)'", e["ctx"]["expected"]))
            if msg not in msgs:
                msgs.append(msg)
        lines.append(f"{key}={value!r}: {' or '.join(msgs)}")
    return lines


# --------------------------------------------------------------------------------------------- loading


def build_raw(
    spec: str | os.PathLike | Mapping | None, overrides: Iterable[str] = ()
) -> tuple[dict, set[str]]:
    """Merge spec + overrides, resolve `${...}`, strip `???`. Returns (raw dict, dotted keys that were `???`)."""
    data, missing, _ = _build(spec, overrides)
    return data, missing


def _build(
    spec: str | os.PathLike | Mapping | None, overrides: Iterable[str]
) -> tuple[dict, set[str], list[tao_compat.Notice]]:
    """build_raw, plus the notices of TAO's empty names that took their defaults."""
    if spec is None:
        data: dict = {}
        origin = "the defaults"
    elif isinstance(spec, Mapping):
        data, origin = copy.deepcopy(dict(spec)), "the spec"
    else:
        data, origin = read_yaml(spec), str(spec)
    data = _normalise(data, origin)
    errors: list[str] = []
    for text in overrides:
        try:
            key, value = parse_override(text)
            set_path(data, key, value)
        except ConfigError as e:
            errors.extend(e.problems)
    if errors:
        raise ConfigError(errors)
    data = _resolve_interpolations(data)
    missing = {k for k, v in flatten(data).items() if v == MISSING}
    for key in missing:
        _pop_path(data, key)
    return data, missing, tao_compat.empty_names(data)


def validate(data: Mapping) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def _names_automl_trial(path: str) -> bool:
    """`<results_dir>/<trial_id>` (or `<results_dir>/automl/<trial_id>`) names a trial of an AutoML experiment:
    a checkpoint the loaders resolve (mae.engine.checkpoints), though no such folder exists."""
    from mae.layout import ExperimentLayout

    p = Path(path)
    exp = ExperimentLayout.of_folder(p.parent)
    return exp is not None and exp.trial_dir(p.name).is_dir()


def check_action(
    cfg: ExperimentConfig, action: str, missing: set[str] = frozenset(), *, check_paths: bool = True
) -> None:
    """Errors for what `action` needs and the spec lacks: `???` values, required inputs, missing local paths."""
    if action not in ACTIONS:
        raise ConfigError(
            f"unknown action {action!r}{did_you_mean(action, ACTIONS)}; allowed: {', '.join(ACTIONS)}"
        )
    errors = []
    sections = ACTION_SECTIONS[action]
    for key in sorted(missing):
        if key in ACTION_IGNORES.get(action, ()):
            continue
        if any(key == s or key.startswith(s + ".") for s in sections) or key in ("results_dir", "model_name"):
            errors.append(f"{key}: the spec has '???' (a value you must supply) and {action} needs it")
    dumped = cfg.model_dump()
    for keys, what in ACTION_REQUIRED[action]:
        if all(get_path(dumped, k) in (None, "", []) for k in keys) and not any(k in missing for k in keys):
            errors.append(f"{' or '.join(keys)}: required by {action}; set it to {what}")
    if check_paths:
        for key in ACTION_INPUT_PATHS[action]:
            value = get_path(dumped, key)
            for path in [value] if isinstance(value, str) else (value or []):
                if path and "://" not in path and not os.path.exists(os.path.expanduser(path)):
                    if not _names_automl_trial(os.path.expanduser(path)):
                        errors.append(f"{key}={path!r}: no such file or folder")
    aug = cfg.dataset.augmentation
    mixing = [k for k in ("mixup", "cutmix") if getattr(aug, k) > 0] + (
        ["cutmix_minmax"] if aug.cutmix_minmax else []
    )
    if action == "train" and cfg.train.stage == "finetune" and mixing and cfg.dataset.batch_size % 2:
        # timm's Mixup pairs each image with its mirror in the batch: an odd batch would skip it silently
        errors.append(
            f"dataset.batch_size={cfg.dataset.batch_size} with dataset.augmentation.{mixing[0]}="
            f"{getattr(aug, mixing[0])}: mixup/cutmix need an even batch size per device; use "
            f"{cfg.dataset.batch_size + 1} or turn them off"
        )
    if (
        action == "train"
        and cfg.train.optim.monitor_name in HELD_OUT_METRICS
        and not cfg.dataset.val_data_sources
    ):
        errors.append(
            f"train.optim.monitor_name={cfg.train.optim.monitor_name!r} is measured on validation data; "
            "set dataset.val_data_sources or monitor train_loss"
        )
    if errors:
        raise ConfigError(errors)


def load_spec(
    spec: str | os.PathLike | Mapping | None = None,
    overrides: Iterable[str] = (),
    action: str | None = None,
    *,
    check_paths: bool = True,
) -> ExperimentConfig:
    """Load, override, interpolate and validate a spec; with `action`, also check what that action needs.
    Settings TAO runs or ignores that behave differently than they read get one line each (mae.tao_compat)."""
    data, missing, notices = _build(spec, overrides)
    cfg = validate(data)
    if action is not None:
        check_action(cfg, action, missing, check_paths=check_paths)
    tao_compat.log_notices(
        notices + tao_compat.spec_notices(cfg, action, lambda key: get_path(data, key, _UNSET) is not _UNSET)
    )
    if cfg.encryption_key:
        log.warning(
            "encryption_key is accepted for TAO compatibility, but model files are written unencrypted"
        )
    return cfg


def dump_spec(cfg: ExperimentConfig) -> str:
    """The fully resolved spec as YAML (keys in definition order)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None)
