"""The exponential families of the library (diagonal, per unit)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch import distributions as D

from wakesleep.families.base import ExponentialFamily
from wakesleep.schema import option

_LOG_2PI = math.log(2 * math.pi)


class Gaussian(ExponentialFamily):
    """Gaussian with S(x) = (x, x^2), eta = (m / v, -1 / (2 v)).

    The link output is the mean ``m``; the variance ``v`` is a layer parameter (``extra["log_var"]``,
    per unit), learned or fixed.
    """

    name = "gaussian"
    n_stats = 2
    support = "real"
    reparameterizable = True

    @dataclass(frozen=True, kw_only=True)
    class Options(ExponentialFamily.Options):
        """Keys of a Gaussian layer."""

        variance: float = option(1.0, minimum=0.0, exclusive_minimum=True, doc="initial variance of every unit")
        learn_variance: bool = option(True, doc="learn the variances (false: keep them fixed)")
        mean: float = option(0.0, doc="top layer only: initial mean of every unit")

    top_only = ("learn", "mean")

    def layer_parameters(self, options: Any, dim: int) -> dict[str, tuple[Tensor, bool]]:
        return {"log_var": (torch.full((dim,), math.log(options.variance)), options.learn_variance)}

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([x, x * x], dim=-1)

    def log_normalizer(self, eta: Tensor) -> Tensor:
        e1, e2 = eta[..., 0], eta[..., 1]
        return -e1 * e1 / (4 * e2) - 0.5 * torch.log(-2 * e2)

    def log_base_measure(self, x: Tensor) -> Tensor:
        return torch.full_like(x, -0.5 * _LOG_2PI)

    def mean_parameters(self, eta: Tensor) -> Tensor:
        m, v = self.mean_variance(eta)
        return torch.stack([m, m * m + v], dim=-1)

    def log_prob(self, x: Tensor, eta: Tensor) -> Tensor:
        # the generic eta . S(x) + log h - A(eta), without materialising S(x) (a hot path; unbind, unlike
        # indexing, has a backward that does not zero-fill a tensor of eta's shape)
        e1, e2 = eta.unbind(-1)
        return e1 * x + e2 * x * x + e1 * e1 / (4 * e2) + 0.5 * torch.log(-2 * e2) - 0.5 * _LOG_2PI

    @staticmethod
    def mean_variance(eta: Tensor) -> tuple[Tensor, Tensor]:
        v = -0.5 / eta[..., 1]
        return eta[..., 0] * v, v

    def sample(self, eta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        m, v = self.mean_variance(eta)
        eps = torch.randn(m.shape, dtype=m.dtype, device=m.device, generator=generator)
        return m + v.sqrt() * eps

    def to_distribution(self, eta: Tensor) -> D.Normal:
        m, v = self.mean_variance(eta)
        return D.Normal(m, v.sqrt())

    def natural_from_param(self, param: Tensor, extra: dict[str, Tensor]) -> Tensor:
        v = torch.exp(extra["log_var"]).expand_as(param)
        return torch.stack([param / v, -0.5 / v], dim=-1)


class Laplace(ExponentialFamily):
    """Laplace with location 0 and scale b: S(x) = ``|x|``, eta = -1 / b, A = log(2 b) (paper eq. 13, z1)."""

    name = "laplace"
    n_stats = 1
    param_kind = "positive"
    support = "real"
    reparameterizable = True

    @dataclass(frozen=True, kw_only=True)
    class Options(ExponentialFamily.Options):
        """Keys of a Laplace layer."""

        scale: float = option(1.0, minimum=0.0, exclusive_minimum=True, doc="top layer only: initial scale")

    top_only = ("learn", "scale")

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return x.abs().unsqueeze(-1)

    def log_normalizer(self, eta: Tensor) -> Tensor:
        return math.log(2.0) - torch.log(-eta[..., 0])

    def mean_parameters(self, eta: Tensor) -> Tensor:
        return -1.0 / eta

    def sample(self, eta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b = -1.0 / eta[..., 0]
        # inverse CDF; |u| < 1/2 strictly, so log1p(-2|u|) stays finite (u = -1/2 has probability 2^-24 in float32)
        half = 0.5 - torch.finfo(b.dtype).eps
        u = (torch.rand(b.shape, dtype=b.dtype, device=b.device, generator=generator) - 0.5).clamp(-half, half)
        return -b * torch.sign(u) * torch.log1p(-2 * u.abs())

    def to_distribution(self, eta: Tensor) -> D.Laplace:
        b = -1.0 / eta[..., 0]
        return D.Laplace(torch.zeros_like(b), b)

    def natural_from_param(self, param: Tensor, extra: dict[str, Tensor]) -> Tensor:
        return (-1.0 / param).unsqueeze(-1)


class _BernoulliLogProbSum(torch.autograd.Function):
    """sum_d [x_d l_d - softplus(l_d)] over the last axis, with the hand-written gradient ``x - sigmoid(l)``.

    Forward: one softplus pass and one in-place multiply-add; when a backward will follow, sigmoid(l) is then
    written into the softplus buffer, and the backward turns it into ``(x - sigmoid(l)) g`` in place. So one
    ``[..., D]`` buffer serves the whole layer, against five or six freshly allocated ones for the composite
    autograd expression (fresh large buffers are what costs most on a busy machine). The backward is made of
    differentiable ops, so double backward (``create_graph=True``) works, and it recomputes sigmoid(l) when the
    buffer is gone (a second backward through a retained graph) or cannot be used in place (vmapped gradients).
    """

    # (the ctx-in-forward style: ``apply`` of the setup_context style binds arguments with ``inspect`` on every
    # call, which costs more than the arithmetic at these sizes)
    @staticmethod
    def forward(ctx, x: Tensor, logits: Tensor, will_backward: bool) -> Tensor:
        ctx.save_for_backward(x, logits)
        full = _covers(logits.shape, x.shape)  # logits have the result's shape (not broadcast)
        sp = F.softplus(logits)
        if full:
            out = sp.addcmul_(x, logits, value=-1).sum(-1).neg_()  # -(sum softplus(l) - x l), in place
        else:
            out = (x * logits).sum(-1) - sp.sum(-1)  # logits broadcast against x (e.g. shared by K particles)
        # sigmoid(l) for the backward, in the softplus buffer (kept on ctx, not saved: it is consumed in place)
        ctx.sigmoid = torch.sigmoid(logits, out=sp) if full and will_backward and ctx.needs_input_grad[1] else None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, logits = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        grad_x = (g * logits).sum_to_size(x.shape) if ctx.needs_input_grad[0] else None
        grad_l = None
        if ctx.needs_input_grad[1]:
            s, ctx.sigmoid = ctx.sigmoid, None
            if s is not None and not torch.is_grad_enabled() and not _is_batched(grad):
                grad_l = s.sub_(x).mul_(-g)  # (x - sigmoid(l)) g in the forward's buffer (-g is [..., 1])
            else:  # out of place: recorded for double backward, vmapped (is_grads_batched), or logits broadcast
                grad_l = ((x - torch.sigmoid(logits)) * g).sum_to_size(logits.shape)
        return grad_x, grad_l, None


def _covers(a: torch.Size, b: torch.Size) -> bool:
    """Whether shape ``a`` is the broadcast of shapes ``a`` and ``b`` (a cheap ``torch.broadcast_shapes`` test)."""
    if a == b:
        return True
    n = len(b)
    return len(a) >= n and all(db == 1 or db == da for da, db in zip(a[len(a) - n :], b, strict=True))


def _is_batched(t: Tensor) -> bool:
    """Whether ``t`` is a vmap batched tensor (e.g. ``autograd.grad(..., is_grads_batched=True)``), which cannot
    multiply an unbatched buffer in place; True when this PyTorch cannot tell."""
    ft = getattr(torch._C, "_functorch", None)
    checks = [getattr(ft, name, None) for name in ("is_batchedtensor", "is_legacy_batchedtensor")]
    return any(c is None or c(t) for c in checks)


def bernoulli_log_prob_sum(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x | sigmoid(logits)) summed over the last axis; ``x`` and ``logits`` broadcast."""
    return _BernoulliLogProbSum.apply(x, logits, torch.is_grad_enabled())


