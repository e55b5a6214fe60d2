r"""Annealed importance sampling (AIS) estimates of ``log p(x)`` for models with real-valued latents.

Neal (2001). The chain starts at the prior and moves through the tempered posteriors

.. math::

    f_t(z) = p(z)\, p(x \mid z_1)^{\beta_t}, \qquad 0 = \beta_0 < \beta_1 < \dots < \beta_T = 1,

collecting the log-weight :math:`\sum_t (\beta_t - \beta_{t-1}) \log p(x \mid z^{(t-1)}_1)`, where
:math:`z^{(t)}` follows from :math:`z^{(t-1)}` by a Markov kernel that leaves :math:`f_t` invariant. The
average of the weights over independent chains is an unbiased estimate of ``p(x)``, so its log is a stochastic
lower bound, like the importance-sampling estimate of :mod:`wakesleep.eval.loglik`, but it needs no proposal
fitted to the posterior: for the sparse, multi-modal posteriors of the paper's eq. 13 model the Gaussian
proposal's effective sample size was 1-7 of 2000 (docs/RESULTS.md, session 5), which AIS is meant to fix.

The kernel is block-wise Hamiltonian Monte Carlo: one HMC move per latent layer (top first), each with the
other layers held fixed, so that each layer has its own step size (the paper's eq. 13 model has a top layer of
width 0.1 around its mixture means and a bottom layer whose width is set by 256 pixels). Step sizes are kept
per data point and layer and adapted between temperatures towards an acceptance rate of 0.65 (from the
acceptances of the previous temperatures only, as in Wu et al. 2017); each move is still an exact
Metropolis-corrected HMC move for its ``f_t``. (Strictly, step sizes chosen from the chains' own past make the
weights unbiased only approximately, as for any adaptive sampler; the tests against exact values bound the
effect.) The estimate is low when there are too few temperatures for a posterior much narrower than the
prior (e.g. the synthetic eq. 13 model: two pixels, small noise, where importance sampling with
:class:`~wakesleep.eval.loglik.GaussianPosteriorProposal` is the better tool); check by doubling ``temperatures``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from wakesleep.errors import WakesleepError
from wakesleep.eval._checks import check_positive_int
from wakesleep.eval._model import (
    affine_gaussian_layer,
    check_obs,
    family_name,
    layer_kind,
    layers_of,
    sample_latents,
)
from wakesleep.eval.loglik import LogLikelihoodResult

__all__ = ["AISResult", "ais_log_likelihood", "sigmoid_schedule"]

#: Target Metropolis acceptance rate of the adapted HMC step sizes.
TARGET_ACCEPTANCE = 0.65


@dataclass(frozen=True)
class AISResult(LogLikelihoodResult):
    """AIS estimates per data point, with the sampler's diagnostics.

    Attributes
    ----------
    log_px, ess, k
        As in :class:`LogLikelihoodResult`; ``k`` is the number of chains per data point and ``ess`` the
        effective sample size of the final AIS weights over the chains.
    acceptance : Tensor
        ``[B, L]`` mean HMC acceptance rate per data point and latent layer (top first), over all temperatures.
    step_size : Tensor
        ``[B, L]`` final leapfrog step sizes.
    temperatures : int
        Number of intermediate distributions ``T``.
    samples : list of Tensor or None
        With ``return_samples=True``: the chains' final states ``[z_L, ..., z_1]``, each ``[C, B, D_l]``.
    log_weights : Tensor or None
        With ``return_samples=True``: ``[C, B]`` float64 log AIS weights of those states. Normalised over the
        chains of a data point they weight the states into posterior expectations, ``E[f(z) | x] ~=
        sum_c softmax(log_weights[:, b])_c f(z_cb)`` (consistent as the chains grow, like self-normalised
        importance sampling).
    """

    acceptance: Tensor | None = None
    step_size: Tensor | None = None
    temperatures: int = 0
    samples: list[Tensor] | None = None
    log_weights: Tensor | None = None


def sigmoid_schedule(n: int, rad: float = 4.0) -> Tensor:
    """``n + 1`` inverse temperatures from 0 to 1, dense at both ends (Grosse et al. 2015).

    ``beta_t = (s(rad (2t/n - 1)) - s(-rad)) / (s(rad) - s(-rad))`` with ``s`` the logistic sigmoid.
    """
    n = check_positive_int("sigmoid_schedule", "n", n)
    t = torch.linspace(-rad, rad, n + 1, dtype=torch.float64)
    s = torch.sigmoid(t)
    beta = (s - s[0]) / (s[-1] - s[0])
    beta[0], beta[-1] = 0.0, 1.0
    return beta


def require_real_latents(model: nn.Module, fn: str) -> list[Any]:
    """The model's layers, or a one-line :class:`WakesleepError` unless every latent layer is real-valued."""
    layers = layers_of(model, fn)
    for layer in layers[:-1]:
        if layer_kind(layer) != "real":
            raise WakesleepError(
                f"{fn}: latent layer {getattr(layer, 'name', '?')} is {family_name(layer)}; AIS with HMC needs "
                "real-valued latents (use log_likelihood with a proposal, or exact enumeration, for discrete ones)"
            )
    return layers


