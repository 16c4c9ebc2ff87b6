"""Learning-rate schedules, stepped per optimizer step (not per epoch), as in the MAE recipe."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence


def lr_factor_fn(
    kind: str,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """step -> multiplier of each group's base lr.

    Linear warmup from 0 over `warmup_epochs`, then either
      cosine:    0.5 * (1 + cos(pi * t)), t the fraction of post-warmup steps done (decays to 0 at the end);
      MultiStep: gamma ** (number of milestones <= the current epoch); no milestones = constant.
    As in TAO, a warmup as long as the run never finishes, and negative milestones never fire (torch's
    MultiStepLR); repeats count once each.
    """
    steps_per_epoch = max(1, steps_per_epoch)
    warmup = warmup_epochs * steps_per_epoch
    decay_steps = max(1, total_steps - warmup)
    ms = sorted(m for m in milestones if m >= 0)

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        if kind == "cosine":
            t = min(1.0, (step - warmup) / decay_steps)
            return 0.5 * (1.0 + math.cos(math.pi * t))
        if kind == "MultiStep":
            return gamma ** bisect.bisect_right(ms, step // steps_per_epoch)
        raise ValueError(f"unknown lr_scheduler {kind!r}")

    return factor
