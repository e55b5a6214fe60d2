"""How much the observation says about each latent layer of a model: :func:`latent_predictability`.

For a latent layer ``z_l`` of a :class:`~wakesleep.models.HierarchicalModel` with sufficient statistics
``S_l(z_l)`` (or its embedded value, ``statistics="mean"``), the share of the layer's variability that the
observation carries is, pooled over the statistics' dimensions ``d``,

    R_l = sum_d Var_x(E[S_ld | x]) / sum_d Var(S_ld) = 1 - sum_d E_x[Var(S_ld | x)] / sum_d Var(S_ld),

under the model's own joint p(z, x). It is 0 when ``z_l`` is independent of x (the model does not use the
layer to explain x) and 1 when x determines S_l(z_l). It is a property of the generative model alone: no
recognition model and no (noisy) AIS reference enters it.

It is estimated from ancestral samples [z_L, ..., z_1, x]: a predictor of S_l from x is fitted on n samples
and scored on ``n_test`` held-out ones by the fraction of variance it explains,
``1 - sum(squared errors) / sum over dimensions of (n_test x held-out variance)``. Since E[S_l | x] is the best
predictor in squared error, each predictor's fraction is at most R_l up to sampling noise: the estimates are
lower bounds, and the better predictor gives the tighter one. Two predictors are fitted: ridge regression on
``[x, 1]`` (``linear``) and an MLP (``mlp``). The constant guess (the training mean) scores 0 by definition and
is not reported; a negative value means a predictor does worse than it on held-out samples (overfitting).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from wakesleep.errors import WakesleepError
from wakesleep.models.hierarchical import HierarchicalModel

__all__ = ["LayerPredictability", "PredictabilityResult", "latent_predictability"]

_FN = "latent_predictability"
_MIN_SAMPLES = 10
_CHUNK = 16_384  # rows per float64 block of the normal equations


@dataclass(frozen=True)
class LayerPredictability:
    """The predictability of one latent layer from x.

    Attributes
    ----------
    name : str
        The layer's name (e.g. ``"z2"``).
    n_targets : int
        Number of target dimensions (statistics, or embedded units with ``statistics="mean"``).
    linear : float
        Held-out fraction of variance explained by ridge regression on ``[x, 1]`` (NaN if the targets do not
        vary on the held-out samples).
    mlp : float or None
        The same for the MLP; None when it was skipped (``mlp_epochs=0``).
    ridge : float
        The ridge (relative to the mean diagonal of the Gram matrix) chosen for ``linear``.
    """

    name: str
    n_targets: int
    linear: float
    mlp: float | None
    ridge: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_targets": self.n_targets,
            "linear": self.linear,
            "mlp": self.mlp,
            "ridge": self.ridge,
        }


@dataclass(frozen=True)
class PredictabilityResult:
    """The result of :func:`latent_predictability`.

    Attributes
    ----------
    layers : tuple of LayerPredictability
        One record per latent layer, top first.
    n, n_test : int
        Training and held-out sample counts.
    statistics : str
        ``"sufficient"`` or ``"mean"``: what was predicted.
    seconds : float
        Wall-clock time of the whole computation.
    """

    layers: tuple[LayerPredictability, ...]
    n: int
    n_test: int
    statistics: str
    seconds: float

    def __getitem__(self, name: str) -> LayerPredictability:
        """The record of the layer called ``name``."""
        for rec in self.layers:
            if rec.name == name:
                return rec
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN stays NaN)."""
        return {
            "n": self.n,
            "n_test": self.n_test,
            "statistics": self.statistics,
            "seconds": self.seconds,
            "layers": [rec.to_dict() for rec in self.layers],
        }

    def lines(self) -> list[str]:
        """One human-readable line per layer, e.g. ``z2: x explains 11.5 % of S(z2) linearly, 12.3 % by an MLP``."""
        out = []
        for rec in self.layers:
            what = f"S({rec.name})" if self.statistics == "sufficient" else rec.name
            line = f"{rec.name}: x explains {100 * rec.linear:.1f} % of {what} linearly"
            line += ", no MLP fitted" if rec.mlp is None else f", {100 * rec.mlp:.1f} % by an MLP"
            out.append(line)
        return out


