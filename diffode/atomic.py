"""Atomic file writes: a file is either its old self or completely the new one, never half.

Every output diffode writes (pictures, ``.npz`` arrays, checkpoint files) goes through
:func:`atomic_write`: the bytes go to a temporary file in the destination folder (the same file
system, so the final rename is atomic), are flushed to disk, and only then replace the
destination. A failed write (disk full, ``ulimit -f``, an exception, a kill) leaves the previous
file intact; the temporary file is removed on any exception (a ``kill -9`` can leave one behind,
named ``.<name>.<random>.tmp``, never the destination).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def temporary_path(path: Path) -> Path:
    """A fresh name beside ``path`` for its temporary file: ``.NAME.<8 random hex digits>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty file beside ``path``, opened for writing; (descriptor, its path)."""
    while True:
        tmp = temporary_path(path)
        try:
            # mode 0o666 as for open(path, "wb"): the umask decides, so the result gets the
            # permissions a plain write would have given it (mkstemp would force 0o600)
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open ``path`` for writing bytes, atomically: yields a binary file; when the block ends
    without an exception the data is fsynced and renamed onto ``path`` (replacing any file
    there); on an exception the temporary file is removed and ``path`` is untouched.

    >>> with atomic_write("out.npz") as fh:  # doctest: +SKIP
    ...     np.savez(fh, arr_0=images)
    """
    path = Path(path)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
