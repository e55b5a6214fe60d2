"""DDC encoding functions T(z) (paper eq. 4) and random ReLU features of x (paper eq. 8)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from wakesleep.ops import linear

ENCODINGS = ("sigmoid", "tanh", "linear")
EXTRA_STATS = ("none", "linear", "quadratic", "sufficient", "sufficient_child")

# the support of each family's embedded value, and of each of its sufficient statistics (what bounds a posterior
# expectation of them); families not listed are unbounded
_SUPPORT = {"bernoulli": (0.0, 1.0), "categorical": (0.0, 1.0), "poisson": (0.0, math.inf), "gamma": (0.0, math.inf)}
_STATS_SUPPORT = {
    "bernoulli": ((0.0, 1.0),),
    "poisson": ((0.0, math.inf),),
    "laplace": ((0.0, math.inf),),  # |z|
    "gaussian": ((-math.inf, math.inf), (0.0, math.inf)),  # z, z^2
    "gamma": ((-math.inf, math.inf), (0.0, math.inf)),  # log z, z
}


def layer_statistics(layer: nn.Module) -> tuple[Callable[[Tensor], Tensor], int, list[tuple[float, float]]]:
    """The exact sufficient statistics of a latent layer for ``extra_stats: sufficient`` (eq. 4 augmented).

    Parameters
    ----------
    layer : nn.Module
        A latent layer of a :class:`~wakesleep.models.HierarchicalModel`.

    Returns
    -------
    (fn, n, support)
        ``fn(z) -> [..., n]``: S_l(z) of the layer's exponential family flattened over units and statistics
        (for a top layer without one, a mixture of Gaussians: z and z^2 per unit); ``n`` its size; and the
        (lower, upper) bounds of each of the ``n`` statistics (``inf`` where unbounded).
    """
    fam = getattr(layer, "family", None)
    dim = int(layer.dim)
    if fam is None:  # mixture-of-Gaussians top: z and z^2

        def fn(z: Tensor) -> Tensor:
            return torch.stack([z, z * z], dim=-1).flatten(-2)

        return fn, 2 * dim, [(-math.inf, math.inf), (0.0, math.inf)] * dim

    def fn(z: Tensor) -> Tensor:  # noqa: F811 - the family's S(z), [..., D, S] flattened
        return fam.sufficient_statistics(z).flatten(-2)

    n_stats = int(fam.n_stats)
    per_stat = _STATS_SUPPORT.get(fam.name, ((0.0, 1.0),) * n_stats if fam.name == "categorical" else None)
    if per_stat is None or len(per_stat) != n_stats:
        per_stat = ((-math.inf, math.inf),) * n_stats
    return fn, dim * n_stats, list(per_stat) * dim


# families whose S(z) contains the embedded value e(z) itself
_STATS_CONTAIN_EMBEDDING = ("bernoulli", "categorical", "poisson", "gaussian", "gamma")


def child_statistics(
    layer: nn.Module, child: nn.Module
) -> tuple[Callable[[Tensor], Tensor], int, list[tuple[float, float]]]:
    """S_l(z) and the functions of z_l that the child's log-density needs (``extra_stats: sufficient_child``).

    The child's log-density is S(z_{l-1}) . eta(W e(z_l) + b) - A(eta): with an affine eta (every family here)
    its first term is linear in e(z_l), so e(z_l) is added where S_l does not contain it (a Laplace layer: S = |z|);
    where the child is Gaussian with an affine link, A is quadratic in e(z_l), so the products e_i e_j (i <= j) are
    added too. Then every term of the child's gradient (eqs. 31-35) is an exact statistic of z_l.

    Returns
    -------
    (fn, n, support)
        As :func:`layer_statistics`.
    """
    fn_s, n_s, support = layer_statistics(layer)
    fam = getattr(layer, "family", None)
    embed_dim = int(layer.embed_dim)
    with_embedding = fam is not None and fam.name not in _STATS_CONTAIN_EMBEDDING  # a mixture top's S has z
    link = getattr(child, "link", None)
    quadratic = getattr(getattr(child, "family", None), "name", "") == "gaussian" and getattr(link, "is_affine", False)
    iu = torch.triu_indices(embed_dim, embed_dim)
    lo, hi = layer_support(layer)

    def fn(z: Tensor) -> Tensor:
        parts = [fn_s(z)]
        e = layer.embed(z)
        if with_embedding:
            parts.append(e)
        if quadratic:
            parts.append(e[..., iu[0].to(e.device)] * e[..., iu[1].to(e.device)])
        return torch.cat(parts, dim=-1)

    n = n_s + (embed_dim if with_embedding else 0) + (iu.shape[1] if quadratic else 0)
    support = list(support) + ([(lo, hi)] * embed_dim if with_embedding else [])
    if quadratic:
        support += [(0.0, math.inf) if i == j else (-math.inf, math.inf) for i, j in iu.T.tolist()]
    return fn, n, support


def layer_support(layer: nn.Module) -> tuple[float, float]:
    """(lower, upper) bounds of every unit of a latent layer's embedded value (``inf`` where unbounded)."""
    fam = getattr(layer, "family", None)
    return _SUPPORT.get(getattr(fam, "name", ""), (-math.inf, math.inf))


