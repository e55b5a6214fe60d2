"""Low-level file-system helpers shared by :mod:`wakesleep.io` (atomic files) and :mod:`wakesleep.outdirs`
(output directories): the process umask, and fsync of a directory after a rename."""

from __future__ import annotations

import os
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


def fsync_dir(path: Path) -> None:
    """Make a rename durable (best effort; not every platform can open a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
