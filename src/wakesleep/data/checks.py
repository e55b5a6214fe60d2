"""Checks of observations against the model: numeric, rows ``[N, D]``, finite, and inside the support.

:func:`check_observations` checks one array (what the model will see) against the observation layer's
family; :func:`check_dataset` checks a :class:`~wakesleep.data.DataSet`, the training set as every
binarised draw can come out; :func:`as_rows` turns a file's array into rows ``[N, D]`` for
:func:`~wakesleep.data.load_dataset`. Every error is one :class:`~wakesleep.errors.WakesleepError` line
naming ``where`` (the config field or the file), and the row and column of the first bad value::

    data.path: row 3, column 7: 9.0 is outside the support of a bernoulli observation layer ({0, 1})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from wakesleep.data.binarize import parse_scheme
from wakesleep.errors import WakesleepError

if TYPE_CHECKING:
    from wakesleep.families import ExponentialFamily

__all__ = ["MIN_ROWS", "as_rows", "check_dataset", "check_numeric", "check_observations"]

#: the fewest training rows a model can be fitted to
MIN_ROWS = 2


def _to_numpy(x: Any, where: str) -> np.ndarray:
    """``x`` (tensor, array or nested lists) as a NumPy array; a ragged or unreadable one is an error."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):  # (NumPy has no bfloat16; both fit float32 exactly)
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WakesleepError(f"{where}: data must be a rectangular numeric array ({why})") from None


def check_numeric(x: np.ndarray, where: str) -> None:
    """Raise unless ``x`` holds real numbers or booleans: complex values are not cast away silently.

    Parameters
    ----------
    x : numpy.ndarray
        The array.
    where : str
        The field or file named in the message.
    """
    kind = x.dtype.kind
    if kind == "c":
        raise WakesleepError(
            f"{where}: data are complex (dtype {x.dtype}); observations must be real numbers "
            "(store the real part, or real and imaginary parts as separate columns)"
        )
    if kind not in "fiub":
        raise WakesleepError(f"{where}: data must be numeric, got dtype {x.dtype}")


def _first_non_finite(x: np.ndarray, where: str) -> None:
    if x.dtype.kind != "f":
        return
    bad = ~np.isfinite(x)
    if bad.any():
        pos = np.unravel_index(int(np.argmax(bad)), x.shape)
        value = x[pos]
        what = "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")
        raise WakesleepError(
            f"{where}: row {pos[0]}, column {pos[1]}: {what} is not a finite number "
            f"({int(bad.sum())} non-finite value(s) in all)"
        )


def check_observations(
    x: Any,
    family: ExponentialFamily | None,
    where: str,
    *,
    dim: int | None = None,
    min_rows: int = MIN_ROWS,
    hint: str = "",
) -> np.ndarray:
    """Check observations for a model: numeric, ``[N, dim]`` with enough rows, finite, inside the support.

    Parameters
    ----------
    x : array-like or torch.Tensor
        The observations as the model will see them, ``[N, D]`` (1-D: one column).
    family : ExponentialFamily or None
        The observation layer's family (e.g. ``wakesleep.models.build.observation_family(model)``); None
        skips the support check.
    where : str
        The config field or file named in the messages (e.g. ``"data.path (d.npz)"``).
    dim : int, optional
        The model's observation dimension; another number of columns is an error.
    min_rows : int, default 2
        The fewest rows accepted (a training set needs two; a test set may have none).
    hint : str, optional
        Appended to a support error (e.g. how to binarise grey levels).

    Returns
    -------
    numpy.ndarray
        ``x`` as a 2-D NumPy array (dtype unchanged).

    Raises
    ------
    WakesleepError
        One line naming ``where`` and, for a bad value, its row and column, e.g.
        ``data.path: row 3, column 7: 9.0 is outside the support of a bernoulli observation layer ({0, 1})``.
    """
    x = _to_numpy(x, where)
    check_numeric(x, where)
    if x.ndim == 1 and dim in (None, 1):
        x = x[:, None]
    if x.ndim != 2:
        raise WakesleepError(f"{where}: data must be a 2-D array [N, {dim or 'D'}], got shape {x.shape}")
    if x.shape[0] < min_rows:
        raise WakesleepError(f"{where}: data have {x.shape[0]} row(s), at least {min_rows} are needed")
    if dim is not None and x.shape[1] != int(dim):
        raise WakesleepError(f"{where}: data have {x.shape[1]} columns but the model's observation layer has dim {dim}")
    _first_non_finite(x, where)
    if family is not None:
        problem = family.support_violation(x)
        if problem is not None:
            raise WakesleepError(f"{where}: {problem}{hint}")
    return x