class Standardizer(nn.Module):
    """``(v - centre) / scale`` with centre and scale set once from samples (kept fixed afterwards)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("centre", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.fitted = False

    def fit(self, v: Tensor, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Set centre and scale from samples ``v [n, dim]``; ``reduce`` sums moments across data-parallel ranks."""
        v = v.detach()
        sums = torch.cat([v.new_tensor([v.shape[0]]), v.sum(0), (v * v).sum(0)])
        if reduce is not None:
            sums = reduce(sums)
        n, d = sums[0], v.shape[1]
        mean = sums[1 : 1 + d] / n
        var = (sums[1 + d :] - n * mean * mean).clamp_min(0) / (n - 1).clamp_min(1)
        s = var.sqrt()
        self.centre = mean.clone()
        self.scale = torch.where(s > 1e-8, s, torch.ones_like(s))
        self.fitted = True

    def forward(self, v: Tensor) -> Tensor:
        return (v - self.centre) / self.scale

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        if prefix + "centre" in state_dict and prefix + "scale" in state_dict:
            self.fitted = True  # a loaded standardisation stays fixed, as a fitted one does


class EncodingFunctions(nn.Module):
    """T(z) = sigma(W z_hat + b), paper eq. 4, with z_hat the latent standardised to its sleep-sample range.

    Parameters
    ----------
    dim : int
        Dimension of the (embedded) latent.
    n_features : int
        K, number of random encoding functions (ignored for ``kind="linear"``).
    kind : {"sigmoid", "tanh", "linear"}
        ``linear`` gives T(z) = z, the classic mean-field Helmholtz machine's representation (paper §5.1).
    scale : float
        W has entries N(0, scale^2 / dim) and b entries N(0, 1), so pre-activations have unit-order spread
        whatever the dimension.
    extra_stats : {"none", "linear", "quadratic", "sufficient", "sufficient_child"}
        Append z_hat (and the products z_hat_i z_hat_j, i <= j) to the random features, so that the
        gradients that need first and second moments are represented exactly; ``sufficient``: the layer's own
        sufficient statistics S_l(z) (standardised), passed to :meth:`forward` as ``stats`` (every family:
        z for Bernoulli and Poisson, (z, z^2) for Gaussian, |z| for Laplace, (log z, z) for Gamma, the
        one-hot vector for categorical).
    generator : torch.Generator, optional
        Source of the random projections.
    support : (float, float)
        Bounds of every unit of the (embedded) latent; with ``stats_support`` they give :meth:`output_bounds`.
    n_sufficient : int
        Number of sufficient statistics (``extra_stats="sufficient"``).
    stats_support : list of (float, float), optional
        Bounds of each sufficient statistic.
    """

    def __init__(
        self,
        dim: int,
        n_features: int,
        kind: str = "sigmoid",
        scale: float = 1.0,
        extra_stats: str = "none",
        generator: torch.Generator | None = None,
        support: tuple[float, float] = (-math.inf, math.inf),
        n_sufficient: int = 0,
        stats_support: list[tuple[float, float]] | None = None,
    ) -> None:
        super().__init__()
        if kind not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {kind!r}")
        if extra_stats not in EXTRA_STATS:
            raise ValueError(f"extra_stats must be one of {EXTRA_STATS}, got {extra_stats!r}")
        self.kind, self.extra_stats, self.dim = kind, extra_stats, dim
        self.standardize = Standardizer(dim)
        k = 0 if kind == "linear" else n_features
        self.register_buffer("weight", torch.randn(k, dim, generator=generator) * scale / dim**0.5)
        self.register_buffer("bias", torch.randn(k, generator=generator))
        iu = torch.triu_indices(dim, dim)
        self.register_buffer("_iu", iu)
        if extra_stats == "sufficient_child":  # S_l and the child's statistics, given as n_sufficient
            extra_stats = "sufficient"
        n_extra = {"none": 0, "linear": dim, "quadratic": dim + iu.shape[1], "sufficient": n_sufficient}[extra_stats]
        if extra_stats == "sufficient" and n_sufficient <= 0:
            raise ValueError("extra_stats 'sufficient' needs the number of sufficient statistics")
        self.n_random = k
        self.n_out = k + (dim if kind == "linear" else 0) + n_extra
        self.n_stats = n_extra + (dim if kind == "linear" else 0)  # trailing exact statistics (left unpenalised)
        self.support = (float(support[0]), float(support[1]))
        stats_support = list(stats_support or [(-math.inf, math.inf)] * n_sufficient)
        self.register_buffer("_stats_lo", torch.tensor([b[0] for b in stats_support]), persistent=False)
        self.register_buffer("_stats_hi", torch.tensor([b[1] for b in stats_support]), persistent=False)
        # standardisation of the sufficient statistics (fitted with the latent's, from the first sleep samples)
        self.stats_standardize = Standardizer(n_sufficient) if extra_stats == "sufficient" else None

    def fit_standardization(
        self, z: Tensor, stats: Tensor | None = None, reduce: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        """Fix the standardisation of the latent (and of its sufficient statistics) from sleep samples, once."""
        if not self.standardize.fitted:
            self.standardize.fit(z, reduce)
        if self.stats_standardize is not None and not self.stats_standardize.fitted:
            if stats is None:
                raise ValueError("extra_stats 'sufficient': the sufficient statistics are needed")
            self.stats_standardize.fit(stats, reduce)

    def output_bounds(self) -> tuple[Tensor, Tensor]:
        """(lower, upper) bounds of each of the ``n_out`` encoding functions, ``[n_out]`` each (``inf`` where
        unbounded), after the standardisation: what any expectation of T(z) must satisfy (eq. 2)."""
        dt = self.weight.dtype
        inf = math.inf
        parts_lo: list[Tensor] = []
        parts_hi: list[Tensor] = []
        k = self.n_random
        if self.kind != "linear":
            parts_lo.append(torch.full((k,), 0.0 if self.kind == "sigmoid" else -1.0, dtype=dt))
            parts_hi.append(torch.full((k,), 1.0, dtype=dt))
        c, s = self.standardize.centre.to(dt).cpu(), self.standardize.scale.to(dt).cpu()
        lo, hi = (torch.full_like(c, self.support[0]) - c) / s, (torch.full_like(c, self.support[1]) - c) / s
        if self.kind == "linear" or self.extra_stats in ("linear", "quadratic"):
            reps = int(self.kind == "linear") + int(self.extra_stats in ("linear", "quadratic"))
            for _ in range(reps):
                parts_lo.append(lo)
                parts_hi.append(hi)
        if self.extra_stats == "quadratic":
            i, j = self._iu[0].cpu(), self._iu[1].cpu()
            ends = torch.stack([lo[i] * lo[j], lo[i] * hi[j], hi[i] * lo[j], hi[i] * hi[j]])
            ends = torch.nan_to_num(ends, nan=inf)  # 0 * inf: unbounded
            q_lo, q_hi = ends.amin(0), ends.amax(0)
            square = i == j
            straddle = square & (lo < 0)[i] & (hi > 0)[i]
            q_lo = torch.where(straddle, torch.zeros_like(q_lo), q_lo)
            parts_lo.append(torch.where(square & ~straddle, q_lo.clamp_min(0), q_lo))
            parts_hi.append(q_hi)
        if self.stats_standardize is not None:
            sc, ss = self.stats_standardize.centre.to(dt).cpu(), self.stats_standardize.scale.to(dt).cpu()
            parts_lo.append((self._stats_lo.to(dt).cpu() - sc) / ss)
            parts_hi.append((self._stats_hi.to(dt).cpu() - sc) / ss)
        out_lo, out_hi = torch.cat(parts_lo), torch.cat(parts_hi)
        dev = self.weight.device
        return out_lo.to(dev), out_hi.to(dev)

    def forward(self, z: Tensor, stats: Tensor | None = None) -> Tensor:
        """T(z) (eq. 4, then the exact statistics) ``[..., n_out]``; ``stats``: S_l(z) for extra_stats sufficient."""
        zh = self.standardize(z)
        parts = []
        if self.kind == "linear":
            parts.append(zh)
        else:
            pre = linear(zh, self.weight, self.bias)
            parts.append(torch.sigmoid(pre) if self.kind == "sigmoid" else torch.tanh(pre))
        if self.extra_stats in ("linear", "quadratic"):
            parts.append(zh)
        if self.extra_stats == "quadratic":
            parts.append(zh[..., self._iu[0]] * zh[..., self._iu[1]])
        if self.stats_standardize is not None:
            if stats is None:
                raise ValueError("extra_stats 'sufficient': forward needs the sufficient statistics")
            parts.append(self.stats_standardize(stats))
        return torch.cat(parts, dim=-1)


class RandomReLUFeatures(nn.Module):
    """h(x) = [W x_hat + c]_+ with fixed W ~ N(0, 1 / D), c ~ N(0, 1) (paper eq. 8), optionally with inputs appended.

    ``include_input``: ``"none"`` (eq. 8), ``"linear"`` (x_hat), ``"quadratic"`` (x_hat and its pairwise
    products) or ``"message"``: the standardised output m_hat of the callable ``message(x) -> [B, message_dim]``
    (DDC-HM passes the generative model's bottom-up message, see ``DDCHelmholtzMachine``). ``"mean_field"``: x_hat
    and ``message(x)`` as it is (DDC-HM passes :meth:`~DDCHelmholtzMachine.mean_field_means`). ``"message_only"``:
    x enters only through the message, h = [[W m_hat + c]_+, m_hat] with W ~ N(0, 1 / message_dim), so that
    directions of x the message does not see (those the exact posterior ignores) cannot move the features.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        include_input: bool | str = True,
        generator: torch.Generator | None = None,
        message: Callable[[Tensor], Tensor] | None = None,
        message_dim: int = 0,
    ) -> None:
        super().__init__()
        mode = {True: "linear", False: "none"}.get(include_input, include_input)
        if mode not in ("none", "linear", "quadratic", "message", "message_only", "mean_field"):
            raise ValueError(
                "recognition input must be none, linear, quadratic, message, message_only or mean_field, "
                f"got {include_input!r}"
            )
        if mode in ("message", "message_only", "mean_field") and (message is None or message_dim <= 0):
            raise ValueError(f"recognition input {mode!r} needs a message function and its dimension")
        self.standardize = Standardizer(in_dim)
        hidden_in = message_dim if mode == "message_only" else in_dim
        self.register_buffer("weight", torch.randn(hidden, hidden_in, generator=generator) / hidden_in**0.5)
        self.register_buffer("bias", torch.randn(hidden, generator=generator))
        self.mode = mode
        self.message = message
        self.message_standardize = Standardizer(message_dim) if mode in ("message", "message_only") else None
        # pair indices of the quadratic inputs (not saved: 5 MB at 784 pixels, and a function of in_dim)
        iu = torch.triu_indices(in_dim, in_dim) if mode == "quadratic" else torch.zeros(2, 0, dtype=torch.long)
        self.register_buffer("_iu", iu, persistent=False)
        self.n_exact = {
            "none": 0,
            "linear": in_dim,
            "quadratic": in_dim + iu.shape[1],
            "message": message_dim,
            "message_only": message_dim,
            "mean_field": in_dim + message_dim,
        }[mode]
        self.n_out = hidden + self.n_exact

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        state_dict.pop(prefix + "_iu", None)  # saved by earlier versions (now recomputed, not stored)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def fit_standardization(self, x: Tensor, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Set the standardisation of x from samples once; that of the message once for ``"message"`` and at every
        call for ``"message_only"``.

        The message moves with theta (on the 784-pixel SBN its spread grew 12-19-fold over 10 epochs from the first
        phase's, docs/RESULTS.md session 16). Where it feeds the random ReLU layer (``"message_only"``), a
        standardisation fixed at the first phase leaves the layer's offsets far inside the message's range, where
        its units are nearly linear, so it is refitted to each phase's sleep samples (the running read-out
        statistics then mix recent phases' standardisations as they mix recent phases' messages). Where the message
        only enters the read-out linearly and unpenalised (``"message"``), its standardisation does not change the
        fit and stays fixed.
        """
        if not self.standardize.fitted and self.mode != "message_only":
            self.standardize.fit(x, reduce)
        if self.message_standardize is not None and (
            self.mode == "message_only" or not self.message_standardize.fitted
        ):
            self.message_standardize.fit(self.message(x), reduce)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "message_only":
            mh = self.message_standardize(self.message(x))
            return torch.cat([torch.relu(linear(mh, self.weight, self.bias)), mh], dim=-1)
        xh = self.standardize(x)
        parts = [torch.relu(linear(xh, self.weight, self.bias))]
        if self.mode in ("linear", "quadratic", "mean_field"):
            parts.append(xh)
        if self.mode == "quadratic":
            parts.append(xh[..., self._iu[0]] * xh[..., self._iu[1]])
        if self.message_standardize is not None:
            parts.append(self.message_standardize(self.message(x)))
        if self.mode == "mean_field":  # factorised posterior means in [0, 1]: read out as they are
            parts.append(self.message(x))
        return torch.cat(parts, dim=-1)
