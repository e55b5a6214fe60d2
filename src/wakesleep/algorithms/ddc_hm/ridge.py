"""Closed-form ridge regression with an unpenalised intercept, running statistics and held-out ridge choice."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from wakesleep.ops import matmul

RIDGE_GRID = tuple(10.0**k for k in range(-8, 2))


def with_intercept(h: Tensor) -> Tensor:
    """Append a constant-one column: ``[..., M] -> [..., M + 1]``."""
    return torch.cat([h, h.new_ones((*h.shape[:-1], 1))], dim=-1)


def penalty_scale(gram: Tensor, n_free: int = 1) -> Tensor:
    """Mean of the penalised diagonal of ``gram`` (the ridge is relative to it)."""
    n_pen = gram.shape[-1] - n_free
    return gram.diagonal()[:n_pen].mean() if n_pen > 0 else gram.new_tensor(1.0)


def penalty(gram: Tensor, lam: float, n_free: int = 1) -> Tensor:
    """Ridge penalty ``lam * mean(penalised diag(gram)) * diag(1, ..., 1, 0, ..., 0)``: relative to the feature
    scale, leaving the last ``n_free`` columns (the intercept, and any exact sufficient statistics) unpenalised."""
    d = gram.shape[-1]
    p = torch.zeros(d, dtype=gram.dtype, device=gram.device)
    p[: d - n_free] = 1.0
    return torch.diag(p * lam * penalty_scale(gram, n_free))


def cholesky_factor(gram: Tensor, lam: float, n_free: int = 1) -> Tensor:
    """Cholesky factor of ``gram + penalty``, adding jitter to the diagonal if needed.

    Works on one copy of ``gram`` (the penalty and any jitter go on its diagonal in place) and checks for NaN
    or inf only when the factorisation fails: no identity matrix, penalty matrix or elementwise check of the
    whole d x d matrix on the common path (d = 1085 with x in the SBN's read-out).
    """
    return _penalised_cholesky(gram, lam, n_free)[0]


def _penalised_cholesky(gram: Tensor, lam: float, n_free: int = 1) -> tuple[Tensor, Tensor]:
    """:func:`cholesky_factor` and the diagonal it added to ``gram`` (penalty and jitter)."""
    d = gram.shape[-1]
    a = gram.clone()
    diag = a.diagonal()
    diag[: d - n_free] += lam * penalty_scale(gram, n_free)
    base = diag.abs().mean().clamp_min(torch.finfo(a.dtype).tiny)
    jitter = 0.0
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(a)
        # a NaN or inf in the (symmetric) Gram matrix reaches the factor's diagonal or fails the factorisation
        if int(info) == 0 and bool(torch.isfinite(chol.diagonal().sum())):
            return chol, diag - gram.diagonal()
        if not bool(torch.isfinite(gram.sum())):
            raise FloatingPointError(
                "ridge: the Gram matrix has NaN or inf (sleep samples or features are not finite: has the model "
                "diverged?)"
            )
        step = base * (1e-10 if jitter == 0.0 else 100 * jitter / base) - jitter
        diag += step
        jitter += float(step)
    raise RuntimeError("ridge: Gram matrix is not positive definite even with jitter")


def ridge_solve(gram: Tensor, cross: Tensor, lam: float, n_free: int = 1) -> Tensor:
    """Coefficients ``(gram + lam P)^{-1} cross`` (``gram = H^T H / n``, ``cross = H^T Y / n``)."""
    return torch.cholesky_solve(cross, cholesky_factor(gram, lam, n_free))


def ridge_solve_with_product(gram: Tensor, cross: Tensor, lam: float, n_free: int = 1) -> tuple[Tensor, Tensor]:
    """:func:`ridge_solve`'s ``phi`` and ``gram @ phi``, the latter without a d x d x p product: the penalised
    matrix differs from ``gram`` only on its diagonal, ``(gram + D) phi = cross``, so ``gram phi = cross - D phi``
    (exact up to the solve's rounding, which is backward stable)."""
    chol, added = _penalised_cholesky(gram, lam, n_free)
    phi = torch.cholesky_solve(cross, chol)
    return phi, cross - added[:, None] * phi


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
    solve_dtype: torch.dtype | None = None,
) -> float:
    """Choose the ridge strength from ``grid`` by squared error on a held-out split (the last rows).

    Each grid point costs one Cholesky factorisation of the (small) Gram matrix. The products are computed in
    the dtype of ``h`` and ``y``, the Gram matrix and the solves in ``solve_dtype`` (default: that dtype), as
    the regression statistics of :class:`RunningMoments` are.
    """
    n = h.shape[0]
    n_val = max(int(n * val_fraction), 1)
    ht, yt, hv, yv = h[: n - n_val], y[: n - n_val], h[n - n_val :], y[n - n_val :]
    dt = solve_dtype or h.dtype
    gram, cross = matmul(ht.T, ht).to(dt) / ht.shape[0], matmul(ht.T, yt).to(dt) / ht.shape[0]
    errs = torch.full((len(grid),), float("inf"), dtype=dt, device=h.device)
    for i, lam in enumerate(grid):
        try:
            coef = ridge_solve(gram, cross, lam, n_free)
        except RuntimeError:
            continue
        errs[i] = ((matmul(hv, coef.to(hv.dtype)) - yv) ** 2).mean()
    if reduce is not None:  # data-parallel: every rank chooses from the summed validation errors
        errs = reduce(errs)
    return grid[int(torch.argmin(errs))]


MEMORY_GRID = (0.0, 0.5, 0.9, 0.97, 0.99, 0.997)


class PhaseSums(NamedTuple):
    """One sleep phase's sums (summed over data-parallel ranks): ``H^T H``, ``H^T Y_k``, the number of rows,
    and ``sum Y_k^2`` per target block."""

    gram: Tensor
    cross: list[Tensor]
    n: float
    sq: list[float]


class RunningMoments:
    """Exponentially decayed sums ``G = sum h h^T``, ``C_k = sum h y_k^T`` over sleep phases.

    The sums are kept in ``dtype`` (float64 by default, whatever the features' dtype: each phase's products
    are computed in the features' dtype and then accumulated in double precision; a float32 SBN run on 60000
    images stopped after roughly 25 epochs with a float32 Gram matrix that no jitter made positive definite).
    With ``decay = 0`` only the latest phase counts; with ``decay -> 1`` all past phases do. ``decay`` may be a
    sequence of candidate decays: one set of sums is kept per candidate (each phase's sums are computed
    once and added to all of them) and :meth:`moments` returns those of ``decays[index]``. ``reduce`` (e.g.
    an all-reduce over data-parallel ranks) is applied to each phase's sums, so every rank holds the
    statistics of the union of all ranks' sleep samples.
    """

    def __init__(
        self,
        decay: float | Sequence[float] = 0.0,
        reduce: Callable[[Tensor], Tensor] | None = None,
        index: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.dtype = dtype
        self.decays = (float(decay),) if isinstance(decay, (int, float)) else tuple(float(d) for d in decay)
        if not self.decays:
            raise ValueError("RunningMoments: need at least one decay")
        self.index = int(index)
        self.reduce = reduce
        self.phases = 0
        self.n = [0.0] * len(self.decays)
        self.gram: list[Tensor | None] = [None] * len(self.decays)
        self.cross: list[list[Tensor]] = [[] for _ in self.decays]

    @property
    def decay(self) -> float:
        return self.decays[self.index]

    def phase_sums(self, h: Tensor, ys: list[Tensor]) -> PhaseSums:
        """The sums of one phase, reduced over ranks (one all-reduce for the counts and squared norms)."""
        dt = self.dtype
        g = matmul(h.T, h).to(dt)
        if len(ys) > 1:  # one product for all target blocks
            cs = list(matmul(h.T, torch.cat(ys, dim=1)).to(dt).split([y.shape[1] for y in ys], dim=1))
        else:
            cs = [matmul(h.T, y).to(dt) for y in ys]
        scalars = torch.stack([h.new_tensor(float(h.shape[0]), dtype=dt)] + [(y * y).sum().to(dt) for y in ys])
        if self.reduce is not None:
            g, cs, scalars = self.reduce(g), [self.reduce(c) for c in cs], self.reduce(scalars)
        values = scalars.tolist()
        return PhaseSums(g, cs, values[0], values[1:])

    def add(self, sums: PhaseSums) -> None:
        """Decay every candidate's sums and add the phase's."""
        for j, d in enumerate(self.decays):
            gram = self.gram[j]
            if d == 0.0:  # never updated in place, so it may share the phase's tensors
                self.gram[j], self.cross[j], self.n[j] = sums.gram, list(sums.cross), sums.n
            elif gram is None:
                self.gram[j], self.cross[j], self.n[j] = sums.gram.clone(), [c.clone() for c in sums.cross], sums.n
            else:  # in place: d * old + new
                gram.mul_(d).add_(sums.gram)
                for c, ci in zip(self.cross[j], sums.cross, strict=True):
                    c.mul_(d).add_(ci)
                self.n[j] = d * self.n[j] + sums.n
        self.phases += 1

    def update(self, h: Tensor, ys: list[Tensor]) -> None:
        self.add(self.phase_sums(h, ys))

    def state_tensors(self) -> dict[str, Tensor]:
        """The running sums as named tensors (for checkpoints)."""
        out = {"index": torch.tensor(self.index), "phases": torch.tensor(self.phases)}
        for j, gram in enumerate(self.gram):
            if gram is None:
                continue
            out[f"{j}.gram"] = gram
            out[f"{j}.n"] = torch.tensor(self.n[j], dtype=torch.float64)
            for k, c in enumerate(self.cross[j]):
                out[f"{j}.cross.{k}"] = c
        return out

    def load_state_tensors(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`state_tensors` (sums copied, so later in-place updates do not touch ``state``)."""
        if "index" not in state:
            return
        self.index, self.phases = int(state["index"]), int(state["phases"])
        for j in range(len(self.decays)):
            if f"{j}.gram" not in state:
                self.gram[j], self.cross[j], self.n[j] = None, [], 0.0
                continue
            self.gram[j] = state[f"{j}.gram"].to(dtype=self.dtype, copy=True)
            self.n[j] = float(state[f"{j}.n"])
            n_blocks = sum(1 for k in state if k.startswith(f"{j}.cross."))
            self.cross[j] = [state[f"{j}.cross.{k}"].to(dtype=self.dtype, copy=True) for k in range(n_blocks)]

    def moments(self, index: int | None = None) -> tuple[Tensor, list[Tensor]]:
        """``(G / n, [C_k / n])`` for candidate ``index`` (default: the chosen one)."""
        j = self.index if index is None else index
        gram = self.gram[j]
        assert gram is not None
        return gram / self.n[j], [c / self.n[j] for c in self.cross[j]]


def unexplained(sums: PhaseSums, k: int, coef: Tensor) -> float:
    """Fraction of the variance of target block ``k`` left unexplained when it is predicted by ``h @ coef`` on
    the rows summarised by ``sums`` (the last column of h is the constant one).

    Computed from the sums alone, ``|Y - H B|^2 = sum Y^2 - 2 <B, H^T Y> + <B, H^T H B>``, so under data
    parallelism it is the error over the union of all ranks' rows without moving any rows.
    """
    c, sq = sums.cross[k], sums.sq[k]
    sse = sq - 2 * float((coef * c).sum()) + float((coef * (sums.gram @ coef)).sum())
    ss = sq - float((c[-1] ** 2).sum()) / sums.n  # the intercept row of H^T Y is the column sums of Y
    return max(sse, 0.0) / max(ss, 1e-300)


def prediction_error(sums: PhaseSums, coefs: list[Tensor]) -> float:
    """Mean over target blocks of :func:`unexplained`."""
    return sum(unexplained(sums, k, b) for k, b in enumerate(coefs)) / len(coefs)
