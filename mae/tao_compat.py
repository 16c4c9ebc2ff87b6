"""What a TAO spec means here: values TAO tolerates, and values TAO ignores that this tool applies.

A spec written for TAO (NVIDIA's generated templates included) must load unchanged. Three kinds of value
are accepted with one line each instead of being refused or applied in silence:

- `empty_names`: an empty `model_name` or `results_dir` (TAO's templates leave them '' for its launcher to
  fill) takes this tool's default, and a notice says which.
- `spec_notices` (run on the validated spec): settings TAO runs that do not do what they seem to, e.g. a
  warmup as long as the run (it never finishes) or MultiStep milestones past the last epoch (they never
  fire); and settings TAO ignores but this tool applies (`TAO_IGNORED`), when the spec sets them to
  anything other than the value that behaves as TAO does.

`mae.spec.load_spec` logs these once per load (AutoML trials validate without them). Refusals stay in
`mae.config` for what would crash or silently do something else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mae.config import ExperimentConfig
from mae.models.archs import get_arch

log = logging.getLogger("mae")

# TAO's templates leave these '' (its launcher fills them in); here they take the default.
EMPTY_MEANS_DEFAULT = ("model_name", "results_dir")


@dataclass(frozen=True)
class Notice:
    level: int  # logging.INFO or logging.WARNING
    text: str


@dataclass(frozen=True)
class Ignored:
    """A key TAO ignores (on AdamW / for MAE) that this tool applies."""

    key: str
    tao_value: Callable[[ExperimentConfig], Any]  # the value that behaves as TAO does for this spec
    does: Callable[[ExperimentConfig, Any], str]  # what the set value does here


def _encoder_relative_to(cfg: ExperimentConfig) -> str:
    return "decoder" if cfg.train.stage == "pretrain" else "classifier head"


TAO_IGNORED: tuple[Ignored, ...] = (
    Ignored(
        "train.optim.backbone_multiplier",
        lambda cfg: 1.0,
        lambda cfg, v: f"the encoder trains at {v:g}x the {_encoder_relative_to(cfg)}'s learning rate",
    ),
    Ignored(
        "train.optim.momentum",
        lambda cfg: 0.9,
        lambda cfg, v: f"it is AdamW's beta1 ({v:g}; AdamW's default is 0.9)",
    ),
    Ignored(
        "model.decoder_depth",
        lambda cfg: get_arch(cfg.model.arch).decoder_depth,
        lambda cfg, v: (
            f"the MAE decoder has {v} block(s) instead of {cfg.model.arch}'s published "
            f"{get_arch(cfg.model.arch).decoder_depth}"
        ),
    ),
    Ignored(
        "model.decoder_embed_dim",
        lambda cfg: get_arch(cfg.model.arch).decoder_embed_dim,
        lambda cfg, v: (
            f"the MAE decoder is {v} wide instead of {cfg.model.arch}'s published "
            f"{get_arch(cfg.model.arch).decoder_embed_dim}"
        ),
    ),
)


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def empty_names(data: dict) -> list[Notice]:
    """Drop top-level EMPTY_MEANS_DEFAULT keys whose value is '' (in place), saying which default applies."""
    notices = []
    for key in EMPTY_MEANS_DEFAULT:
        if data.get(key) == "":
            del data[key]
            default = ExperimentConfig.model_fields[key].default
            notices.append(
                Notice(logging.INFO, f"{key} is empty (as in TAO's templates): using the default {default!r}")
            )
    return notices


def spec_notices(
    cfg: ExperimentConfig, action: str | None = "train", is_set: Callable[[str], bool] = lambda key: True
) -> list[Notice]:
    """One line per training setting that TAO runs but that does not do what it seems to, or that TAO ignores
    and this tool applies (none for other actions: they do not train). `is_set(key)`: whether the spec itself
    gave the key (defaults are never reported)."""
    if action not in (None, "train"):
        return []
    notices = [*_schedule_notices(cfg)]
    for item in TAO_IGNORED:
        value = _get(cfg, item.key)
        if value is None or not is_set(item.key):
            continue
        tao = item.tao_value(cfg)
        if value != tao:
            notices.append(
                Notice(
                    logging.INFO,
                    f"{item.key}={value!r}: TAO ignores this key, but here {item.does(cfg, value)}; "
                    f"set {item.key}={tao!r} to train as TAO does",
                )
            )
    return notices


def _schedule_notices(cfg: ExperimentConfig) -> list[Notice]:
    t, o = cfg.train, cfg.train.optim
    out = []
    if o.warmup_epochs >= t.num_epochs:
        out.append(
            Notice(
                logging.WARNING,
                f"train.optim.warmup_epochs={o.warmup_epochs} is not below train.num_epochs={t.num_epochs}: "
                f"the warmup never finishes (the learning rate ends near {t.num_epochs / o.warmup_epochs:.0%} "
                "of train.optim.lr), as in TAO",
            )
        )
    ms = list(o.milestones)
    if ms and o.lr_scheduler != "MultiStep":
        out.append(
            Notice(
                logging.WARNING,
                f"train.optim.milestones={ms} is not used: train.optim.lr_scheduler={o.lr_scheduler!r} "
                "(milestones belong to MultiStep)",
            )
        )
        return out
    never = [m for m in ms if m < 0 or m >= t.num_epochs]
    if never:
        left = "the learning rate stays constant after warmup" if len(never) == len(ms) else "the others do"
        out.append(
            Notice(
                logging.WARNING,
                f"train.optim.milestones={ms}: {', '.join(map(str, never))} never fire with "
                f"train.num_epochs={t.num_epochs} (epochs 0..{t.num_epochs - 1}), as in TAO; {left}",
            )
        )
    if any(b <= a for a, b in zip(ms, ms[1:], strict=False)):
        out.append(
            Notice(
                logging.WARNING,
                f"train.optim.milestones={ms} is not strictly increasing: applied in increasing order, a "
                "repeated epoch multiplying by gamma once per repeat (as torch's MultiStepLR does)",
            )
        )
    return out


def log_notices(notices: list[Notice]) -> None:
    for n in notices:
        log.log(n.level, n.text)
