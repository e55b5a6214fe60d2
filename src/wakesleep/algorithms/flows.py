"""Normalising-flow layers: planar and radial flows (Rezende & Mohamed 2015; seed ``002``, "Useful fs").

A flow pushes a sample z_0 of a tractable base density q_0 through smooth invertible maps
z_K = f_K(... f_1(z_0)); by the change of variables (R&M eqs. 5-6; seed ``002``)

    log q_K(z_K) = log q_0(z_0) - sum_k log |det df_k / dz_{k-1}|.

Planar flow (R&M eqs. 10-12)::

    f(z) = z + u_hat h(w^T z + b),     h = tanh,
    psi(z) = h'(w^T z + b) w,          |det df/dz| = |1 + u_hat^T psi(z)|.

Invertibility needs ``w^T u_hat >= -1`` (R&M appendix A.1). It is enforced by the reparameterisation

    u_hat = u + [m(w^T u) - w^T u] w / |w|^2,     m(a) = -1 + softplus(a),

so ``w^T u_hat = m(w^T u) > -1`` for every raw (u, w), and ``1 + u_hat^T psi = 1 + h' m(w^T u) > 0``
(because ``0 < h' <= 1``): the log-determinant never needs an absolute value of a negative number.

Radial flow (R&M eq. 14; the seed's slide drops the factor ``(z - z_0)``)::

    f(z) = z + beta h(alpha, r) (z - z_0),     r = |z - z_0|,  h(alpha, r) = 1 / (alpha + r),
    |det df/dz| = [1 + beta h]^{d-1} [1 + beta h + beta h'(alpha, r) r],      h' = -1 / (alpha + r)^2.

Invertibility needs ``beta >= -alpha`` (R&M appendix A.2): ``alpha = softplus(a) > 0`` and
``beta = -alpha + softplus(b)`` from raw (a, b). Then ``1 + beta h >= r / (alpha + r) >= 0`` and
``1 + beta h + beta h' r = 1 + alpha beta / (alpha + r)^2 > 0``.

Parameters of one flow are packed in a vector (see :func:`flow_param_size`): planar ``[u (d), w (d), b]``,
radial ``[z_0 (d), a, b]``. A :class:`FlowCascade` holds ``length`` flows whose parameters are either
*global* (one learnt vector per flow) or *amortised* (an affine map of a context vector, e.g. recognition
features of x, as in R&M section 4.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wakesleep.errors import WakesleepError

__all__ = [
    "FLOW_TYPES",
    "flow_param_size",
    "planar_u_hat",
    "planar_flow",
    "radial_flow",
    "apply_flow",
    "initial_flow_params",
    "FlowCascade",
]

FLOW_TYPES = ("planar", "radial")
_EPS = 1e-12


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def flow_param_size(flow_type: str, dim: int) -> int:
    """Length of the raw parameter vector of one flow on ``dim`` units (planar: 2d + 1, radial: d + 2)."""
    if flow_type == "planar":
        return 2 * dim + 1
    if flow_type == "radial":
        return dim + 2
    raise WakesleepError(f"algorithm.flow_type: must be one of {', '.join(FLOW_TYPES)}, got {flow_type!r}")


def planar_u_hat(u: Tensor, w: Tensor) -> Tensor:
    """The constrained ``u_hat`` of R&M appendix A.1: ``w^T u_hat = -1 + softplus(w^T u) > -1``.

    ``u``, ``w``: ``[..., d]``; returns ``[..., d]``.
    """
    wu = (w * u).sum(-1, keepdim=True)
    m = F.softplus(wu) - 1.0
    return u + (m - wu) * w / (w * w).sum(-1, keepdim=True).clamp_min(1e-300)  # w = 0: u_hat = u


def planar_flow(z: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Planar flow, R&M eqs. 10-12, with the invertibility reparameterisation of appendix A.1.

    Parameters
    ----------
    z : Tensor
        ``[..., d]``.
    u, w : Tensor
        Raw parameters ``[..., d]`` (broadcast against ``z``); ``u`` is mapped to ``u_hat``.
    b : Tensor
        ``[...]`` (broadcast against ``z[..., 0]``).

    Returns
    -------
    f : Tensor
        ``f(z) = z + u_hat tanh(w^T z + b)``, ``[..., d]``.
    log_det : Tensor
        ``log |1 + u_hat^T psi(z)|`` with ``psi(z) = tanh'(w^T z + b) w``, ``[...]``.
    """
    u_hat = planar_u_hat(u, w)
    a = (w * z).sum(-1) + b
    t = torch.tanh(a)
    f = z + u_hat * t.unsqueeze(-1)
    # 1 + u_hat^T psi = 1 + (1 - t^2) w^T u_hat = t^2 + (1 - t^2)(1 + w^T u_hat): the second form stays accurate
    # (and positive) when w^T u_hat is close to its limit -1
    wu_hat = (w * u_hat).sum(-1)
    det = t * t + (1.0 - t * t) * (1.0 + wu_hat)
    return f, torch.log(det.abs().clamp_min(1e-300))


