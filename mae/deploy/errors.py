"""Errors of the deploy steps that are not spec mistakes (those are ConfigError): a failed parity check, an
engine TensorRT cannot build. Each is a MAEError, so the CLI prints it on one line per problem, no traceback."""

from __future__ import annotations

from collections.abc import Iterable

from mae.errors import MAEError


class DeployError(MAEError):
    """An export or engine build that cannot be completed as asked. Holds one line per problem."""

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ParityError(DeployError):
    """onnxruntime's outputs differ from PyTorch's by more than the stated tolerance; nothing was written."""


class EngineBuildError(DeployError):
    """TensorRT rejected the ONNX model (one line per failing node) or could not build an engine."""
