"""A dependency-free progress bar for long loops (sampling, training), written to stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str = "", enabled: bool = True) -> Iterator[T]:
    """Yield ``items`` while drawing ``desc [#####.....] i/total  elapsed`` on stderr."""
    if not enabled:
        yield from items
        return
    start = time.perf_counter()
    width = 30
    for i, item in enumerate(items):
        yield item
        done = i + 1
        filled = width * done // max(total, 1)
        elapsed = time.perf_counter() - start
        sys.stderr.write(f"\r{desc} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:6.1f}s")
        sys.stderr.flush()
    sys.stderr.write("\n")