def check_dataset(
    ds: Any,
    family: ExponentialFamily | None,
    where: str,
    test_where: str | None = None,
    *,
    dim: int | None = None,
) -> None:
    """Check a data set's training and test rows as the model sees them (after binarisation).

    Under a dynamic scheme each grey level ``p`` becomes 0 or 1 afresh in every epoch (0 always when
    ``p = 0``, 1 always when ``p = 1``), so both ``floor(p)`` and ``ceil(p)`` are checked.

    Parameters
    ----------
    ds : wakesleep.data.DataSet
        The data set (tensors on any device).
    family : ExponentialFamily or None
        The observation layer's family (None: no support check).
    where, test_where : str
        Names of the training and test data in messages (``test_where`` defaults to ``where + " (test)"``).
    dim : int, optional
        The model's observation dimension.
    """
    kind, _ = parse_scheme(ds.binarize)
    suffix = "" if kind == "none" else f", binarised ({ds.binarize})"
    want_hint = family is not None and family.support == "binary" and kind == "none"

    def hint(x: np.ndarray) -> str:
        if want_hint and x.dtype.kind == "f" and x.size and float(x.min()) >= 0 and float(x.max()) <= 1:
            return "; grey levels in [0, 1] can be binarised with data.binarize (e.g. dynamic)"
        return ""

    train = _to_numpy(ds.train, where)
    seen = [np.floor(train), np.ceil(train)] if kind == "dynamic" else [train]
    for x in seen:
        check_observations(x, family, where + suffix, dim=dim, hint=hint(x))
    if ds.test is not None:
        test = _to_numpy(ds.test, where)
        name = test_where or f"{where} (test)"
        check_observations(test, family, name + suffix, dim=dim, min_rows=0, hint=hint(test))


def as_rows(arr: np.ndarray, what: str, expected_dim: int | None) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """Validate a file's array and return it as ``[N, D]`` float64 with the per-row image shape (if any).

    Parameters
    ----------
    arr : numpy.ndarray
        ``[N]`` (one column), ``[N, D]`` or ``[N, *image_shape]``.
    what : str
        Field (and file) named in messages.
    expected_dim : int, optional
        The model's observation dimension.
    """
    arr = np.asarray(arr)
    check_numeric(arr, what)
    image_shape = None
    if arr.ndim == 0:
        raise WakesleepError(f"{what}: expected rows of data, got a scalar")
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim > 2:
        image_shape = tuple(int(s) for s in arr.shape[1:])
        arr = arr.reshape(arr.shape[0], -1)
    arr = arr.astype(np.float64, copy=False)
    if arr.shape[0] == 0:
        raise WakesleepError(f"{what}: holds no rows")
    bad = ~np.isfinite(arr)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        kind = "NaN" if np.isnan(arr[r, c]) else "inf"
        raise WakesleepError(f"{what}: {int(bad.sum())} non-finite value(s) (first: {kind} at row {r}, column {c})")
    if expected_dim is not None and arr.shape[1] != int(expected_dim):
        raise WakesleepError(
            f"{what}: data have {arr.shape[1]} columns but the model's observation dimension is {expected_dim}"
        )
    return arr, image_shape
