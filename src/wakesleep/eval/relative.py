r"""The relative similarity (three-sample MMD) test of Bounliphone et al. (2015).

Given a reference sample ``X`` (size m) and candidate samples ``Y`` (size n) and ``Z`` (size r), test

    H0: MMD(P_x, P_y) <= MMD(P_x, P_z)   against   H1: MMD(P_x, P_y) > MMD(P_x, P_z),

so a small p-value says that ``Z`` is significantly closer to the reference than ``Y``. The two unbiased
statistics are jointly asymptotically normal (their Theorem 2). With the Hoeffding projections

    a^Y(x) = 2 (E_x' k(x, x') - E_y k(x, y)),   a^Z(x) = 2 (E_x' k(x, x') - E_z k(x, z)),
    b(y)   = 2 (E_y' k(y, y') - E_x k(x, y)),   c(z)   = 2 (E_z' k(z, z') - E_x k(x, z)),

the first-order covariance of ``(MMD^2_u(X,Y), MMD^2_u(X,Z))`` is

    Var_xy = Var[a^Y]/m + Var[b]/n,   Var_xz = Var[a^Z]/m + Var[c]/r,   Cov = Cov[a^Y, a^Z]/m,

which for ``m = n = r`` is the ``4 zeta_1 / m`` of the paper's appendix (its ``t1 ... t9`` terms). The
projections are estimated by the (diagonal-free) row means of the kernel blocks, and the statistic is

    T = (MMD^2_u(X,Y) - MMD^2_u(X,Z)) / sqrt(Var_xy + Var_xz - 2 Cov),    p = 1 - Phi(T).

The test is the asymptotic one of the paper; it needs ``P_x`` to differ from ``P_y`` or ``P_z`` (otherwise the
first-order variance vanishes and the normal approximation fails).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scipy import stats as sps
from torch import Tensor

from wakesleep.errors import WakesleepError
from wakesleep.eval._checks import as_samples, check_positive_int, common_dtype, same_columns
from wakesleep.eval._mmd_kernels import DEFAULT_CHUNK, Bandwidth, _check_bandwidth, kernel_sums, median_bandwidth

__all__ = ["RelativeMMDResult", "relative_mmd_test", "relative_moments", "result_from_moments"]


@dataclass(frozen=True)
class RelativeMMDResult:
    """Result of :func:`relative_mmd_test`.

    Attributes
    ----------
    mmd_xy, mmd_xz : float
        Unbiased MMD^2 between the reference and ``y``, and between the reference and ``z``.
    var_xy, var_xz, cov : float
        Estimated variances of ``mmd_xy`` and ``mmd_xz`` and their covariance.
    statistic : float
        ``(mmd_xy - mmd_xz) / sqrt(var_xy + var_xz - 2 cov)``.
    p_value : float
        ``P(N(0,1) > statistic)``: small means ``z`` is closer to ``x`` than ``y`` is.
    log10_p_value : float
        ``log10(p_value)`` computed from the normal log survival function (finite even for ``p < 1e-300``).
    bandwidth : float
        Gaussian kernel bandwidth.
    m, n, r : int
        Sizes of ``x``, ``y`` and ``z``.
    """

    mmd_xy: float
    mmd_xz: float
    var_xy: float
    var_xz: float
    cov: float
    statistic: float
    p_value: float
    log10_p_value: float
    bandwidth: float
    m: int
    n: int
    r: int

    @property
    def var_diff(self) -> float:
        """Variance estimate of ``mmd_xy - mmd_xz``."""
        return self.var_xy + self.var_xz - 2.0 * self.cov


def relative_mmd_test(
    x: Any,
    y: Any,
    z: Any,
    bandwidth: Bandwidth = None,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    seed: int = 0,
) -> RelativeMMDResult:
    """Test H0: MMD(X, Y) <= MMD(X, Z) against H1: MMD(X, Y) > MMD(X, Z) (Bounliphone et al. 2015).

    Parameters
    ----------
    x : array-like
        ``[m, d]`` reference sample (e.g. held-out data).
    y, z : array-like
        ``[n, d]`` and ``[r, d]`` candidate samples (e.g. samples of two models).
    bandwidth : float, "median" or None
        Gaussian kernel bandwidth; ``None``/``"median"`` (default) uses the median heuristic on the pooled
        ``x, y, z`` (random subsample of 1000 points).
    chunk_size : int
        Kernel block size; memory is ``O(chunk_size^2)`` beyond the data.
    seed : int
        Seed of the median-heuristic subsample.

    Returns
    -------
    RelativeMMDResult

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(400, 2, generator=g, dtype=torch.float64)
    >>> y = torch.randn(400, 2, generator=g, dtype=torch.float64) + 1.0   # far from x
    >>> z = torch.randn(400, 2, generator=g, dtype=torch.float64) + 0.2   # close to x
    >>> relative_mmd_test(x, y, z).p_value < 1e-3
    True
    """
    fn = "relative_mmd_test"
    what = "the relative MMD test"
    xt = as_samples(x, "x", fn, min_n=3, what=what)
    yt = as_samples(y, "y", fn, min_n=3, what=what)
    zt = as_samples(z, "z", fn, min_n=3, what=what)
    same_columns(fn, "x", xt, y=yt, z=zt)
    check_positive_int(fn, "chunk_size", chunk_size)
    dt = common_dtype(xt, yt, zt)
    xt, yt, zt = (t.to(device=xt.device, dtype=dt) for t in (xt, yt, zt))
    if bandwidth is None or (isinstance(bandwidth, str) and bandwidth == "median"):
        bw = median_bandwidth(xt, yt, zt, seed=seed)
    elif isinstance(bandwidth, str):
        raise WakesleepError(f"{fn}: bandwidth must be a positive number or 'median', got {bandwidth!r}")
    else:
        bw = _check_bandwidth(fn, bandwidth)
    sxx, _ = kernel_sums(xt, None, [bw], chunk_size)
    syy, _ = kernel_sums(yt, None, [bw], chunk_size)
    szz, _ = kernel_sums(zt, None, [bw], chunk_size)
    sxy_r, sxy_c = kernel_sums(xt, yt, [bw], chunk_size)
    sxz_r, sxz_c = kernel_sums(xt, zt, [bw], chunk_size)
    mom = relative_moments(sxx, syy, szz, sxy_r, sxy_c, sxz_r, sxz_c)
    var_diff = float(mom["var_diff"][0])
    if not var_diff > 0.0 or not math.isfinite(var_diff):
        raise WakesleepError(
            f"{fn}: the variance estimate of MMD(x,y) - MMD(x,z) is {var_diff:g} (degenerate samples: "
            "are all points identical or the bandwidth far too small?)"
        )
    return result_from_moments(mom, 0, bw)


def relative_moments(
    xx: Tensor, yy: Tensor, zz: Tensor, xy_rows: Tensor, xy_cols: Tensor, xz_rows: Tensor, xz_cols: Tensor
) -> dict[str, Tensor]:
    """The relative test's statistics from kernel row sums, for K kernels at once (module docstring).

    Parameters
    ----------
    xx, yy, zz : Tensor
        ``[K, m]``, ``[K, n]``, ``[K, r]``: per kernel, each point's sum of k(., .) over the *other* points of its
        own sample (the diagonal left out).
    xy_rows, xy_cols : Tensor
        ``[K, m]``, ``[K, n]``: row and column sums of the ``x``-``y`` kernel matrix; ``xz_rows``, ``xz_cols``
        likewise for ``z``.

    Returns
    -------
    dict of Tensor
        ``mmd_xy``, ``mmd_xz`` (unbiased MMD^2), ``var_xy``, ``var_xz``, ``cov`` (first-order (co)variances) and
        ``var_diff`` (the variance of their difference, computed without cancellation as
        ``Var[a_y - a_z] / m + Var[b] / n + Var[c] / r``), each ``[K]``; ``m``, ``n``, ``r``.
    """
    m, n, r = xx.shape[1], yy.shape[1], zz.shape[1]
    mxx = xx.sum(1) / (m * (m - 1))
    gxx = xx / (m - 1)
    a_y = 2.0 * (gxx - xy_rows / n)
    a_z = 2.0 * (gxx - xz_rows / r)
    b = 2.0 * (yy / (n - 1) - xy_cols / m)
    c = 2.0 * (zz / (r - 1) - xz_cols / m)
    vb, vc = b.var(1, correction=1) / n, c.var(1, correction=1) / r
    ay_c, az_c = a_y - a_y.mean(1, keepdim=True), a_z - a_z.mean(1, keepdim=True)
    return {
        "mmd_xy": mxx + yy.sum(1) / (n * (n - 1)) - 2.0 * xy_rows.sum(1) / (m * n),
        "mmd_xz": mxx + zz.sum(1) / (r * (r - 1)) - 2.0 * xz_rows.sum(1) / (m * r),
        "var_xy": a_y.var(1, correction=1) / m + vb,
        "var_xz": a_z.var(1, correction=1) / m + vc,
        "cov": (ay_c * az_c).sum(1) / (m - 1) / m,
        "var_diff": (a_y - a_z).var(1, correction=1) / m + vb + vc,
        "m": m,
        "n": n,
        "r": r,
    }


def result_from_moments(mom: dict[str, Tensor], i: int, bandwidth: float | None) -> RelativeMMDResult:
    """The test of kernel ``i`` of :func:`relative_moments` as a :class:`RelativeMMDResult` (a NaN statistic and
    p-value where that kernel's variance estimate is not positive)."""
    diff = float(mom["mmd_xy"][i] - mom["mmd_xz"][i])
    var = float(mom["var_diff"][i])
    stat = diff / math.sqrt(var) if var > 0 and math.isfinite(var) else math.nan
    log_p = float(sps.norm.logsf(stat)) if math.isfinite(stat) else math.nan
    return RelativeMMDResult(
        mmd_xy=float(mom["mmd_xy"][i]),
        mmd_xz=float(mom["mmd_xz"][i]),
        var_xy=float(mom["var_xy"][i]),
        var_xz=float(mom["var_xz"][i]),
        cov=float(mom["cov"][i]),
        statistic=stat,
        p_value=math.exp(log_p) if math.isfinite(log_p) else math.nan,
        log10_p_value=log_p / math.log(10.0),
        bandwidth=bandwidth,
        m=int(mom["m"]),
        n=int(mom["n"]),
        r=int(mom["r"]),
    )
