r"""Log-likelihood: importance-sampled estimates and exact values for tractable models.

The importance-sampling estimate with proposal ``q(z | x)`` and ``K`` particles is

.. math::

    \log \hat p(x) = \log \frac{1}{K} \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k | x)}, \qquad z_k \sim q(z | x),

a stochastic lower bound in expectation (Jensen: ``E log p_hat <= log p(x)``) that converges to
``log p(x)`` as ``K -> infinity``. It is computed in chunks over data points and particles with a running
(float64) log-sum-exp, so memory does not grow with ``K``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from wakesleep.errors import WakesleepError
from wakesleep.eval._checks import check_positive_int
from wakesleep.eval._model import (
    affine_gaussian_layer,
    check_obs,
    latent_configurations,
    layer_kind,
    layers_of,
    linear_gaussian_chain,
    log_prior,
    sample_latents,
)

__all__ = [
    "GaussianPosteriorProposal",
    "LogLikelihoodResult",
    "PriorProposal",
    "log_likelihood",
    "exact_log_likelihood",
    "exact_log_likelihood_enumerate",
    "exact_log_likelihood_gaussian",
]

#: Default number of (particle, data point) pairs evaluated at once.
DEFAULT_MAX_PARTICLES = 16384


@dataclass(frozen=True)
class LogLikelihoodResult:
    """Per-data-point importance-sampling estimates.

    Attributes
    ----------
    log_px : Tensor
        ``[B]`` float64 estimates of ``log p(x_b)``.
    ess : Tensor
        ``[B]`` effective sample sizes ``(sum w)^2 / sum w^2`` of the importance weights (1 to K; small
        values flag a poor proposal and an unreliable estimate).
    k : int
        Number of particles per data point.
    """

    log_px: Tensor
    ess: Tensor
    k: int

    @property
    def mean(self) -> float:
        """Average log-likelihood per data point."""
        return float(self.log_px.mean())

    @property
    def nll(self) -> float:
        """Negative average log-likelihood (nats per data point)."""
        return -self.mean

    @property
    def sem(self) -> float:
        """Standard error of :attr:`mean` over data points."""
        n = self.log_px.numel()
        return float(self.log_px.std() / math.sqrt(n)) if n > 1 else float("nan")


class PriorProposal(nn.Module):
    """The model's prior as a proposal: ``q(z | x) = p(z)`` (ancestral sampling of the latents).

    Unbiased but high-variance for informative observations (weights are ``p(x | z_1)``); a reference point
    and a check, not a good estimator for high-dimensional data.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def sample(self, x: Tensor, k: int) -> tuple[list[Tensor], Tensor]:
        """``k`` prior samples per row of ``x``: ``zs`` each ``[k, B, D_l]``, ``log_q`` ``[k, B]``."""
        b = x.shape[0]
        zs = [z.reshape(k, b, -1) for z in sample_latents(self.model, k * b)]
        with torch.no_grad():
            lq = log_prior(self.model, zs)
        return zs, lq