def latent_predictability(
    model: nn.Module,
    n: int = 100_000,
    n_test: int = 10_000,
    *,
    mlp_epochs: int = 5,
    mlp_hidden: int = 500,
    ridge_grid: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    seed: int = 0,
    statistics: str = "sufficient",
) -> PredictabilityResult:
    """How much of each latent layer's variability the observation carries, under the model's own samples.

    Draws ``n + n_test`` ancestral samples [z_L, ..., z_1, x], fits predictors of each latent layer's targets
    from x on the first ``n`` and reports the fraction of variance they explain on the last ``n_test``: a
    lower bound (up to sampling noise) on ``1 - sum_d E[Var(S_ld | x)] / sum_d Var(S_ld)`` (see the module
    docstring). The constant guess scores 0.

    Parameters
    ----------
    model : HierarchicalModel
        The generative model (at least one latent layer). It is only sampled from, never changed.
    n : int
        Training samples (at least 10); a fifth of them choose the ridge.
    n_test : int
        Held-out samples the fractions are scored on (at least 10).
    mlp_epochs : int
        Epochs of the MLP (Adam, learning rate 1e-3, batch 200); 0 skips it.
    mlp_hidden : int
        Width of the MLP's two hidden ReLU layers. One MLP predicts all layers' targets at once, on x and
        targets standardised with the training mean and std, in float32.
    ridge_grid : sequence of float
        Candidate ridges for ``linear``, relative to the mean diagonal of the Gram matrix of ``[x, 1]`` (the
        intercept is not penalised); the one with the least squared error on a held-out fifth of the
        training samples is refitted on all of them.
    seed : int
        Seed of the samples, the MLP's initialisation and its batches. The caller's global RNG state is
        restored afterwards.
    statistics : {"sufficient", "mean"}
        Targets: each layer's sufficient statistics ``S_l(z_l)`` (for a mixture-of-Gaussians top, z and
        z^2 per unit), or its embedded value ``layer.embed(z_l)`` (z itself, one-hot for categorical units).

    Returns
    -------
    PredictabilityResult

    Raises
    ------
    WakesleepError
        If ``model`` is not a HierarchicalModel with at least one latent layer, or on an invalid option.

    Examples
    --------
    >>> res = latent_predictability(model, 20_000, 5_000, mlp_epochs=2)  # doctest: +SKIP
    >>> print("\\n".join(res.lines()))  # doctest: +SKIP
    z2: x explains 11.5 % of S(z2) linearly, 12.3 % by an MLP
    """
    t0 = time.perf_counter()
    layers = _check(model, n, n_test, mlp_epochs, mlp_hidden, ridge_grid, statistics)
    n, n_test, mlp_epochs, mlp_hidden = int(n), int(n_test), int(mlp_epochs), int(mlp_hidden)
    device = model.device
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with torch.random.fork_rng(devices=[device.index] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        gen = torch.Generator(device=device).manual_seed(seed)
        samples = model.sample(n + n_test, generator=gen)
        x = samples[-1].reshape(n + n_test, -1)
        targets = [_targets(layer, z, statistics) for layer, z in zip(layers[:-1], samples[:-1], strict=True)]
        del samples
        linear = _ridge_fractions(x, targets, n, tuple(float(r) for r in ridge_grid))
        mlp = _mlp_fractions(x, targets, n, mlp_epochs, mlp_hidden) if mlp_epochs > 0 else [None] * len(targets)
    records = tuple(
        LayerPredictability(str(layer.name), int(y.shape[1]), lin[0], m, lin[1])
        for layer, y, lin, m in zip(layers[:-1], targets, linear, mlp, strict=True)
    )
    return PredictabilityResult(records, n, n_test, statistics, time.perf_counter() - t0)


# --- checks and sampling ---------------------------------------------------------------------------------
def _check(
    model: Any, n: Any, n_test: Any, mlp_epochs: Any, mlp_hidden: Any, ridge_grid: Any, statistics: Any
) -> list[nn.Module]:
    if not isinstance(model, HierarchicalModel):
        raise WakesleepError(f"{_FN}: the model must be a wakesleep HierarchicalModel, got {type(model).__name__}")
    layers = list(model.layers.values())
    if len(layers) < 2:
        raise WakesleepError(f"{_FN}: the model has no latent layer (only {len(layers)} layer)")
    for name, value, low in (("n", n, _MIN_SAMPLES), ("n_test", n_test, _MIN_SAMPLES), ("mlp_epochs", mlp_epochs, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise WakesleepError(f"{_FN}: {name} must be an integer >= {low}, got {value!r}")
    if isinstance(mlp_hidden, bool) or not isinstance(mlp_hidden, numbers.Integral) or mlp_hidden < 1:
        raise WakesleepError(f"{_FN}: mlp_hidden must be a positive integer, got {mlp_hidden!r}")
    try:
        grid = [float(r) for r in ridge_grid]
    except (TypeError, ValueError):
        grid = []
    if not grid or not all(math.isfinite(r) and r >= 0 for r in grid):
        raise WakesleepError(f"{_FN}: ridge_grid must be a non-empty sequence of ridges >= 0, got {ridge_grid!r}")
    if statistics not in ("sufficient", "mean"):
        raise WakesleepError(f"{_FN}: statistics must be 'sufficient' or 'mean', got {statistics!r}")
    return layers


def _targets(layer: nn.Module, z: Tensor, statistics: str) -> Tensor:
    """``[N, K]``: the layer's sufficient statistics (or embedded value) of the samples ``z``."""
    with torch.no_grad():
        if statistics == "mean":
            t = layer.embed(z)
        elif getattr(layer, "family", None) is None:  # mixture-of-Gaussians top: z and z^2
            t = torch.stack([z, z * z], dim=-1)
        else:
            t = layer.family.sufficient_statistics(z)
    return t.reshape(z.shape[0], -1)


# --- scores ------------------------------------------------------------------------------------------------
def _explained(y: Tensor, pred: Tensor) -> float:
    """Pooled held-out fraction of variance explained, ``1 - SSE / sum_d sum_i (y_id - mean_d)^2``."""
    y, pred = y.double(), pred.double()
    sst = float(((y - y.mean(0)) ** 2).sum())
    if sst <= 0.0:
        return math.nan
    return 1.0 - float(((y - pred) ** 2).sum()) / sst


def _gram(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """float64 ``[x, 1]^T [x, 1]``, ``[x, 1]^T y`` and ``sum y^2`` per column, accumulated in row blocks."""
    d, k = x.shape[1] + 1, y.shape[1]
    g = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    b = torch.zeros(d, k, dtype=torch.float64, device=x.device)
    yy = torch.zeros(k, dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], _CHUNK):
        xc = _with_one(x[i : i + _CHUNK])
        yc = y[i : i + _CHUNK].double()
        g += xc.T @ xc
        b += xc.T @ yc
        yy += (yc * yc).sum(0)
    return g, b, yy


def _with_one(x: Tensor) -> Tensor:
    x = x.double()
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


def _solve(g: Tensor, b: Tensor, ridge: float) -> Tensor:
    """``(G + ridge * mean(diag G) * I') ^-1 b``, ``I'`` the identity without the intercept's entry."""
    pen = torch.ones(g.shape[0], dtype=g.dtype, device=g.device)
    pen[-1] = 0.0
    a = g + torch.diag(pen * (ridge * float(g.diagonal().mean())))
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(b, chol)
    return torch.linalg.lstsq(a.cpu(), b.cpu(), driver="gelsd").solution.to(b.device)  # singular: min-norm


def _ridge_fractions(x: Tensor, targets: list[Tensor], n: int, grid: tuple[float, ...]) -> list[tuple[float, float]]:
    """Per layer, (held-out explained fraction, chosen ridge) of ridge regression of its targets on ``[x, 1]``.

    The ridge is chosen per layer on the last fifth of the training rows, then refitted on all of them; the
    Gram matrices are formed once for all layers.
    """
    n_fit = n - max(1, n // 5)
    y = torch.cat(targets, dim=1)
    g_fit, b_fit, _ = _gram(x[:n_fit], y[:n_fit])
    g_val, b_val, yy_val = _gram(x[n_fit:n], y[n_fit:n])
    best = [grid[0]] * len(targets)
    best_sse = [math.inf] * len(targets)
    for ridge in grid:
        w = _solve(g_fit, b_fit, ridge)
        # sum ||y - X w||^2 over the validation rows per target column, from their Gram matrices
        sse = yy_val - 2.0 * (w * b_val).sum(0) + (w * (g_val @ w)).sum(0)
        start = 0
        for i, t in enumerate(targets):
            layer_sse = float(sse[start : start + t.shape[1]].sum())
            start += t.shape[1]
            if layer_sse < best_sse[i]:
                best[i], best_sse[i] = ridge, layer_sse
    g, b = g_fit + g_val, b_fit + b_val
    out, start = [], 0
    for t, ridge in zip(targets, best, strict=True):
        k = t.shape[1]
        w = _solve(g, b[:, start : start + k], ridge)
        pred = torch.cat([_with_one(x[i : i + _CHUNK]) @ w for i in range(n, x.shape[0], _CHUNK)])
        out.append((_explained(t[n:], pred), ridge))
        start += k
    return out


def _standardise(t: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """``t`` (float32) standardised with the mean and std of its first ``n`` rows (std 0 -> 1)."""
    t = t.float()
    mean = t[:n].mean(0)
    std = t[:n].std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (t - mean) / std, mean, std


def _mlp_fractions(x: Tensor, targets: list[Tensor], n: int, epochs: int, hidden: int) -> list[float]:
    """Held-out explained fraction per layer of one MLP ``x -> hidden -> hidden -> all targets``."""
    xs, _, _ = _standardise(x, n)
    ys, y_mean, y_std = _standardise(torch.cat(targets, dim=1), n)
    net = nn.Sequential(
        nn.Linear(xs.shape[1], hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, ys.shape[1]),
    ).to(xs.device)  # initialised on the CPU generator (seeded by the caller)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batch = 200
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n).to(xs.device)
            for i in range(0, n, batch):
                idx = order[i : i + batch]
                loss = ((net(xs[idx]) - ys[idx]) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    with torch.no_grad():
        pred = torch.cat([net(xs[i : i + _CHUNK]) for i in range(n, xs.shape[0], _CHUNK)]) * y_std + y_mean
    out, start = [], 0
    for y in targets:
        k = y.shape[1]
        out.append(_explained(y[n:], pred[:, start : start + k]))
        start += k
    return out
