"""``load_array``: a numeric array from an ``.npz``, ``.npy`` or ``.csv`` file (the ``file`` data source)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from wakesleep.data.checks import check_numeric
from wakesleep.errors import WakesleepError

__all__ = ["load_array"]


def load_array(path: str | os.PathLike, key: str | None = "x", what: str = "data.path") -> np.ndarray:
    """Read a numeric array from ``.npz`` (array ``key``), ``.npy`` or ``.csv``.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    key : str, default "x"
        Array name inside an ``.npz``.
    what : str
        Config field named in error messages.

    Returns
    -------
    numpy.ndarray
        The array as stored (not yet validated for shape or finiteness).

    Raises
    ------
    WakesleepError
        On a missing, unreadable, non-numeric or complex file, naming the field and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WakesleepError(f"{what}: file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                if key not in npz.files:
                    raise WakesleepError(
                        f"{what}: {path} has no array {key!r} (arrays: {', '.join(npz.files) or 'none'})"
                    )
                arr = npz[key]
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            try:
                arr = np.loadtxt(path, delimiter=",", ndmin=2)
            except ValueError:
                arr = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1)
        else:
            raise WakesleepError(f"{what}: {path}: unsupported file type {suffix!r} (use .npz, .npy or .csv)")
    except WakesleepError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WakesleepError(f"{what}: cannot read {path}: {msg}") from None
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise WakesleepError(f"{what}: {path} holds non-numeric data (dtype {arr.dtype})")
    check_numeric(arr, f"{what} ({path})")  # complex values: an error, not a silent cast to their real part
    return arr