class GaussianPosteriorProposal(nn.Module):
    """Proposal for models whose observation layer is Gaussian with a mean affine in a real-valued z_1.

    ``z_L, ..., z_2`` are drawn from the prior; ``z_1`` from a defensive mixture of (a) the Gaussian posterior
    of z_1 under a moment-matched Gaussian stand-in for its prior, N(m0, C0) (from ``n_prior`` prior draws):
    ``S = (C0^-1 + W^T V^-1 W)^-1``, ``m(x) = S (C0^-1 m0 + W^T V^-1 (x - b))``, with S widened by ``inflate``;
    and (b) N(m0, C0) itself, with weight ``prior_weight``. The importance weight is then
    ``p(z_1 | z_2) p(x | z_1) / q(z_1 | x)``: unbiased for p(x) whatever the true prior of z_1 (Laplace, a
    mixture, ...). It is efficient when the likelihood pins z_1 down and p(z_1 | z_2) varies little over
    z_2's prior (the upper layers are not adapted to x); the result's ESS says how well that holds. No training
    is needed, unlike :func:`fit_proposal`.

    Parameters
    ----------
    model : HierarchicalModel
        The observation layer must be Gaussian with a linear link (checked by probing).
    inflate : float
        Factor on the posterior covariance (heavier than the Gaussian approximation).
    prior_weight : float
        Mixture weight of N(m0, C0), in [0, 1).
    n_prior : int
        Prior draws for m0 and C0.
    seed : int
        Seed of those draws.
    """

    def __init__(
        self, model: nn.Module, inflate: float = 2.0, prior_weight: float = 0.1, n_prior: int = 20000, seed: int = 0
    ) -> None:
        super().__init__()
        fn = "GaussianPosteriorProposal"
        layers = layers_of(model, fn)
        if len(layers) < 2:
            raise WakesleepError(f"{fn}: the model needs at least one latent layer")
        if not 0.0 <= prior_weight < 1.0 or inflate <= 0:
            raise WakesleepError(f"{fn}: need 0 <= prior_weight < 1 and inflate > 0")
        self.model, self.prior_weight = model, float(prior_weight)
        w, b, v = affine_gaussian_layer(layers[-1], layers[-2], fn, rtol=1e-5)
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            z1 = sample_latents(model, n_prior)[-1].double()
        w, b, v = w.double(), b.double(), v.double()
        m0 = z1.mean(0)
        c0 = torch.cov(z1.T).reshape(z1.shape[1], z1.shape[1]) + 1e-9 * torch.eye(z1.shape[1], dtype=torch.float64)
        p0 = torch.linalg.inv(c0)
        s = torch.linalg.inv(p0 + w.T @ (w / v[:, None]))
        self.w, self.b, self.v, self.m0, self.s = w, b, v, m0, s
        self.prec0_m0 = p0 @ m0
        self.post = torch.distributions.MultivariateNormal(torch.zeros_like(m0), covariance_matrix=inflate * s)
        self.prior0 = torch.distributions.MultivariateNormal(m0, covariance_matrix=c0)

    def _log_q(self, z1: Tensor, mean: Tensor) -> Tensor:
        lp = self.post.log_prob(z1 - mean)
        if self.prior_weight == 0.0:
            return lp
        return torch.logaddexp(
            math.log1p(-self.prior_weight) + lp, math.log(self.prior_weight) + self.prior0.log_prob(z1)
        )

    def sample(self, x: Tensor, k: int) -> tuple[list[Tensor], Tensor]:
        """``k`` particles per row of ``x``: ``zs`` each ``[k, B, D_l]``, ``log_q`` ``[k, B]``."""
        b = x.shape[0]
        dtype = x.dtype
        with torch.no_grad():
            upper = [z.reshape(k, b, -1) for z in sample_latents(self.model, k * b)[:-1]]
            mean = (self.s @ (self.prec0_m0[:, None] + self.w.T @ ((x.double() - self.b) / self.v).T)).T  # [B, D1]
            z1 = mean + self.post.sample((k, b))
            if self.prior_weight > 0.0:
                from_prior = torch.rand(k, b, dtype=torch.float64, device=z1.device) < self.prior_weight
                z1 = torch.where(from_prior[..., None], self.prior0.sample((k, b)), z1)
            log_q = self._log_q(z1, mean)
            if upper:  # log p(z_L, ..., z_2): the upper layers are drawn from the prior
                log_q = log_q + log_prior(self.model, upper).double()
        return [*upper, z1.to(dtype)], log_q.to(dtype)


def _check_proposal_output(zs: Any, lq: Any, dims: list[int], kc: int, b: int) -> None:
    fn = "log_likelihood"
    if not isinstance(zs, list | tuple) or len(zs) != len(dims):
        raise WakesleepError(f"{fn}: proposal.sample must return {len(dims)} latent tensors [z_L, ..., z_1]")
    for i, (z, d) in enumerate(zip(zs, dims, strict=True)):
        if tuple(z.shape) != (kc, b, d):
            raise WakesleepError(
                f"{fn}: proposal returned latent {i} (top first) of shape {tuple(z.shape)}, expected {(kc, b, d)}"
            )
    if tuple(lq.shape) != (kc, b):
        raise WakesleepError(f"{fn}: proposal returned log_q of shape {tuple(lq.shape)}, expected {(kc, b)}")


