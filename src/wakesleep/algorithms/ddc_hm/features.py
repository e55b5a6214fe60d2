"""DDC encoding functions T(z) (paper eq. 4) and random ReLU features of x (paper eq. 8)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from wakesleep.ops import linear

ENCODINGS = ("sigmoid", "tanh", "linear")
EXTRA_STATS = ("none", "linear", "quadratic")


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
    extra_stats : {"none", "linear", "quadratic"}
        Append z_hat (and the products z_hat_i z_hat_j, i <= j) to the random features, so that the
        gradients that need first and second moments are represented exactly.
    generator : torch.Generator, optional
        Source of the random projections.
    """

    def __init__(
        self,
        dim: int,
        n_features: int,
        kind: str = "sigmoid",
        scale: float = 1.0,
        extra_stats: str = "none",
        generator: torch.Generator | None = None,
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
        n_extra = {"none": 0, "linear": dim, "quadratic": dim + iu.shape[1]}[extra_stats]
        self.n_out = k + (dim if kind == "linear" else 0) + n_extra
        self.n_stats = n_extra + (dim if kind == "linear" else 0)  # trailing exact statistics (left unpenalised)

    def forward(self, z: Tensor) -> Tensor:
        zh = self.standardize(z)
        parts = []
        if self.kind == "linear":
            parts.append(zh)
        else:
            pre = linear(zh, self.weight, self.bias)
            parts.append(torch.sigmoid(pre) if self.kind == "sigmoid" else torch.tanh(pre))
        if self.extra_stats != "none":
            parts.append(zh)
        if self.extra_stats == "quadratic":
            parts.append(zh[..., self._iu[0]] * zh[..., self._iu[1]])
        return torch.cat(parts, dim=-1)


class RandomReLUFeatures(nn.Module):
    """h(x) = [W x_hat + c]_+ with fixed W ~ N(0, 1 / D), c ~ N(0, 1) (paper eq. 8), optionally with inputs appended.

    ``include_input``: ``"none"`` (eq. 8), ``"linear"`` (x_hat), ``"quadratic"`` (x_hat and its pairwise
    products) or ``"message"``: the standardised output m_hat of the callable ``message(x) -> [B, message_dim]``
    (DDC-HM passes the generative model's bottom-up message, see ``DDCHelmholtzMachine``). ``"message_only"``:
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
        if mode not in ("none", "linear", "quadratic", "message", "message_only"):
            raise ValueError(
                f"recognition input must be none, linear, quadratic, message or message_only, got {include_input!r}"
            )
        if mode in ("message", "message_only") and (message is None or message_dim <= 0):
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
        }[mode]
        self.n_out = hidden + self.n_exact

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        state_dict.pop(prefix + "_iu", None)  # saved by earlier versions (now recomputed, not stored)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def fit_standardization(self, x: Tensor, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Set the standardisation of x (and of the message) from samples, once."""
        if not self.standardize.fitted and self.mode != "message_only":
            self.standardize.fit(x, reduce)
        if self.message_standardize is not None and not self.message_standardize.fitted:
            self.message_standardize.fit(self.message(x), reduce)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "message_only":
            mh = self.message_standardize(self.message(x))
            return torch.cat([torch.relu(linear(mh, self.weight, self.bias)), mh], dim=-1)
        xh = self.standardize(x)
        parts = [torch.relu(linear(xh, self.weight, self.bias))]
        if self.mode in ("linear", "quadratic"):
            parts.append(xh)
        if self.mode == "quadratic":
            parts.append(xh[..., self._iu[0]] * xh[..., self._iu[1]])
        if self.message_standardize is not None:
            parts.append(self.message_standardize(self.message(x)))
        return torch.cat(parts, dim=-1)
