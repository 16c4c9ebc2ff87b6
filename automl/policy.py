"""Whether a train request runs through AutoML or trains directly (docs/automl.md).

    decision = resolve_policy(args.policy)          # --policy of `automl run`; `mae train` never asks
    log.info(decision.reason)                         # or log.warning when decision.warning
    if decision.use_automl: ... search ... else: ... train the spec as written ...

The table:
  --policy off, or a plain-language request ("turn off AutoML", "disable AutoML", "no HPO",
  "plain training", ...)                            -> direct, for this run only
  --policy auto (default; "on" is accepted too):
    skill_info.yaml missing or unreadable           -> direct (warning: AutoML's metadata is missing)
    skill_info.yaml says automl_enabled: false      -> direct
    automl_enabled: true, train.schema.json or spec_template_train.yaml missing or not parseable
                                                    -> direct (warning: AutoML is enabled but not runnable
                                                       until schemas are generated)
    automl_enabled: true, both present and parseable -> AutoML
  any action other than train                       -> direct (AutoML searches training only)
The policy is read per run and never written back: skill_info.yaml is only read.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mae.errors import ConfigError, did_you_mean
from mae.resources import schema_dir as installed_schema_dir

__all__ = ["OFF_PHRASES", "ON_WORDS", "PolicyDecision", "parse_policy", "resolve_policy"]

ON_WORDS = ("auto", "on")
# Normalised (lower case, words only) requests that mean "off for this run".
OFF_PHRASES = (
    "off",
    "turn off automl",
    "disable automl",
    "no hpo",
    "plain training",
    "automl off",
    "no automl",
    "without automl",
    "disable hpo",
    "turn off hpo",
    "direct training",
    "train directly",
)
_POLITE = re.compile(r"^(please )?(.*?)( please)?( for this run| this time| for this run only)?$")


@dataclass(frozen=True)
class PolicyDecision:
    """The outcome of the policy for one run, with the sentence that explains it."""

    use_automl: bool
    policy: str  # the request, normalised: "auto" or "off"
    reason: str
    warning: bool = False  # the request expected AutoML and does not get it because something is missing
    automl_enabled: bool | None = None  # what skill_info.yaml says (None: not read or unreadable)
    skill_info: dict[str, Any] | None = None  # its content, e.g. monitoring_metric and metric_mode

    @property
    def route(self) -> str:
        return "automl" if self.use_automl else "direct"


def _normalise(text: str) -> str:
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()
    m = _POLITE.match(words)
    return m.group(2).strip() if m else words


def parse_policy(text: str) -> str:
    """'auto' / 'on' -> 'auto'; 'off' or a plain-language request such as 'turn off AutoML' -> 'off'."""
    norm = _normalise(str(text))
    if norm in ON_WORDS:
        return "auto"
    if norm in OFF_PHRASES:
        return "off"
    allowed = ["auto", "off", "turn off AutoML", "disable AutoML", "no HPO", "plain training"]
    raise ConfigError(
        f"--policy {text!r}: not understood{did_you_mean(norm, list(ON_WORDS) + list(OFF_PHRASES))}; "
        f"allowed: {', '.join(repr(a) for a in allowed)}"
    )


def _problem(path: Path, kind: str, what: str) -> str | None:
    """Why `path` is not usable (missing or does not parse), or None."""
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        text = path.read_text()
        if kind == "json":
            data = json.loads(text)
            ok = isinstance(data, dict) and isinstance(data.get("properties"), dict)
        else:
            data = yaml.safe_load(text)
            ok = isinstance(data, dict)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return f"{path.name} does not parse"
    return None if ok else f"{path.name} is not {what}"


def resolve_policy(
    policy: str = "auto", schema_dir: str | os.PathLike | None = None, *, action: str = "train"
) -> PolicyDecision:
    """Decide how this run trains. `policy` is the --policy value; `schema_dir` (default: the installed
    schemas/) holds skill_info.yaml, train.schema.json and spec_template_train.yaml. Raises ConfigError for a
    policy it does not understand."""
    mode = parse_policy(policy)
    d = Path(schema_dir) if schema_dir is not None else installed_schema_dir()
    if action != "train":
        return PolicyDecision(False, mode, f"AutoML searches training only; {action} runs directly")
    if mode == "off":
        return PolicyDecision(
            False, mode, f"AutoML is off for this run (--policy {policy!r}): training the spec as written"
        )
    info_path = d / "skill_info.yaml"
    problem = _problem(info_path, "yaml", "a mapping of model metadata")
    if problem:
        return PolicyDecision(
            False,
            mode,
            f"{problem} in {d}, so AutoML is not enabled for this model: training the spec directly "
            "(run `make schemas` to generate it)",
            warning=True,
        )
    info = yaml.safe_load(info_path.read_text())
    enabled = info.get("automl_enabled") is True
    if not enabled:
        return PolicyDecision(
            False,
            mode,
            f"AutoML is disabled for this model ({info_path.name}: automl_enabled: "
            f"{json.dumps(info.get('automl_enabled'))}): training the spec directly",
            automl_enabled=False,
            skill_info=info,
        )
    missing = [
        p
        for p in (
            _problem(d / "train.schema.json", "json", "a spec schema"),
            _problem(d / "spec_template_train.yaml", "yaml", "a spec template"),
        )
        if p
    ]
    if missing:
        return PolicyDecision(
            False,
            mode,
            f"AutoML is enabled but not runnable until schemas are generated ({'; '.join(missing)} in {d}; "
            "run `make schemas`): training the spec directly",
            warning=True,
            automl_enabled=True,
            skill_info=info,
        )
    return PolicyDecision(
        True,
        mode,
        "AutoML is enabled and runnable (skill_info.yaml, train.schema.json, spec_template_train.yaml): "
        "searching hyperparameters",
        automl_enabled=True,
        skill_info=info,
    )
