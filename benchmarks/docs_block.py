"""Writing a benchmark's results under docs/: its block of a Markdown page, its figures and data.

Every write goes through :func:`diffode.atomic.atomic_write` (a kill or a full disk leaves the
old file whole), and a page's read-replace-write runs under a lock, so that two benchmarks
writing blocks of the same page (``reconstruction.py`` and ``reconstruction.py --digits``) keep
both blocks.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffode.atomic import atomic_write


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` for the block, held on a file in the temporary folder (a
    lock file beside the page would be left in docs/, and the page itself is replaced by a
    rename, which a lock on it would not survive)."""
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"diffode-docs-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_block(path: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path`` with
    ``text``, or append the block when both markers are absent (or the file does not exist).

    Raises ``ValueError`` when the page holds one marker without the other, either of them twice,
    or the end before the start, and when ``text`` holds a marker: each would lose or repeat text
    around the block.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start in text or end in text:
        raise ValueError(f"the text of block {name!r} contains its own marker")
    block = f"{start}\n{text}\n{end}"
    with _locked(path):
        doc = path.read_text() if path.exists() else ""
        starts, ends = doc.count(start), doc.count(end)
        if (starts, ends) == (1, 1) and doc.index(start) < doc.index(end):
            doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end) :]
        elif (starts, ends) == (0, 0):
            doc = doc.rstrip() + ("\n\n" if doc else "") + block + "\n"
        else:
            raise ValueError(
                f"{path}: block {name!r} has {starts} start and {ends} end markers"
                + (" (end first)" if (starts, ends) == (1, 1) else "")
                + "; mend the page to hold one of each, start first"
            )
        write_bytes(path, doc.encode())


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path) as fh:
        fh.write(data)


def save_figure(fig: Any, path: Path, **options: Any) -> None:
    """Save a matplotlib figure to ``path`` (format from its suffix) atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip("."), **options)
    write_bytes(path, buffer.getvalue())