def log_likelihood(
    model: nn.Module,
    x: Any,
    proposal: Any = "prior",
    k: int = 5000,
    *,
    batch_size: int | None = None,
    k_chunk: int | None = None,
    max_particles: int = DEFAULT_MAX_PARTICLES,
    seed: int | None = None,
) -> LogLikelihoodResult:
    """Importance-sampled ``log p(x)`` for every row of ``x``.

    Parameters
    ----------
    model : nn.Module
        A model with ``log_joint(x, zs)`` (broadcasting over a leading particle axis).
    x : array-like
        ``[B, Dx]`` observations.
    proposal : object or "prior"
        Anything with ``sample(x, k) -> (zs, log_q)`` (``zs = [z_L, ..., z_1]`` each ``[k, B, D_l]``,
        ``log_q`` ``[k, B]``), e.g. ``algo.proposal`` or :func:`fit_proposal`'s result; ``"prior"`` samples
        the latents from the model's prior.
    k : int
        Particles per data point.
    batch_size : int, optional
        Data points per chunk (default ``min(B, 100)``).
    k_chunk : int, optional
        Particles per chunk (default ``max(1, max_particles // batch_size)``).
    max_particles : int
        Bound on ``batch_size * k_chunk`` used for the defaults (memory is proportional to it).
    seed : int, optional
        If given, the global torch RNG is seeded for the call (and restored afterwards).

    Returns
    -------
    LogLikelihoodResult
        ``.log_px`` per point, ``.mean``, ``.nll``, ``.sem``, ``.ess``.
    """
    fn = "log_likelihood"
    xt, _ = check_obs(model, x, fn)
    k = check_positive_int(fn, "k", k)
    check_positive_int(fn, "max_particles", max_particles)
    B = xt.shape[0]
    bs = min(B, 100) if batch_size is None else check_positive_int(fn, "batch_size", batch_size)
    kc = max(1, max_particles // bs) if k_chunk is None else check_positive_int(fn, "k_chunk", k_chunk)
    kc = min(kc, k)
    if isinstance(proposal, str):
        if proposal != "prior":
            raise WakesleepError(f"{fn}: proposal must be 'prior' or an object with sample(x, k), got {proposal!r}")
        proposal = PriorProposal(model)
    elif not callable(getattr(proposal, "sample", None)):
        raise WakesleepError(f"{fn}: proposal has no sample(x, k) method")
    dims = [layer.dim for layer in layers_of(model, fn)[:-1]]

    devices = [xt.device] if xt.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        lse1 = torch.full((B,), -math.inf, dtype=torch.float64, device=xt.device)
        lse2 = lse1.clone()
        for b0 in range(0, B, bs):
            xb = xt[b0 : b0 + bs]
            nb = xb.shape[0]
            a1 = torch.full((nb,), -math.inf, dtype=torch.float64, device=xt.device)
            a2 = a1.clone()
            done = 0
            while done < k:
                n = min(kc, k - done)
                zs, lq = proposal.sample(xb, n)
                zs = list(zs)
                _check_proposal_output(zs, lq, dims, n, nb)
                lw = (model.log_joint(xb, zs) - lq).to(torch.float64)
                lw = torch.nan_to_num(lw, nan=-math.inf)
                a1 = torch.logaddexp(a1, torch.logsumexp(lw, 0))
                a2 = torch.logaddexp(a2, torch.logsumexp(2.0 * lw, 0))
                done += n
            lse1[b0 : b0 + nb] = a1
            lse2[b0 : b0 + nb] = a2
    log_px = lse1 - math.log(k)
    ess = torch.exp(2.0 * lse1 - lse2)
    return LogLikelihoodResult(log_px=log_px.cpu(), ess=ess.cpu(), k=k)


def exact_log_likelihood_enumerate(
    model: nn.Module, x: Any, *, max_configs: int = 2**20, max_particles: int = DEFAULT_MAX_PARTICLES
) -> Tensor:
    """Exact ``log p(x) = log sum_z p(x, z)`` by enumerating every latent configuration.

    For models whose latent layers are all Bernoulli (or categorical) with few units in total
    (``2^{sum D_l}`` configurations).

    Parameters
    ----------
    model : HierarchicalModel
        Model with binary/categorical latents.
    x : array-like
        ``[B, Dx]`` observations.
    max_configs : int
        Refuse (with an error) models with more configurations than this.
    max_particles : int
        Bound on ``configurations x data points`` evaluated at once.

    Returns
    -------
    Tensor
        ``[B]`` float64 exact log-likelihoods.
    """
    fn = "exact_log_likelihood_enumerate"
    xt, _ = check_obs(model, x, fn)
    configs = latent_configurations(model, fn, max_configs)
    C, B = configs[0].shape[0], xt.shape[0]
    chunk = max(1, max_particles // B)
    acc = torch.full((B,), -math.inf, dtype=torch.float64, device=xt.device)
    with torch.no_grad():
        for c0 in range(0, C, chunk):
            zs = [z[c0 : c0 + chunk, None, :] for z in configs]  # [c, 1, D_l]
            lj = model.log_joint(xt, zs).to(torch.float64)  # [c, B]
            acc = torch.logaddexp(acc, torch.logsumexp(lj, 0))
    return acc.cpu()


def _gaussian_logpdf(x: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """log N(x; mean, cov) for rows of ``x`` (float64, Cholesky)."""
    L = torch.linalg.cholesky(cov)
    diff = (x - mean).T  # [D, B]
    sol = torch.linalg.solve_triangular(L, diff, upper=False)
    maha = (sol * sol).sum(0)
    logdet = 2.0 * torch.log(torch.diagonal(L)).sum()
    return -0.5 * (maha + logdet + x.shape[1] * math.log(2 * math.pi))


def exact_log_likelihood_gaussian(model: nn.Module, x: Any) -> Tensor:
    """Exact ``log p(x)`` of a linear-Gaussian chain (Gaussian or mixture-of-Gaussians top).

    With ``z_L ~ N(mu, diag v_L)`` and ``z_l | z_{l+1} ~ N(W_l z_{l+1} + b_l, diag v_l)`` down to ``x``, the
    marginal of ``x`` is Gaussian with mean ``m_x`` and covariance ``S_x`` from the recursion
    ``m_l = W_l m_{l+1} + b_l``, ``S_l = W_l S_{l+1} W_l^T + diag v_l`` (per component for a mixture top, then
    ``log sum_c w_c N(x; m_x^c, S_x^c)``). The chain is read from the model by probing each layer's
    natural parameters, and the link is verified to be affine.

    Parameters
    ----------
    model : HierarchicalModel
        Gaussian layers with linear links; the top is ``gaussian`` or ``mog``.
    x : array-like
        ``[B, Dx]`` observations.

    Returns
    -------
    Tensor
        ``[B]`` float64 exact log-likelihoods.
    """
    fn = "exact_log_likelihood_gaussian"
    xt, _ = check_obs(model, x, fn)
    chain = linear_gaussian_chain(model, fn)
    dx = chain.dims[-1]
    x64 = xt.detach().cpu().double()
    comps = []
    for c in range(chain.top_means.shape[0]):
        mean, A = chain.joint_affine(c)
        mx, Ax = mean[-dx:], A[-dx:]
        comps.append(_gaussian_logpdf(x64, mx, Ax @ Ax.T) + float(chain.top_log_weights[c]))
    return torch.logsumexp(torch.stack(comps), 0)


def exact_log_likelihood(model: nn.Module, x: Any, **kwargs: Any) -> Tensor:
    """Exact ``log p(x)`` where tractable: enumeration for discrete latents, Gaussian marginal otherwise.

    Dispatches to :func:`exact_log_likelihood_enumerate` when every latent layer is binary/categorical and to
    :func:`exact_log_likelihood_gaussian` when the model is linear-Gaussian; raises ``WakesleepError``
    otherwise.
    """
    layers = layers_of(model, "exact_log_likelihood")
    kinds = {layer_kind(layer) for layer in layers[:-1]}
    if kinds <= {"binary", "categorical"}:
        return exact_log_likelihood_enumerate(model, x, **kwargs)
    return exact_log_likelihood_gaussian(model, x)
