"""The project's user-facing errors.

Every error a user can cause by what they wrote (a spec, an override, a data source, a checkpoint path) is a
`MAEError`: the CLIs print its message on one line per problem and exit with its `exit_code`, with no traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MAEError(Exception):
    """Base class of user-facing errors: the message is complete and actionable."""

    exit_code = 1


class ConfigError(MAEError):
    """An invalid spec or override. Holds one line per problem; all problems are reported at once."""

    exit_code = 2

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DataError(MAEError):
    """A data source that is missing, unreadable, unsafe or empty."""


class CheckpointError(MAEError):
    """A checkpoint that is missing, unreadable, or of the wrong kind (stage, classes, arch)."""


class MissingDependencyError(MAEError):
    """An optional dependency (e.g. TensorRT) or device (a GPU) that the requested step needs."""


def did_you_mean(value: str, options: Iterable[str], n: int = 3) -> str:
    """' (did you mean 'x'?)' for the closest options, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), list(options), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def unknown_choice(key: str, value: object, options: Iterable[str]) -> ConfigError:
    options = list(options)
    return ConfigError(
        f"{key}: {value!r} is not one of the allowed values{did_you_mean(str(value), options)}; "
        f"allowed: {', '.join(options)}"
    )
