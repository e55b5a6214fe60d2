"""Kernel ridge regression in torch: exact (Cholesky), random Fourier features and Nystrom, with held-out
choice of the bandwidth and the ridge.

Convention
----------
Gaussian kernel ``k(a, b) = exp(-||a - b||^2 / (2 h^2))`` with bandwidth ``h``. With N training points the
regression minimises ``(1/N) sum_n (y_n - f(x_n))^2 + lam ||f||_H^2``, so the fitted function is

    f(x) = sum_n alpha_n(x) y_n,      alpha(x) = (K + N lam I)^{-1} k(X, x).

scikit-learn's ``KernelRidge(kernel="rbf", gamma=1 / (2 h^2), alpha=N * lam)`` fits the same function (its
``alpha`` is the un-normalised ridge, ``N lam`` here).

What AL-WS needs is the *weight* vector ``alpha(x)`` (the fit is linear in the targets), so every regressor
here exposes ``weights(xq) -> [N, B]``; ``predict(xq, y) = weights(xq)^T y``.

Approximations (for large N): a feature map ``phi: R^D -> R^M`` with ``phi(a) . phi(b) ~ k(a, b)`` gives, by the
push-through identity, ``alpha(x) = Phi (Phi^T Phi + N lam I)^{-1} phi(x)``: cost O(N M^2 + M^3) instead of
O(N^3).

- ``rff``: random Fourier features ``sqrt(2 / M) cos(W x / h + c)``, ``W ~ N(0, I)``, ``c ~ U(0, 2 pi)``
  (Rahimi & Recht 2007);
- ``nystrom``: ``phi(x) = R^{-1} k(landmarks, x)`` (``K_mm = R R^T``) with M landmarks drawn from the training points
  (Williams & Seeger 2001); exact when M = N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from wakesleep.errors import WakesleepError

__all__ = [
    "KERNELS",
    "gaussian_kernel",
    "median_bandwidth",
    "KernelRidge",
    "FeatureRidge",
    "RandomFourierFeatures",
    "NystromFeatures",
    "make_regressor",
    "Selection",
    "select_hyperparameters",
    "BANDWIDTH_FACTORS",
    "RIDGE_GRID",
]

KERNELS = ("exact", "rff", "nystrom")
#: Multiples of the median-heuristic bandwidth tried by :func:`select_hyperparameters`.
BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0)
#: Ridge strengths (``lam`` above) tried by :func:`select_hyperparameters`.
RIDGE_GRID = tuple(10.0**k for k in range(-7, 0))


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    d = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * a @ b.T
    return d.clamp_min(0.0)


def gaussian_kernel(a: Tensor, b: Tensor, bandwidth: float) -> Tensor:
    """``exp(-||a_i - b_j||^2 / (2 h^2))``: ``[n, D], [m, D] -> [n, m]``."""
    return torch.exp(-_sq_dists(a, b) / (2.0 * bandwidth * bandwidth))


def median_bandwidth(x: Tensor, max_samples: int = 1000, generator: torch.Generator | None = None) -> float:
    """Median pairwise distance of (a random subset of at most ``max_samples``) rows of ``x``."""
    if x.shape[0] > max_samples:
        idx = torch.randperm(x.shape[0], generator=generator)[:max_samples].to(x.device)
        x = x[idx]
    d = _sq_dists(x, x)
    iu = torch.triu_indices(d.shape[0], d.shape[0], offset=1, device=d.device)
    dist = d[iu[0], iu[1]].double().sqrt()
    pos = dist[dist > 0]
    if pos.numel() == 0:
        return 1.0
    return float(pos.median())


def _chol(a: Tensor) -> Tensor:
    """Cholesky factor, with growing jitter if ``a`` is numerically singular."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    base = float(a.diagonal().abs().mean().clamp_min(torch.finfo(a.dtype).tiny))
    jitter = 0.0
    for _ in range(10):
        chol, info = torch.linalg.cholesky_ex(a + jitter * eye)
        if int(info) == 0:
            return chol
        jitter = base * (1e-10 if jitter == 0.0 else 100 * jitter / base)
    raise RuntimeError("krr: matrix is not positive definite even with jitter")


