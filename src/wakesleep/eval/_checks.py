"""Input validation shared by the evaluation functions (one-line :class:`WakesleepError` messages)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from wakesleep.errors import WakesleepError


def as_samples(a: Any, name: str, fn: str, *, min_n: int = 2, what: str = "the estimator") -> Tensor:
    """Convert ``a`` to a finite floating tensor of shape ``[n, d]``.

    1-D input is read as ``n`` scalar samples; input with more than two dimensions (e.g. images
    ``[n, 28, 28]``) is flattened to ``[n, prod(rest)]``. Integer and boolean input becomes float64.

    Raises
    ------
    WakesleepError
        If ``a`` is not array-like, is empty, has fewer than ``min_n`` samples or holds NaN/inf.
    """
    if isinstance(a, Tensor):
        t = a.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(a))
        except (TypeError, ValueError) as e:
            raise WakesleepError(f"{fn}: {name} is not a numeric array ({e})") from None
    if t.dtype == torch.bool or not (t.is_floating_point() or t.is_complex()):
        t = t.to(torch.float64)
    if t.is_complex():
        raise WakesleepError(f"{fn}: {name} is complex; samples must be real")
    if t.ndim == 0:
        raise WakesleepError(f"{fn}: {name} is a scalar; expected an array of samples [n, d]")
    if t.ndim == 1:
        t = t[:, None]
    elif t.ndim > 2:
        t = t.reshape(t.shape[0], -1)
    n = t.shape[0]
    if t.shape[1] == 0:
        raise WakesleepError(f"{fn}: {name} has 0 columns")
    if n < min_n:
        raise WakesleepError(f"{fn}: {name} has {n} sample{'s' if n != 1 else ''}; {what} needs at least {min_n}")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise WakesleepError(f"{fn}: {name} contains NaN or inf values ({bad} of {n} rows)")
    return t


def same_columns(fn: str, ref_name: str, ref: Tensor, **others: Tensor) -> None:
    """Raise if any of ``others`` has a different number of columns than ``ref``."""
    for name, t in others.items():
        if t.shape[1] != ref.shape[1]:
            raise WakesleepError(f"{fn}: {name} has {t.shape[1]} columns, {ref_name} has {ref.shape[1]}")


def common_dtype(*ts: Tensor) -> torch.dtype:
    """The promoted floating dtype of the inputs (float64 if any input is float64)."""
    dt = ts[0].dtype
    for t in ts[1:]:
        dt = torch.promote_types(dt, t.dtype)
    return dt


def check_positive_int(fn: str, name: str, value: Any, minimum: int = 1) -> int:
    """Validate an integer option."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise WakesleepError(f"{fn}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
