"""The unbiased MMD^2 estimator and its H1 variance from kernel row sums, bandwidth selection by test power, and
the public estimators :func:`mmd_statistics` and :func:`mmd` (definitions: :mod:`wakesleep.eval.mmd`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from wakesleep.errors import WakesleepError
from wakesleep.eval._checks import as_samples, check_positive_int, common_dtype, same_columns
from wakesleep.eval._mmd_kernels import (
    DEFAULT_CHUNK,
    Bandwidth,
    _check_bandwidth,
    bandwidth_candidates,
    kernel_sums,
    median_bandwidth,
)

#: Variance floor of the power criterion MMD^2 / sqrt(max(var, floor)) (Sutherland et al. 2017's code).
MIN_VAR_EST = 1e-8


# --- results -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MMDStatistics:
    """The unbiased MMD^2 estimate and its first-order (H1) variance estimate.

    Attributes
    ----------
    mmd2 : float
        Unbiased estimate of MMD^2 (can be negative when the distributions are close).
    variance : float
        Estimate of Var[MMD^2_u] under H1 (the leading ``O(1/m + 1/n)`` term; zero to first order under H0).
    bandwidth : float
        The Gaussian kernel bandwidth used.
    m, n : int
        Sample sizes of ``x`` and ``y``.
    """

    mmd2: float
    variance: float
    bandwidth: float
    m: int
    n: int

    @property
    def power_ratio(self) -> float:
        """The test-power criterion ``mmd2 / sqrt(max(variance, 1e-8))`` of Sutherland et al. (2017)."""
        return self.mmd2 / math.sqrt(max(self.variance, MIN_VAR_EST))


# --- statistics and bandwidth selection ----------------------------------------------------------------
def _stats_from_sums(
    sxx: Tensor, syy: Tensor, sxy_rows: Tensor, sxy_cols: Tensor, m: int, n: int
) -> tuple[Tensor, Tensor]:
    """MMD^2_u and its first-order variance from kernel row sums (vectorised over a leading bandwidth axis).

    With ``a_i = 2 (mean_{j != i} k(x_i, x_j) - mean_j k(x_i, y_j))`` and
    ``b_j = 2 (mean_{l != j} k(y_j, y_l) - mean_i k(x_i, y_j))`` (the estimated Hoeffding projections),
    ``Var[MMD^2_u] ~= var(a) / m + var(b) / n``.
    """
    mmd2 = sxx.sum(-1) / (m * (m - 1)) + syy.sum(-1) / (n * (n - 1)) - 2.0 * sxy_rows.sum(-1) / (m * n)
    a = 2.0 * (sxx / (m - 1) - sxy_rows / n)
    b = 2.0 * (syy / (n - 1) - sxy_cols / m)
    var = a.var(-1, correction=1) / m + b.var(-1, correction=1) / n
    return mmd2, var


def _raw_statistics(x: Tensor, y: Tensor, bandwidths: Sequence[float], chunk_size: int) -> tuple[Tensor, Tensor]:
    sxx, _ = kernel_sums(x, None, bandwidths, chunk_size)
    syy, _ = kernel_sums(y, None, bandwidths, chunk_size)
    sxy_r, sxy_c = kernel_sums(x, y, bandwidths, chunk_size)
    return _stats_from_sums(sxx, syy, sxy_r, sxy_c, x.shape[0], y.shape[0])


def _prepare(fn: str, x: Any, y: Any, min_n: int = 2) -> tuple[Tensor, Tensor]:
    what = "the unbiased MMD estimator" if min_n == 2 else "this test"
    xt = as_samples(x, "x", fn, min_n=min_n, what=what)
    yt = as_samples(y, "y", fn, min_n=min_n, what=what)
    same_columns(fn, "x", xt, y=yt)
    dt = common_dtype(xt, yt)
    return xt.to(dt), yt.to(device=xt.device, dtype=dt)


def select_bandwidth(
    x: Any,
    y: Any,
    candidates: Sequence[float] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    seed: int = 0,
) -> float:
    """The candidate bandwidth maximising the test-power criterion ``MMD^2_u / sigma_H1`` on ``(x, y)``.

    Sutherland et al. (2017), as used by Jitkrittum et al. (2016): the asymptotic power of the MMD test is
    increasing in ``MMD^2 / sqrt(Var_H1[MMD^2_u])``. Select on data held out from the final test (see
    ``bandwidth="power"`` in :func:`mmd` and :func:`mmd_test`, which split the data for you).

    Parameters
    ----------
    x, y : array-like
        ``[m, d]`` and ``[n, d]`` samples (at least 3 each).
    candidates : sequence of float, optional
        Bandwidths to try; default :func:`bandwidth_candidates` around the median heuristic.
    chunk_size : int
        Block size of the kernel sums.
    seed : int
        Seed of the median-heuristic subsample.

    Returns
    -------
    float
        The selected bandwidth.
    """
    fn = "select_bandwidth"
    xt, yt = _prepare(fn, x, y, min_n=3)
    if candidates is None:
        candidates = bandwidth_candidates(median_bandwidth(xt, yt, seed=seed))
    cands = [_check_bandwidth(fn, c) for c in candidates]
    if not cands:
        raise WakesleepError(f"{fn}: candidates is empty")
    mmd2, var = _raw_statistics(xt, yt, cands, chunk_size)
    ratio = mmd2 / var.clamp_min(MIN_VAR_EST).sqrt()
    return cands[int(torch.argmax(ratio))]


def _split(t: Tensor, frac: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(t.shape[0], generator=g).to(t.device)
    k = int(round(frac * t.shape[0]))
    return t[perm[:k]], t[perm[k:]]


def _resolve_bandwidth(
    fn: str,
    x: Tensor,
    y: Tensor,
    bandwidth: Bandwidth,
    select_fraction: float,
    chunk_size: int,
    seed: int,
) -> tuple[float, Tensor, Tensor]:
    """Return ``(bandwidth, x_eval, y_eval)``; for ``"power"`` the data are split into select/eval parts."""
    if bandwidth is None or (isinstance(bandwidth, str) and bandwidth == "median"):
        return median_bandwidth(x, y, seed=seed), x, y
    if isinstance(bandwidth, str) and bandwidth == "power":
        if not 0.0 < select_fraction < 1.0:
            raise WakesleepError(f"{fn}: select_fraction must be in (0, 1), got {select_fraction}")
        g = torch.Generator().manual_seed(seed)
        xs, xe = _split(x, select_fraction, g)
        ys, ye = _split(y, select_fraction, g)
        for name, part, total in (("x", xs, x), ("y", ys, y)):
            if part.shape[0] < 3 or total.shape[0] - part.shape[0] < 2:
                raise WakesleepError(
                    f"{fn}: {name} has {total.shape[0]} samples, too few to split for bandwidth='power' "
                    "(needs at least 3 to select and 2 to evaluate)"
                )
        bw = select_bandwidth(xs, ys, chunk_size=chunk_size, seed=seed)
        return bw, xe, ye
    if isinstance(bandwidth, str):
        raise WakesleepError(f"{fn}: bandwidth must be a positive number, 'median' or 'power', got {bandwidth!r}")
    return _check_bandwidth(fn, bandwidth), x, y


# --- public estimators ---------------------------------------------------------------------------------
def mmd_statistics(
    x: Any,
    y: Any,
    bandwidth: Bandwidth = "median",
    *,
    select_fraction: float = 0.5,
    chunk_size: int = DEFAULT_CHUNK,
    seed: int = 0,
) -> MMDStatistics:
    """Unbiased MMD^2, its variance estimate under H1, and the bandwidth used.

    Parameters
    ----------
    x, y : array-like
        ``[m, d]`` and ``[n, d]`` samples (tensors or arrays; images are flattened).
    bandwidth : float, "median" or "power"
        A fixed bandwidth; ``"median"`` (default): median heuristic on the pooled sample (subsample of 1000);
        ``"power"``: maximise ``MMD^2 / sigma_H1`` over a grid on a random ``select_fraction`` of each sample,
        then estimate on the rest.
    select_fraction : float
        Fraction of each sample used to select the bandwidth when ``bandwidth="power"``.
    chunk_size : int
        Kernel block size; memory is ``O(chunk_size^2)``.
    seed : int
        Seed of the median subsample and of the split.

    Returns
    -------
    MMDStatistics
    """
    fn = "mmd"
    xt, yt = _prepare(fn, x, y)
    check_positive_int(fn, "chunk_size", chunk_size)
    bw, xe, ye = _resolve_bandwidth(fn, xt, yt, bandwidth, select_fraction, chunk_size, seed)
    mmd2, var = _raw_statistics(xe, ye, [bw], chunk_size)
    return MMDStatistics(float(mmd2[0]), float(var[0]), bw, xe.shape[0], ye.shape[0])


def mmd(
    x: Any,
    y: Any,
    bandwidth: Bandwidth = "median",
    *,
    select_fraction: float = 0.5,
    chunk_size: int = DEFAULT_CHUNK,
    seed: int = 0,
) -> float:
    """Unbiased estimate of MMD^2 between the distributions of ``x`` and ``y`` (Gaussian kernel).

    See :func:`mmd_statistics` for the parameters; this returns only ``mmd2``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(500, 2, generator=g, dtype=torch.float64)
    >>> y = torch.randn(500, 2, generator=g, dtype=torch.float64) + 1.0
    >>> mmd(x, y) > 0.1
    True
    """
    return mmd_statistics(x, y, bandwidth, select_fraction=select_fraction, chunk_size=chunk_size, seed=seed).mmd2
