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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wakesleep.errors import WakesleepError
from wakesleep.eval._checks import as_samples, check_positive_int, common_dtype, same_columns

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

#: Variance floor of the power criterion MMD^2 / sqrt(max(var, floor)) (Sutherland et al. 2017's code).
MIN_VAR_EST = 1e-8
DEFAULT_CHUNK = 2048

Bandwidth = float | str | None


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


# --- kernels -------------------------------------------------------------------------------------------
def _sq_dists(a: Tensor, b: Tensor, a_sq: Tensor, b_sq: Tensor) -> Tensor:
    """Squared Euclidean distances ``[len(a), len(b)]`` from precomputed squared norms (clamped at 0)."""
    d = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return d.clamp_min_(0.0)


def gaussian_kernel(a: Any, b: Any, bandwidth: float) -> Tensor:
    """The full kernel matrix ``exp(-||a_i - b_j||^2 / (2 bandwidth^2))`` (small inputs only).

    Parameters
    ----------
    a, b : array-like
        ``[n_a, d]`` and ``[n_b, d]`` samples.
    bandwidth : float
        Kernel bandwidth (> 0).

    Returns
    -------
    Tensor
        ``[n_a, n_b]`` kernel matrix in the promoted dtype of the inputs.
    """
    a = as_samples(a, "a", "gaussian_kernel", min_n=1)
    b = as_samples(b, "b", "gaussian_kernel", min_n=1)
    same_columns("gaussian_kernel", "a", a, b=b)
    bw = _check_bandwidth("gaussian_kernel", bandwidth)
    dt = common_dtype(a, b)
    a, b = a.to(dt), b.to(dt)
    d = _sq_dists(a, b, (a * a).sum(1), (b * b).sum(1))
    return torch.exp(-d / (2.0 * bw * bw))


def _check_bandwidth(fn: str, bandwidth: Any) -> float:
    try:
        bw = float(bandwidth)
    except (TypeError, ValueError):
        raise WakesleepError(
            f"{fn}: bandwidth must be a positive number, 'median' or 'power', got {bandwidth!r}"
        ) from None
    if not math.isfinite(bw) or bw <= 0:
        raise WakesleepError(f"{fn}: bandwidth must be a positive finite number, got {bandwidth!r}")
    return bw


def _blocks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]


def kernel_sums(
    a: Tensor, b: Tensor | None, bandwidths: Sequence[float], chunk_size: int = DEFAULT_CHUNK
) -> tuple[Tensor, Tensor]:
    """Row and column sums of Gaussian kernel matrices, block-wise, for several bandwidths at once.

    Parameters
    ----------
    a : Tensor
        ``[n_a, d]`` samples.
    b : Tensor or None
        ``[n_b, d]`` samples; ``None`` means ``b = a`` with the diagonal ``k(a_i, a_i)`` left out and only
        the upper triangle of blocks computed (the matrix is symmetric).
    bandwidths : sequence of float
        Bandwidths; each distance block is computed once and exponentiated per bandwidth.
    chunk_size : int
        Block side length.

    Returns
    -------
    rows, cols : Tensor
        float64 ``[n_bw, n_a]`` row sums and ``[n_bw, n_b]`` column sums (for ``b is None`` both are the
        off-diagonal row sums).
    """
    bws = [float(v) for v in bandwidths]
    gam = [1.0 / (2.0 * v * v) for v in bws]
    same = b is None
    bb = a if same else b
    a_sq, b_sq = (a * a).sum(1), (bb * bb).sum(1)
    rows = torch.zeros(len(bws), a.shape[0], dtype=torch.float64, device=a.device)
    cols = rows if same else torch.zeros(len(bws), bb.shape[0], dtype=torch.float64, device=a.device)
    ablocks, bblocks = _blocks(a.shape[0], chunk_size), _blocks(bb.shape[0], chunk_size)
    for bi, (i0, i1) in enumerate(ablocks):
        for bj, (j0, j1) in enumerate(bblocks):
            if same and bj < bi:
                continue
            d = _sq_dists(a[i0:i1], bb[j0:j1], a_sq[i0:i1], b_sq[j0:j1])
            for t, g in enumerate(gam):
                k = torch.exp(d * (-g))
                if same and bi == bj:
                    k.fill_diagonal_(0.0)
                rows[t, i0:i1] += k.sum(1, dtype=torch.float64)
                if not same or bj != bi:
                    cols[t, j0:j1] += k.sum(0, dtype=torch.float64)
    return rows, cols


# --- bandwidths ----------------------------------------------------------------------------------------
def median_bandwidth(*samples: Any, max_samples: int = 1000, seed: int = 0) -> float:
    """Median heuristic: the median Euclidean distance between distinct points of the pooled sample.

    Parameters
    ----------
    *samples : array-like
        One or more ``[n_i, d]`` sample sets, pooled.
    max_samples : int
        The median is taken over a random subsample of at most this many pooled points
        (``max_samples * (max_samples - 1) / 2`` distances).
    seed : int
        Seed of the subsample.

    Returns
    -------
    float
        The bandwidth ``bw`` of ``exp(-||a - b||^2 / (2 bw^2))``.
    """
    fn = "median_bandwidth"
    if not samples:
        raise WakesleepError(f"{fn}: needs at least one sample set")
    ts = [as_samples(s, f"sample set {i}", fn, min_n=1) for i, s in enumerate(samples)]
    same_columns(fn, "sample set 0", ts[0], **{f"sample set {i}": t for i, t in enumerate(ts[1:], 1)})
    check_positive_int(fn, "max_samples", max_samples, 2)
    dt = common_dtype(*ts)
    pooled = torch.cat([t.to(dt) for t in ts])
    if pooled.shape[0] < 2:
        raise WakesleepError(f"{fn}: needs at least 2 points in total")
    if pooled.shape[0] > max_samples:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(pooled.shape[0], generator=g)[:max_samples].to(pooled.device)
        pooled = pooled[idx]
    sq = (pooled * pooled).sum(1)
    d = _sq_dists(pooled, pooled, sq, sq)
    iu = torch.triu_indices(d.shape[0], d.shape[0], offset=1, device=d.device)
    dist = d[iu[0], iu[1]].to(torch.float64).sqrt()
    med = float(dist.median())
    if med <= 0:
        pos = dist[dist > 0]
        if pos.numel() == 0:
            raise WakesleepError(f"{fn}: all points are identical; no bandwidth can be chosen")
        med = float(pos.median())
    return med


def bandwidth_candidates(reference: float, num: int = 17, span: float = 4.0) -> list[float]:
    """Log-spaced grid ``reference * 2**linspace(-span, span, num)`` of candidate bandwidths."""
    return [float(reference * 2.0**e) for e in np.linspace(-span, span, num)]


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