def _betas(fn: str, temperatures: Any) -> Tensor:
    if isinstance(temperatures, bool):
        raise WakesleepError(f"{fn}: temperatures must be an int or a sequence of inverse temperatures")
    if isinstance(temperatures, int):
        return sigmoid_schedule(check_positive_int(fn, "temperatures", temperatures))
    try:
        beta = torch.as_tensor(temperatures, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise WakesleepError(f"{fn}: temperatures must be an int or a sequence of numbers ({exc})") from None
    if beta.numel() < 2 or float(beta[0]) != 0.0 or float(beta[-1]) != 1.0 or bool((beta.diff() <= 0).any()):
        raise WakesleepError(f"{fn}: a temperature schedule must increase strictly from 0 to 1")
    return beta


class _GaussianObservation:
    """``log p(x | z_1)`` of a Gaussian observation layer with mean ``W z_1 + b`` and variances ``v``, as the
    quadratic form ``-c(x)/2 + h(x).z_1 - z_1^T A z_1 / 2`` (float64), with ``A = W^T V^-1 W``,
    ``h = W^T V^-1 (x - b)``: D1^2 work per chain instead of the layer's Dx x D1 products and elementwise passes
    over ``[chains, points, Dx]`` arrays (about 10x faster on the Table 1 patch models)."""

    def __init__(self, w: Tensor, b: Tensor, v: Tensor) -> None:
        self.w, self.b, self.v = w.double(), b.double(), v.double()
        self.precision = self.w.T @ (self.w / self.v[:, None])  # A
        self.log_norm = float(torch.log(2.0 * math.pi * self.v).sum())

    def at(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(h, c)`` for observations ``x`` (``[B, Dx]``)."""
        r = x.double() - self.b
        return (r / self.v) @ self.w, (r * r / self.v).sum(-1) + self.log_norm

    def log_prob(self, z: Tensor, h: Tensor, c: Tensor) -> Tensor:
        z = z.double()
        return -0.5 * c + (z * h).sum(-1) - 0.5 * ((z @ self.precision) * z).sum(-1)


def _gaussian_observation(model: nn.Module) -> _GaussianObservation | None:
    """The quadratic form of the observation layer when it is Gaussian with a mean affine in z_1, else None."""
    layers = layers_of(model, "ais_log_likelihood")
    try:
        return _GaussianObservation(*affine_gaussian_layer(layers[-1], layers[-2], "ais_log_likelihood", rtol=1e-5))
    except WakesleepError:
        return None


class _TemperedBlocks:
    """log f_beta restricted to one latent layer: its own term and its child's (the child's weighted by beta
    when the child is the observation ``x``)."""

    def __init__(self, model: nn.Module, x: Tensor, obs: _GaussianObservation | None) -> None:
        self.layers = layers_of(model, "ais_log_likelihood")
        self.n_latent = len(self.layers) - 1
        self.obs = obs
        self.obs_terms = obs.at(x) if obs is not None else None

    def term(self, i: int, values: list[Tensor]) -> Tensor:
        """log p(v_i | v_{i-1}) with ``values = [z_L, ..., z_1, x]``."""
        layer = self.layers[i]
        if i == 0:
            return layer.log_prob(values[0])
        if i == self.n_latent and self.obs is not None:
            return self.obs.log_prob(values[i - 1], *self.obs_terms)
        return layer.log_prob(values[i], self.layers[i - 1].embed(values[i - 1]))

    def block(self, i: int, values: list[Tensor], beta: float) -> Tensor:
        child = self.term(i + 1, values)
        if i + 1 == self.n_latent:
            child = beta * child
        return self.term(i, values) + child

    def log_obs(self, values: list[Tensor]) -> Tensor:
        return self.term(self.n_latent, values)


def _hmc_block(
    target: _TemperedBlocks,
    values: list[Tensor],
    i: int,
    beta: float,
    eps: Tensor,
    leapfrog: int,
    mass: Tensor | None = None,
) -> Tensor:
    """One HMC move of ``values[i]`` (``[C, B, D]``) with per-data-point step ``eps`` (``[B]``) and diagonal
    mass ``mass`` (``[C, B, D]``, identity if None); updates ``values`` in place and returns the acceptances
    ``[C, B]``."""
    z0 = values[i].detach()
    if mass is None:
        p0 = torch.randn_like(z0)
        velocity = lambda p: p  # noqa: E731
    else:
        mass = mass.to(z0.dtype)
        p0 = torch.randn_like(z0) * mass.sqrt()
        velocity = lambda p: p / mass  # noqa: E731

    def logp_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
        z = z.detach().requires_grad_(True)
        vals = list(values)
        vals[i] = z
        with torch.enable_grad():
            lp = target.block(i, vals, beta)
            (g,) = torch.autograd.grad(lp.sum(), z)
        return lp.detach(), torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)

    step = eps.to(z0.dtype)[None, :, None]
    lp0, g = logp_and_grad(z0)
    z, p = z0, p0 + 0.5 * step * g
    for n in range(leapfrog):
        z = z + step * velocity(p)
        lp, g = logp_and_grad(z)
        p = p + (step if n < leapfrog - 1 else 0.5 * step) * g
    kinetic = (p * velocity(p)).sum(-1) - (p0 * velocity(p0)).sum(-1)
    log_ratio = (lp - lp0).to(torch.float64) - 0.5 * kinetic.to(torch.float64)
    log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
    accept = torch.log(torch.rand_like(log_ratio)) < log_ratio
    values[i] = torch.where(accept[..., None], z, z0)
    return accept.to(torch.float64)


def _block_mass(target: _TemperedBlocks, values: list[Tensor], i: int, beta: float) -> Tensor:
    """Diagonal mass of layer i's move: ``1 / Var[z_i | z_{i+1}]`` (1 for the top layer), plus
    ``beta diag(W^T V^-1 W)`` for z_1."""
    z = values[i]
    if i == 0:
        mass = torch.ones(z.shape, dtype=torch.float64, device=z.device)
    else:
        layer = target.layers[i]
        eta = layer.natural_params(target.layers[i - 1].embed(values[i - 1]))
        mass = 1.0 / layer.family.to_distribution(eta).variance.double().clamp_min(1e-30)
    if target.obs is not None and i == target.n_latent - 1:
        mass = mass + beta * target.obs.precision.diagonal()
    return mass


def ais_log_likelihood(
    model: nn.Module,
    x: Any,
    *,
    chains: int = 16,
    temperatures: int | Sequence[float] = 1000,
    leapfrog: int = 10,
    step_size: float = 0.05,
    precondition: bool = True,
    batch_size: int | None = None,
    seed: int | None = None,
    return_samples: bool = False,
) -> AISResult:
    """AIS estimate of ``log p(x)`` for every row of ``x`` (module docstring for the algorithm).

    Parameters
    ----------
    model : nn.Module
        A wakesleep :class:`HierarchicalModel` whose latent layers are real-valued (Gaussian, Laplace,
        mixture-of-Gaussians top, ...); the observation layer may be of any family.
    x : array-like
        ``[B, Dx]`` observations.
    chains : int
        Independent AIS chains per data point.
    temperatures : int or sequence of float
        ``T`` (a :func:`sigmoid_schedule` with ``T`` steps) or the inverse temperatures themselves,
        increasing from 0 to 1.
    leapfrog : int
        Leapfrog steps per HMC move.
    step_size : float
        Initial leapfrog step size (adapted per data point and layer, see the module docstring).
    precondition : bool
        Move each latent layer below the top with the diagonal mass ``1 / Var[z_l | z_{l+1}]`` at the chain's
        current parent (valid, since the parent is held fixed during the move; the top layer: 1), plus
        ``beta diag(W^T V^-1 W)`` for z_1 when the observation layer is Gaussian with a mean ``W z_1 + b``
        (the eq. 13 model). Units switched off by their parent (Laplace scales of 1e-6 in learnt patch
        models) then move on their own scale instead of forcing every unit's step down to it: without it the
        step sizes of z_1 collapsed to 1e-7 on a learnt (50, 2) patch model.
    batch_size : int, optional
        Data points run at once (default ``min(B, max(1, 8192 // chains))``); memory is proportional to
        ``batch_size * chains``.
    seed : int, optional
        If given, the global torch RNG is seeded for the call (and restored afterwards).
    return_samples : bool
        Also return the chains' final states and their log weights (posterior samples, see
        :class:`AISResult`).

    Returns
    -------
    AISResult
        ``.log_px`` (float64) per point, ``.ess`` over the chains, ``.acceptance`` and ``.step_size`` per layer
        (on the CPU); with ``return_samples``, ``.samples`` (on the model's device) and ``.log_weights``.
    """
    fn = "ais_log_likelihood"
    xt, _ = check_obs(model, x, fn)
    chains = check_positive_int(fn, "chains", chains)
    leapfrog = check_positive_int(fn, "leapfrog", leapfrog)
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size > 0:
        raise WakesleepError(f"{fn}: step_size must be a positive number, got {step_size!r}")
    beta = _betas(fn, temperatures)
    layers = require_real_latents(model, fn)
    B = xt.shape[0]
    bs = min(B, max(1, 8192 // chains)) if batch_size is None else check_positive_int(fn, "batch_size", batch_size)
    n_lat = len(layers) - 1
    log_w = torch.empty(B, chains, dtype=torch.float64)
    finals: list[list[Tensor]] = []
    acc_total = torch.zeros(B, n_lat, dtype=torch.float64)
    eps_final = torch.empty(B, n_lat, dtype=torch.float64)
    devices = [xt.device] if xt.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        obs = _gaussian_observation(model)
        for b0 in range(0, B, bs):
            xb = xt[b0 : b0 + bs]
            nb = xb.shape[0]
            target = _TemperedBlocks(model, xb, obs)
            values = [z.reshape(chains, nb, -1) for z in sample_latents(model, chains * nb)] + [xb]
            lw = torch.zeros(chains, nb, dtype=torch.float64, device=xt.device)
            eps = torch.full((n_lat, nb), float(step_size), dtype=torch.float64, device=xt.device)
            acc_sum = torch.zeros(n_lat, nb, dtype=torch.float64, device=xt.device)
            for t in range(1, beta.numel()):
                b_prev, b_now = float(beta[t - 1]), float(beta[t])
                lw += (b_now - b_prev) * torch.nan_to_num(target.log_obs(values).to(torch.float64), nan=-math.inf)
                for i in range(n_lat):
                    mass = _block_mass(target, values, i, b_now) if precondition else None
                    rate = _hmc_block(target, values, i, b_now, eps[i], leapfrog, mass).mean(0)
                    acc_sum[i] += rate
                    eps[i] *= torch.exp(0.5 * (rate - TARGET_ACCEPTANCE)).clamp(0.5, 2.0)
            log_w[b0 : b0 + nb] = lw.T.cpu()
            if return_samples:
                finals.append([v.detach() for v in values[:-1]])
            acc_total[b0 : b0 + nb] = (acc_sum / (beta.numel() - 1)).T.cpu()
            eps_final[b0 : b0 + nb] = eps.T.cpu()
    lse1 = torch.logsumexp(log_w, 1)
    lse2 = torch.logsumexp(2.0 * log_w, 1)
    return AISResult(
        log_px=lse1 - math.log(chains),
        ess=torch.exp(2.0 * lse1 - lse2),
        k=chains,
        acceptance=acc_total,
        step_size=eps_final,
        temperatures=beta.numel() - 1,
        samples=[torch.cat(zs, 1) for zs in zip(*finals, strict=True)] if return_samples else None,
        log_weights=log_w.T.contiguous() if return_samples else None,
    )
