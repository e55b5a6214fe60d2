"""Gaussian kernels for :mod:`wakesleep.eval.mmd`: the kernel matrix, block-wise row and column sums of it for
several bandwidths at once, and the median-heuristic bandwidth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wakesleep.errors import WakesleepError
from wakesleep.eval._checks import as_samples, check_positive_int, common_dtype, same_columns

DEFAULT_CHUNK = 2048

Bandwidth = float | str | None


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