class Bernoulli(ExponentialFamily):
    """Bernoulli with S(x) = x, eta = logit p, A = softplus(eta)."""

    name = "bernoulli"
    support = "binary"
    support_text = "{0, 1}"

    @dataclass(frozen=True, kw_only=True)
    class Options(ExponentialFamily.Options):
        """Keys of a Bernoulli layer."""

        logit: float = option(0.0, doc="top layer only: initial logit of every unit")

    top_only = ("learn", "logit")

    def in_support(self, x: np.ndarray) -> np.ndarray:
        return (x == 0) | (x == 1)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return x.unsqueeze(-1)

    def log_normalizer(self, eta: Tensor) -> Tensor:
        return F.softplus(eta[..., 0])

    def mean_parameters(self, eta: Tensor) -> Tensor:
        return torch.sigmoid(eta)

    def log_prob(self, x: Tensor, eta: Tensor) -> Tensor:
        # x eta - softplus(eta): the generic formula without materialising S(x) (a hot path; squeeze is a view
        # whose backward, unlike indexing's, does not zero-fill a tensor of eta's shape)
        e = eta.squeeze(-1)
        return x * e - F.softplus(e)

    def log_prob_sum(self, x: Tensor, eta: Tensor) -> Tensor:
        return bernoulli_log_prob_sum(x, eta.squeeze(-1))

    def sample(self, eta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        p = torch.sigmoid(eta[..., 0].detach())  # (detached: samples carry no gradient, as before)
        # u < p written into u's buffer as 0./1. (no boolean tensor and no dtype conversion)
        return torch.rand(p.shape, dtype=p.dtype, device=p.device, generator=generator).lt_(p)

    def to_distribution(self, eta: Tensor) -> D.Bernoulli:
        return D.Bernoulli(logits=eta[..., 0])

    def natural_from_param(self, param: Tensor, extra: dict[str, Tensor]) -> Tensor:
        return param.unsqueeze(-1)


class Poisson(ExponentialFamily):
    """Poisson with S(x) = x, eta = log rate, A = exp(eta), log h = -log x!. The link output is the rate."""

    name = "poisson"
    param_kind = "positive"
    support = "count"
    support_text = "non-negative integers"

    @dataclass(frozen=True, kw_only=True)
    class Options(ExponentialFamily.Options):
        """Keys of a Poisson layer."""

        rate: float = option(1.0, minimum=0.0, exclusive_minimum=True, doc="top layer only: initial rate of every unit")

    top_only = ("learn", "rate")

    def in_support(self, x: np.ndarray) -> np.ndarray:
        return _is_integer(x) & (x >= 0)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return x.unsqueeze(-1)

    def log_normalizer(self, eta: Tensor) -> Tensor:
        return torch.exp(eta[..., 0])

    def log_base_measure(self, x: Tensor) -> Tensor:
        return -torch.lgamma(x + 1)

    def mean_parameters(self, eta: Tensor) -> Tensor:
        return torch.exp(eta)

    def sample(self, eta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.poisson(torch.exp(eta[..., 0]), generator=generator)

    def to_distribution(self, eta: Tensor) -> D.Poisson:
        return D.Poisson(torch.exp(eta[..., 0]))

    def natural_from_param(self, param: Tensor, extra: dict[str, Tensor]) -> Tensor:
        return torch.log(param).unsqueeze(-1)


class Gamma(ExponentialFamily):
    """Gamma(shape a, rate b): S(x) = (log x, x), eta = (a - 1, -b), A = lgamma(a) - a log b.

    The link output is the mean m; the shape ``a`` is a layer parameter (``extra["log_shape"]``) and
    b = a / m (the parameterisation of deep exponential families).
    """

    name = "gamma"
    n_stats = 2
    param_kind = "positive"
    support = "positive"
    support_text = "positive real numbers"
    reparameterizable = True

    @dataclass(frozen=True, kw_only=True)
    class Options(ExponentialFamily.Options):
        """Keys of a Gamma layer."""

        shape: float = option(1.0, minimum=0.0, exclusive_minimum=True, doc="initial shape of every unit")
        learn_shape: bool = option(True, doc="learn the shapes (false: keep them fixed)")
        mean: float = option(1.0, minimum=0.0, exclusive_minimum=True, doc="top layer only: initial mean of every unit")

    top_only = ("learn", "mean")

    def layer_parameters(self, options: Any, dim: int) -> dict[str, tuple[Tensor, bool]]:
        return {"log_shape": (torch.full((dim,), math.log(options.shape)), options.learn_shape)}

    def in_support(self, x: np.ndarray) -> np.ndarray:
        return np.isfinite(x) & (x > 0)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([torch.log(x), x], dim=-1)

    def log_normalizer(self, eta: Tensor) -> Tensor:
        a = eta[..., 0] + 1
        return torch.lgamma(a) - a * torch.log(-eta[..., 1])

    def mean_parameters(self, eta: Tensor) -> Tensor:
        a, b = eta[..., 0] + 1, -eta[..., 1]
        return torch.stack([torch.digamma(a) - torch.log(b), a / b], dim=-1)

    def sample(self, eta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.to_distribution(eta).sample()

    def to_distribution(self, eta: Tensor) -> D.Gamma:
        return D.Gamma(eta[..., 0] + 1, -eta[..., 1])

    def natural_from_param(self, param: Tensor, extra: dict[str, Tensor]) -> Tensor:
        a = torch.exp(extra["log_shape"]).expand_as(param)
        return torch.stack([a - 1, -a / param], dim=-1)


class Categorical(ExponentialFamily):
    """Categorical over ``categories`` values per unit: S(x) = one-hot(x), eta = logits, A = logsumexp.

    Values are integer codes stored as floats, shape ``[..., D]``; :meth:`embed` gives the flattened
    one-hot vector ``[..., D * categories]`` used by encoders.
    """

    name = "categorical"
    support = "categorical"

    @dataclass(frozen=True, kw_only=True)
    class Options(ExponentialFamily.Options):
        """Keys of a categorical layer."""

        categories: int = option(minimum=1, doc="number of values of every unit (required)")

    def __init__(self, categories: int) -> None:
        self.categories = int(categories)
        self.n_stats = self.categories
        self.param_size = self.categories

    @classmethod
    def from_options(cls, options: Any) -> Categorical:
        return cls(options.categories)

    @property
    def support_text(self) -> str:
        return f"integers 0 to {self.categories - 1}"

    def in_support(self, x: np.ndarray) -> np.ndarray:
        return _is_integer(x) & (x >= 0) & (x < self.categories)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return F.one_hot(x.long(), self.categories).to(x.dtype if x.is_floating_point() else torch.float32)

    def log_normalizer(self, eta: Tensor) -> Tensor:
        return torch.logsumexp(eta, dim=-1)

    def mean_parameters(self, eta: Tensor) -> Tensor:
        return torch.softmax(eta, dim=-1)

    def sample(self, eta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        flat = torch.softmax(eta, -1).reshape(-1, self.categories)
        idx = torch.multinomial(flat, 1, generator=generator).reshape(eta.shape[:-1])
        return idx.to(eta.dtype)

    def to_distribution(self, eta: Tensor) -> D.Categorical:
        return D.Categorical(logits=eta)

    def natural_from_param(self, param: Tensor, extra: dict[str, Tensor]) -> Tensor:
        return param.reshape(*param.shape[:-1], -1, self.categories)

    def embed(self, x: Tensor) -> Tensor:
        oh = self.sufficient_statistics(x)
        return oh.reshape(*oh.shape[:-2], -1)

    def embed_dim(self, dim: int) -> int:
        return dim * self.categories

    def __repr__(self) -> str:
        return f"Categorical(categories={self.categories})"


def _is_integer(x: np.ndarray) -> np.ndarray:
    """Boolean mask of the finite integer values of ``x`` (any NumPy number array)."""
    if x.dtype.kind in "iub":
        return np.ones(x.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & (np.floor(x) == x)
