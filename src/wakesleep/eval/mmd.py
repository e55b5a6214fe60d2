r"""Maximum mean discrepancy with a Gaussian kernel, computed block-wise.

The kernel is ``k(a, b) = exp(-||a - b||^2 / (2 bw^2))``. For samples ``X`` (size m) and ``Y`` (size n) the
unbiased estimator (Gretton et al. 2012, eq. 3) is

.. math::

    \mathrm{MMD}^2_u = \frac{1}{m(m-1)} \sum_{i \ne j} k(x_i, x_j)
                     + \frac{1}{n(n-1)} \sum_{i \ne j} k(y_i, y_j)
                     - \frac{2}{mn} \sum_{i, j} k(x_i, y_j).

Every quantity here (the statistic, its variance under H1, permutation statistics, the relative test) only
needs row and column sums of kernel blocks, so kernel matrices are never held whole: blocks of
``chunk_size x chunk_size`` are computed in the inputs' dtype and summed into float64 accumulators.

This module holds the permutation test (:func:`mmd_test`) and re-exports the rest: the kernels and the median
heuristic are in :mod:`wakesleep.eval._mmd_kernels`, the estimator, its variance and the bandwidth selection in
:mod:`wakesleep.eval._mmd_stats`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from wakesleep.eval._checks import check_positive_int
from wakesleep.eval._mmd_kernels import (
    DEFAULT_CHUNK,
    Bandwidth,
    _blocks,
    _sq_dists,
    bandwidth_candidates,
    gaussian_kernel,
    median_bandwidth,
)
from wakesleep.eval._mmd_kernels import kernel_sums as kernel_sums
from wakesleep.eval._mmd_stats import MIN_VAR_EST as MIN_VAR_EST
from wakesleep.eval._mmd_stats import (
    MMDStatistics,
    _prepare,
    _resolve_bandwidth,
    _stats_from_sums,
    mmd,
    mmd_statistics,
    select_bandwidth,
)

__all__ = [
    "MMDStatistics",
    "MMDTestResult",
    "gaussian_kernel",
    "median_bandwidth",
    "bandwidth_candidates",
    "select_bandwidth",
    "mmd",
    "mmd_statistics",
    "mmd_test",
]


# --- the permutation test ------------------------------------------------------------------------------
@dataclass(frozen=True)
class MMDTestResult:
    """Result of the two-sample permutation test (:func:`mmd_test`).

    Attributes
    ----------
    mmd2 : float
        Unbiased MMD^2 on the test data.
    p_value : float
        Permutation p-value ``(1 + #{perm >= observed}) / (1 + n_permutations)``.
    bandwidth : float
        Bandwidth used.
    variance : float
        H1 variance estimate of ``mmd2``.
    n_permutations : int
        Number of random permutations.
    null_mean, null_std : float
        Mean and standard deviation of the permutation statistics.
    m, n : int
        Sample sizes the test used (smaller than the input when part of it selected the bandwidth).
    """

    mmd2: float
    p_value: float
    bandwidth: float
    variance: float
    n_permutations: int
    null_mean: float
    null_std: float
    m: int
    n: int


def _permutation_stats(
    pooled: Tensor, m: int, bandwidth: float, n_permutations: int, chunk_size: int, g: torch.Generator
) -> tuple[Tensor, Tensor]:
    """MMD^2_u for the identity labelling (entry 0) and ``n_permutations`` random relabellings.

    Also returns the H1 variance estimate of the identity labelling's statistic.

    With ``A[:, p]`` the indicator of the points labelled "x" under labelling ``p`` and ``K0`` the kernel
    matrix with zero diagonal, ``s_aa = a' K0 a``, ``s_ab = a' K0 1 - s_aa``,
    ``s_bb = 1' K0 1 - 2 a' K0 1 + s_aa``, so one block-wise pass computing ``K0 A`` gives every
    permutation statistic.
    """
    N = pooled.shape[0]
    n = N - m
    dt, dev = pooled.dtype, pooled.device
    P = n_permutations + 1
    A = torch.zeros(N, P, dtype=dt)
    A[:m, 0] = 1.0
    if n_permutations:
        idx = torch.rand(N, n_permutations, generator=g).argsort(dim=0)[:m]  # [m, P-1]
        A[:, 1:].scatter_(0, idx, 1.0)
    A = A.to(dev)
    KA = torch.zeros(N, P, dtype=torch.float64, device=dev)
    r = torch.zeros(N, dtype=torch.float64, device=dev)
    sq = (pooled * pooled).sum(1)
    gam = 1.0 / (2.0 * bandwidth * bandwidth)
    blocks = _blocks(N, chunk_size)
    for bi, (i0, i1) in enumerate(blocks):
        for bj, (j0, j1) in enumerate(blocks):
            if bj < bi:
                continue
            k = torch.exp(_sq_dists(pooled[i0:i1], pooled[j0:j1], sq[i0:i1], sq[j0:j1]) * (-gam))
            if bi == bj:
                k.fill_diagonal_(0.0)
            KA[i0:i1] += (k @ A[j0:j1]).to(torch.float64)
            r[i0:i1] += k.sum(1, dtype=torch.float64)
            if bj != bi:
                KA[j0:j1] += (k.T @ A[i0:i1]).to(torch.float64)
                r[j0:j1] += k.sum(0, dtype=torch.float64)
    A64 = A.to(torch.float64)
    s_aa = (A64 * KA).sum(0)
    s_a1 = A64.T @ r
    s_11 = r.sum()
    s_ab = s_a1 - s_aa
    s_bb = s_11 - 2.0 * s_a1 + s_aa
    stats = s_aa / (m * (m - 1)) + s_bb / (n * (n - 1)) - 2.0 * s_ab / (m * n)
    # kernel sums of the true labelling: K0 a = (within-x sums on x rows, cross sums on y rows), r - K0 a
    own, rest = KA[:, 0], r - KA[:, 0]
    _, var = _stats_from_sums(own[:m], rest[m:], rest[:m], own[m:], m, n)
    return stats, var


def mmd_test(
    x: Any,
    y: Any,
    bandwidth: Bandwidth = "median",
    *,
    n_permutations: int = 1000,
    select_fraction: float = 0.5,
    chunk_size: int = DEFAULT_CHUNK,
    seed: int = 0,
) -> MMDTestResult:
    """Two-sample test of H0: P_x = P_y with the unbiased MMD^2 statistic and a permutation null.

    Parameters
    ----------
    x, y : array-like
        ``[m, d]`` and ``[n, d]`` samples.
    bandwidth : float, "median" or "power"
        As in :func:`mmd_statistics`. With ``"power"`` the bandwidth is chosen on a held-out
        ``select_fraction`` of each sample and the test runs on the remainder, so the p-value stays valid.
    n_permutations : int
        Number of random relabellings of the pooled sample.
    select_fraction : float
        Split fraction for ``bandwidth="power"``.
    chunk_size : int
        Kernel block size. Memory is ``O(chunk_size^2 + (m + n) * n_permutations)``.
    seed : int
        Seed of the permutations, the split and the median subsample.

    Returns
    -------
    MMDTestResult
    """
    fn = "mmd_test"
    xt, yt = _prepare(fn, x, y)
    check_positive_int(fn, "chunk_size", chunk_size)
    check_positive_int(fn, "n_permutations", n_permutations)
    bw, xe, ye = _resolve_bandwidth(fn, xt, yt, bandwidth, select_fraction, chunk_size, seed)
    g = torch.Generator().manual_seed(seed + 1)
    stats, var = _permutation_stats(torch.cat([xe, ye]), xe.shape[0], bw, n_permutations, chunk_size, g)
    obs, null = stats[0], stats[1:]
    p = (1.0 + float((null >= obs).sum())) / (1.0 + n_permutations)
    return MMDTestResult(
        mmd2=float(obs),
        p_value=p,
        bandwidth=bw,
        variance=float(var),
        n_permutations=n_permutations,
        null_mean=float(null.mean()),
        null_std=float(null.std()) if n_permutations > 1 else 0.0,
        m=xe.shape[0],
        n=ye.shape[0],
    )
