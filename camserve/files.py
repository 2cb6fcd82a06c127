"""Writing a file so that a reader, or a re-run after a kill, sees the whole file or none."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path, write: Callable[[BinaryIO], object], prefix: str) -> None:
    """``write`` into a temporary file named ``prefix…`` next to ``path``, fsync, rename over ``path``;
    the temporary file is removed if anything fails."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