def radial_flow(z: Tensor, z0: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Radial flow, R&M eq. 14, with ``alpha = softplus(a)`` and ``beta = -alpha + softplus(b)`` (appendix A.2).

    Parameters
    ----------
    z, z0 : Tensor
        ``[..., d]`` (broadcast).
    a, b : Tensor
        Raw scalars per flow, ``[...]``.

    Returns
    -------
    f : Tensor
        ``z + beta h(alpha, r) (z - z0)``, ``[..., d]``.
    log_det : Tensor
        ``(d - 1) log(1 + beta h) + log(1 + beta h + beta h' r)``, ``[...]``.
    """
    d = z.shape[-1]
    alpha = F.softplus(a)
    beta = -alpha + F.softplus(b)
    diff = z - z0
    r = torch.sqrt((diff * diff).sum(-1) + _EPS * _EPS)
    h = 1.0 / (alpha + r)
    dh = -h * h
    f = z + (beta * h).unsqueeze(-1) * diff
    bh = 1.0 + beta * h
    log_det = (d - 1) * torch.log(bh.clamp_min(1e-300)) + torch.log((bh + beta * dh * r).clamp_min(1e-300))
    return f, log_det


def apply_flow(flow_type: str, z: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Apply one flow with packed raw parameters ``theta [..., P]`` to ``z [..., d]``: ``(f(z), log_det)``."""
    d = z.shape[-1]
    if flow_type == "planar":
        return planar_flow(z, theta[..., :d], theta[..., d : 2 * d], theta[..., 2 * d])
    if flow_type == "radial":
        return radial_flow(z, theta[..., :d], theta[..., d], theta[..., d + 1])
    raise WakesleepError(f"algorithm.flow_type: must be one of {', '.join(FLOW_TYPES)}, got {flow_type!r}")


def initial_flow_params(
    flow_type: str, dim: int, length: int, generator: torch.Generator | None = None, dtype=torch.float64
) -> Tensor:
    """Raw parameters ``[length, P]`` of flows that start close to the identity (but not at a saddle).

    Planar: ``w ~ N(0, 1/d)``, ``u ~ N(0, 0.1^2)``, ``b = 0`` (u = 0 exactly would make every gradient
    vanish). Radial: ``z_0 ~ N(0, 1)``, ``alpha = 1``, ``beta ~ N(0, 0.1^2)``-ish around 0.
    """
    P = flow_param_size(flow_type, dim)
    out = torch.zeros(length, P, dtype=torch.float64)
    if flow_type == "planar":
        out[:, :dim] = 0.1 * torch.randn(length, dim, generator=generator, dtype=torch.float64)
        out[:, dim : 2 * dim] = torch.randn(length, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)
    else:
        out[:, :dim] = torch.randn(length, dim, generator=generator, dtype=torch.float64)
        out[:, dim] = _inv_softplus(1.0)
        out[:, dim + 1] = _inv_softplus(1.0) + 0.1 * torch.randn(length, generator=generator, dtype=torch.float64)
    return out.to(dtype)


class FlowCascade(nn.Module):
    """``length`` planar or radial flows on ``dim`` units, global or amortised.

    Parameters
    ----------
    dim : int
        Number of units transformed.
    flow_type : {"planar", "radial"}
    length : int
        Number of flows K in the cascade (R&M eq. 13 sums their log-determinants).
    context_dim : int, optional
        ``None``: global flows (one learnt raw-parameter vector per flow). Otherwise amortised: the raw
        parameters are ``theta(c) = theta_0 + W c`` for a context vector ``c [..., context_dim]`` (W starts
        at zero, so the cascade starts as its global counterpart).
    generator : torch.Generator, optional
        For the initial parameters.
    """

    def __init__(
        self,
        dim: int,
        flow_type: str = "planar",
        length: int = 4,
        context_dim: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if flow_type not in FLOW_TYPES:
            raise WakesleepError(f"algorithm.flow_type: must be one of {', '.join(FLOW_TYPES)}, got {flow_type!r}")
        if isinstance(length, bool) or int(length) != length or length < 1:
            raise WakesleepError(f"algorithm.flow_length: must be a positive integer, got {length!r}")
        self.dim, self.flow_type, self.length = int(dim), flow_type, int(length)
        self.n_params = flow_param_size(flow_type, self.dim)
        init = initial_flow_params(flow_type, self.dim, self.length, generator, torch.get_default_dtype())
        self.theta0 = nn.Parameter(init)
        self.context_dim = None if context_dim is None else int(context_dim)
        if self.context_dim is not None:
            self.head = nn.Linear(self.context_dim, self.length * self.n_params, bias=False)
            with torch.no_grad():
                self.head.weight.zero_()
        else:
            self.head = None

    @property
    def amortized(self) -> bool:
        return self.head is not None

    def raw_params(self, context: Tensor | None = None) -> Tensor:
        """Raw parameters ``[..., length, P]`` (``[length, P]`` for global flows)."""
        if self.head is None:
            return self.theta0
        if context is None:
            raise ValueError("FlowCascade: amortised flows need a context")
        extra = self.head(context)
        return self.theta0 + extra.reshape(*extra.shape[:-1], self.length, self.n_params)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Push ``z [..., d]`` through the cascade: ``(z_K, sum_k log|det df_k/dz_{k-1}|)``, the latter ``[...]``.

        ``context [B, C]`` (amortised flows) broadcasts against ``z [k, B, d]``.
        """
        theta = self.raw_params(context)
        log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for j in range(self.length):
            z, ld = apply_flow(self.flow_type, z, theta[..., j, :])
            log_det = log_det + ld
        return z, log_det

    def extra_repr(self) -> str:
        return f"dim={self.dim}, flow_type={self.flow_type}, length={self.length}, amortized={self.amortized}"