# --------------------------------------------------------------------------------------------------------
# feature maps
# --------------------------------------------------------------------------------------------------------
class RandomFourierFeatures:
    """``phi(x) = sqrt(2/M) cos(W x / h + c)``; ``phi(a) . phi(b) -> k(a, b)`` as M grows."""

    def __init__(
        self,
        dim: int,
        n_components: int,
        bandwidth: float,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        self.bandwidth = float(bandwidth)
        self.n_components = int(n_components)
        self.w = torch.randn(dim, n_components, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
        self.c = (2 * math.pi * torch.rand(n_components, generator=generator, dtype=torch.float64)).to(
            dtype=dtype, device=device
        )

    def __call__(self, x: Tensor) -> Tensor:
        return math.sqrt(2.0 / self.n_components) * torch.cos(x @ self.w / self.bandwidth + self.c)


class NystromFeatures:
    """``phi(x) = R^{-1} k(L, x)`` over landmarks ``L``, with ``K_mm = R R^T`` (Cholesky, jittered if singular),
    so that ``phi(a) . phi(b) = k(a, L) K_mm^{-1} k(L, b)``."""

    def __init__(self, landmarks: Tensor, bandwidth: float) -> None:
        self.landmarks = landmarks
        self.bandwidth = float(bandwidth)
        kmm = gaussian_kernel(landmarks, landmarks, bandwidth)
        kmm.diagonal().add_(1e-10)
        self.chol = _chol(kmm)
        self.n_components = landmarks.shape[0]

    def __call__(self, x: Tensor) -> Tensor:
        kx = gaussian_kernel(self.landmarks, x, self.bandwidth)  # [m, B]
        return torch.linalg.solve_triangular(self.chol, kx, upper=False).T


# --------------------------------------------------------------------------------------------------------
# regressors
# --------------------------------------------------------------------------------------------------------
class KernelRidge:
    """Exact Gaussian-kernel ridge regression by a Cholesky factorisation of ``K + N lam I``.

    Parameters
    ----------
    bandwidth : float
        Kernel bandwidth h.
    ridge : float
        lam (scikit-learn's ``alpha`` is ``N * lam``).
    """

    kind = "exact"

    def __init__(self, bandwidth: float, ridge: float) -> None:
        self.bandwidth, self.ridge = float(bandwidth), float(ridge)

    def fit(self, x: Tensor) -> KernelRidge:
        """Factorise ``K + N lam I`` for the training inputs ``x [N, D]`` (targets are given later)."""
        n = x.shape[0]
        k = gaussian_kernel(x, x, self.bandwidth)
        k.diagonal().add_(n * self.ridge)
        self.x_, self.chol_ = x, _chol(k)
        return self

    def weights(self, xq: Tensor) -> Tensor:
        """``alpha(xq) = (K + N lam I)^{-1} k(X, xq)``: ``[B, D] -> [N, B]``."""
        return torch.cholesky_solve(gaussian_kernel(self.x_, xq, self.bandwidth), self.chol_)

    def predict(self, xq: Tensor, y: Tensor) -> Tensor:
        """Prediction at ``xq`` for training targets ``y [N, ...]``: ``[B, ...]``."""
        w = self.weights(xq)
        return torch.tensordot(w.T, y, dims=1)


class FeatureRidge:
    """Ridge regression on an explicit feature map (RFF or Nystrom):
    ``alpha(x) = Phi (Phi^T Phi + N lam)^{-1} phi(x)``."""

    def __init__(
        self, kind: str, bandwidth: float, ridge: float, n_components: int, generator: torch.Generator | None = None
    ) -> None:
        if kind not in ("rff", "nystrom"):
            raise WakesleepError(f"krr: feature kernel must be rff or nystrom, got {kind!r}")
        self.kind, self.bandwidth, self.ridge = kind, float(bandwidth), float(ridge)
        self.n_components, self.generator = int(n_components), generator

    def fit(self, x: Tensor, features=None) -> FeatureRidge:
        n = x.shape[0]
        if features is None:
            features = make_features(self.kind, x, self.bandwidth, self.n_components, self.generator)
        self.features_ = features
        phi = features(x)  # [N, M]
        g = phi.T @ phi
        g.diagonal().add_(n * self.ridge)
        self.phi_, self.chol_ = phi, _chol(g)
        return self

    def weights(self, xq: Tensor) -> Tensor:
        return self.phi_ @ torch.cholesky_solve(self.features_(xq).T, self.chol_)

    def predict(self, xq: Tensor, y: Tensor) -> Tensor:
        return torch.tensordot(self.weights(xq).T, y, dims=1)


def make_features(kind: str, x: Tensor, bandwidth: float, n_components: int, generator: torch.Generator | None = None):
    """The feature map ``kind`` (``rff`` or ``nystrom``) at ``bandwidth``; Nystrom landmarks are rows of ``x``."""
    if kind == "rff":
        return RandomFourierFeatures(x.shape[1], n_components, bandwidth, generator, x.dtype, x.device)
    m = min(int(n_components), x.shape[0])
    idx = torch.randperm(x.shape[0], generator=generator)[:m].to(x.device)
    return NystromFeatures(x[idx], bandwidth)


def make_regressor(
    kind: str, bandwidth: float, ridge: float, n_components: int = 500, generator: torch.Generator | None = None
):
    """``KernelRidge`` for ``kind="exact"``, else a ``FeatureRidge``."""
    if kind == "exact":
        return KernelRidge(bandwidth, ridge)
    if kind in ("rff", "nystrom"):
        return FeatureRidge(kind, bandwidth, ridge, n_components, generator)
    raise WakesleepError(f"algorithm.kernel: must be one of {', '.join(KERNELS)}, got {kind!r}")


# --------------------------------------------------------------------------------------------------------
# hyperparameter selection
# --------------------------------------------------------------------------------------------------------
@dataclass
class Selection:
    """Result of :func:`select_hyperparameters`: chosen ``bandwidth`` and ``ridge``, the held-out error
    at the choice (relative to the variance of the held-out targets) and the full grid of errors."""

    bandwidth: float
    ridge: float
    rel_error: float
    grid: dict[tuple[float, float], float]


def select_hyperparameters(
    x: Tensor,
    y: Tensor,
    kind: str = "exact",
    bandwidths: tuple[float, ...] | list[float] | None = None,
    ridges: tuple[float, ...] | list[float] = RIDGE_GRID,
    val_fraction: float = 0.2,
    n_components: int = 500,
    generator: torch.Generator | None = None,
) -> Selection:
    """Choose ``(bandwidth, ridge)`` on a grid by squared error on held-out rows (the last ``val_fraction``).

    Parameters
    ----------
    x : Tensor
        ``[N, D]`` inputs (in random order: the split is by position).
    y : Tensor
        ``[N, P]`` targets (columns are weighted equally; standardise them beforehand if their scales differ).
    bandwidths : sequence of float, optional
        Candidate bandwidths; default ``BANDWIDTH_FACTORS`` times the median heuristic of the training rows.

    Notes
    -----
    Exact kernel: one Cholesky factorisation of ``K_train + N_train lam I`` per grid point (on this kind of
    machine a Cholesky is an order of magnitude cheaper than the eigendecomposition that would serve every
    ridge at once). Feature kernels: one ``M x M`` Cholesky factorisation per grid point.
    """
    n = x.shape[0]
    y = y.reshape(n, -1)
    n_val = max(int(round(n * val_fraction)), 1)
    nt = n - n_val
    if nt < 2:
        raise WakesleepError("krr: too few samples to hold out a validation set")
    xt, yt, xv, yv = x[:nt], y[:nt], x[nt:], y[nt:]
    if bandwidths is None:
        h0 = median_bandwidth(xt, generator=generator)
        bandwidths = [h0 * f for f in BANDWIDTH_FACTORS]
    var = float(((yv - yv.mean(0)) ** 2).mean().clamp_min(1e-300))
    grid: dict[tuple[float, float], float] = {}
    for h in bandwidths:
        # the normal equations (gram + nt * lam * I) w = rhs; held-out predictions are val @ w
        if kind == "exact":
            gram, rhs, val = gaussian_kernel(xt, xt, h), yt, gaussian_kernel(xv, xt, h)
        else:
            feats = make_features(kind, xt, h, n_components, generator)
            pt, val = feats(xt), feats(xv)
            gram, rhs = pt.T @ pt, pt.T @ yt
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        for lam in ridges:
            chol, info = torch.linalg.cholesky_ex(gram + nt * lam * eye)
            if int(info) != 0:
                grid[(float(h), float(lam))] = float("inf")
                continue
            pred = val @ torch.cholesky_solve(rhs, chol)
            grid[(float(h), float(lam))] = float(((pred - yv) ** 2).mean()) / var
    finite = {k: v for k, v in grid.items() if math.isfinite(v)}
    if not finite:
        raise RuntimeError("krr: every grid point gave a non-finite held-out error")
    (h, lam), err = min(finite.items(), key=lambda kv: kv[1])
    return Selection(h, lam, err, grid)
