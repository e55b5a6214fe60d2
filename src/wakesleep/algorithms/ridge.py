"""Closed-form ridge regression with an unpenalised intercept, running statistics and held-out ridge choice."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

RIDGE_GRID = tuple(10.0**k for k in range(-8, 2))


def with_intercept(h: Tensor) -> Tensor:
    """Append a constant-one column: ``[..., M] -> [..., M + 1]``."""
    return torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)


def penalty(gram: Tensor, lam: float, n_free: int = 1) -> Tensor:
    """Ridge penalty ``lam * mean(penalised diag(gram)) * diag(1, ..., 1, 0, ..., 0)``: relative to the feature
    scale, leaving the last ``n_free`` columns (the intercept, and any exact sufficient statistics) unpenalised."""
    d = gram.shape[-1]
    n_pen = d - n_free
    scale = gram.diagonal()[:n_pen].mean() if n_pen > 0 else gram.new_tensor(1.0)
    p = torch.zeros(d, dtype=gram.dtype, device=gram.device)
    p[:n_pen] = 1.0
    return torch.diag(p * lam * scale)


def cholesky_factor(gram: Tensor, lam: float, n_free: int = 1) -> Tensor:
    """Cholesky factor of ``gram + penalty``, adding jitter if needed."""
    if not torch.isfinite(gram).all():
        raise FloatingPointError(
            "ridge: the Gram matrix has NaN or inf (sleep samples or features are not finite: has the model diverged?)"
        )
    a = gram + penalty(gram, lam, n_free)
    jitter = 0.0
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    base = a.diagonal().abs().mean().clamp_min(torch.finfo(a.dtype).tiny)
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(a + jitter * eye)
        if int(info) == 0:
            return chol
        jitter = base * (1e-10 if jitter == 0.0 else 100 * jitter / base)
    raise RuntimeError("ridge: Gram matrix is not positive definite even with jitter")


def ridge_solve(gram: Tensor, cross: Tensor, lam: float, n_free: int = 1) -> Tensor:
    """Coefficients ``(gram + lam P)^{-1} cross`` (``gram = H^T H / n``, ``cross = H^T Y / n``)."""
    return torch.cholesky_solve(cross, cholesky_factor(gram, lam, n_free))


def fit_ridge(h: Tensor, y: Tensor, lam: float, n_free: int = 1) -> Tensor:
    """Ridge regression of ``y [n, p]`` on ``h [n, m]`` (the last ``n_free`` columns of ``h``, the intercept
    among them, unpenalised)."""
    n = h.shape[0]
    return ridge_solve(h.T @ h / n, h.T @ y / n, lam, n_free)


def select_ridge(
    h: Tensor,
    y: Tensor,
    grid: tuple[float, ...] = RIDGE_GRID,
    val_fraction: float = 0.2,
    n_free: int = 1,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> float:
    """Choose the ridge strength from ``grid`` by squared error on a held-out split (the last rows).

    Each grid point costs one Cholesky factorisation of the (small) Gram matrix.
    """
    n = h.shape[0]
    n_val = max(int(n * val_fraction), 1)
    ht, yt, hv, yv = h[: n - n_val], y[: n - n_val], h[n - n_val :], y[n - n_val :]
    gram, cross = ht.T @ ht / ht.shape[0], ht.T @ yt / ht.shape[0]
    errs = torch.full((len(grid),), float("inf"), dtype=h.dtype, device=h.device)
    for i, lam in enumerate(grid):
        try:
            coef = ridge_solve(gram, cross, lam, n_free)
        except RuntimeError:
            continue
        errs[i] = ((hv @ coef - yv) ** 2).mean()
    if reduce is not None:  # data-parallel: every rank chooses from the summed validation errors
        errs = reduce(errs)
    return grid[int(torch.argmin(errs))]


class RunningMoments:
    """Exponentially decayed sums ``G = sum h h^T``, ``C_k = sum h y_k^T`` over sleep phases.

    With ``decay = 0`` only the latest phase counts; with ``decay -> 1`` all past phases do. ``reduce``
    (e.g. an all-reduce over data-parallel ranks) is applied to each phase's sums, so every rank holds the
    statistics of the union of all ranks' sleep samples.
    """

    def __init__(self, decay: float = 0.0, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        self.decay = float(decay)
        self.reduce = reduce
        self.n = 0.0
        self.gram: Tensor | None = None
        self.cross: list[Tensor] = []

    def update(self, h: Tensor, ys: list[Tensor]) -> None:
        g, cs = h.T @ h, [h.T @ y for y in ys]
        n = float(h.shape[0])
        if self.reduce is not None:
            g, cs = self.reduce(g), [self.reduce(c) for c in cs]
            n = float(self.reduce(torch.tensor([n], dtype=h.dtype, device=h.device)))
        if self.gram is None or self.decay == 0.0:
            self.gram, self.cross, self.n = g, cs, n
        else:
            d = self.decay
            self.gram = d * self.gram + g
            self.cross = [d * c + ci for c, ci in zip(self.cross, cs, strict=True)]
            self.n = d * self.n + n

    def moments(self) -> tuple[Tensor, list[Tensor]]:
        assert self.gram is not None
        return self.gram / self.n, [c / self.n for c in self.cross]
