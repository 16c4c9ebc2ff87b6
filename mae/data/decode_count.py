"""Counting image decodes across processes, for benchmarks and tests; off unless asked.

With `MAE_COUNT_DECODES=<file>` in the environment, every decode of an image file (`load_rgb` in
`mae.data.datasets`, which the datasets and the decoded store's builder both use) appends the file's path as
one line to `<file>`, from any process that inherits the variable: DataLoader workers, DDP ranks, Ray trials.
Each line is one `write` on a descriptor opened with O_APPEND, so lines from concurrent processes never
interleave. Unset, the cost is one environment lookup per decode.

    MAE_COUNT_DECODES=/tmp/decodes.txt mae train -e spec.yaml
    read_decode_counts("/tmp/decodes.txt")   # Counter: path -> times decoded
"""

from __future__ import annotations

import os
from collections import Counter

ENV = "MAE_COUNT_DECODES"


def count_decode(path: str | os.PathLike) -> None:
    """Record one decode of `path` when counting is on (see the module docstring)."""
    target = os.environ.get(ENV)
    if not target:
        return
    line = (os.fspath(path).replace("\n", " ") + "\n").encode("utf-8", "surrogateescape")
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_decode_counts(path: str | os.PathLike) -> Counter[str]:
    """path -> number of decodes recorded in the counter file (empty when nothing was decoded)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return Counter(line.rstrip("\n") for line in f if line.strip())
    except FileNotFoundError:
        return Counter()
