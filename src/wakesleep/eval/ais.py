r"""Annealed importance sampling (AIS) estimates of ``log p(x)`` for models with real-valued latents and for
sigmoid belief networks.

Neal (2001). The chain starts at the prior and moves through the tempered posteriors

.. math::

    f_t(z) = p(z)\, p(x \mid z_1)^{\beta_t}, \qquad 0 = \beta_0 < \beta_1 < \dots < \beta_T = 1,

collecting the log-weight :math:`\sum_t (\beta_t - \beta_{t-1}) \log p(x \mid z^{(t-1)}_1)`, where
:math:`z^{(t)}` follows from :math:`z^{(t-1)}` by a Markov kernel that leaves :math:`f_t` invariant. The
average of the weights over independent chains is an unbiased estimate of ``p(x)``, so its log is a stochastic
lower bound, like the importance-sampling estimate of :mod:`wakesleep.eval.loglik`, but it needs no proposal
fitted to the posterior: for the sparse, multi-modal posteriors of the paper's eq. 13 model the Gaussian
proposal's effective sample size was 1-7 of 2000 (docs/RESULTS.md, session 5), which AIS is meant to fix.

**Real-valued latents: block HMC.** The kernel is block-wise Hamiltonian Monte Carlo: one HMC move per latent
layer (top first), each with the other layers held fixed, so that each layer has its own step size (the paper's
eq. 13 model has a top layer of width 0.1 around its mixture means and a bottom layer whose width is set by 256
pixels). Step sizes are kept per data point and layer and adapted between temperatures towards an acceptance
rate of 0.65 (from the acceptances of the previous temperatures only, as in Wu et al. 2017); each move is still
an exact Metropolis-corrected HMC move for its ``f_t``. (Strictly, step sizes chosen from the chains' own past
make the weights unbiased only approximately, as for any adaptive sampler; the tests against exact values bound
the effect.) The estimate is low when there are too few temperatures for a posterior much narrower than the
prior (e.g. the synthetic eq. 13 model: two pixels, small noise, where importance sampling with
:class:`~wakesleep.eval.loglik.GaussianPosteriorProposal` is the better tool); check by doubling ``temperatures``.

**Binary latents: single-site Gibbs.** For a sigmoid belief network (every latent layer Bernoulli, every
conditional layer a :class:`~wakesleep.models.links.LinearLink` without softplus, the observation layer
Bernoulli or Gaussian) the kernel at each temperature is one systematic-scan Gibbs sweep: layer by layer, top
first, every unit ``z_lj`` in turn is drawn from its exact conditional under ``f_t``, whose log-odds are its
prior logit (the parent's pre-activation, or the top layer's logits) plus
``log p(c | z_lj = 1) - log p(c | z_lj = 0)`` for its child ``c`` (the layer below; for ``z_1`` the observation
``x``, whose term is multiplied by ``beta_t``). Each draw leaves ``f_t`` invariant, so the sweep does too, and
no step size is involved. For a Bernoulli child with pre-activations ``u`` at the current state,
``s = 1 - 2 z_lj`` and ``p = sigmoid(u)``, ``q = sigmoid(-u)``, flipping the unit changes
``log p(c | .)`` by ``s c.W_j - sum_k log(q_k + p_k exp(s W_kj))``: each factor lies between
``exp(-|W_kj|)`` and ``exp(|W_kj|)``, so they are multiplied in groups of up to 16 (fewer when the weights are
large) before one logarithm per group, and after a flip ``p`` and ``q`` of the flipped rows are updated by
``p exp(s W_j) / factor`` and ``q / factor`` (``O(D_child)`` per row and unit, no forward pass). Pre-activations
and ``p, q`` are recomputed from scratch once per layer and sweep, so rounding does not accumulate. A Gaussian
observation layer with a linear mean enters through its quadratic form ``h.z_1 - z_1^T A z_1 / 2`` (as with HMC),
so a flip changes it by ``s (h_j - (A z_1)_j) - A_jj / 2``. The chains of a batch of data points are
swept together, as ``chains x points`` rows. ``AISResult.acceptance`` is then the fraction of the layer's units
that changed value per sweep (averaged over the chains and temperatures), and ``AISResult.step_size`` is NaN.
Models mixing binary and real-valued latent layers, categorical or count latents, and MLP or softplus links
under binary latents are refused (:func:`ais_kernel`).

References
----------
Neal, R. M. (2001). Annealed importance sampling. Statistics and Computing, 11(2), 125-139.

Grosse, R. B., Ghahramani, Z. and Adams, R. P. (2015). Sandwiching the marginal likelihood using bidirectional
Monte Carlo. arXiv:1511.02543 (the sigmoid schedule).

Wu, Y., Burda, Y., Salakhutdinov, R. and Grosse, R. (2017). On the quantitative analysis of decoder-based
generative models. ICLR (adapted HMC step sizes in AIS).
"""

from __future__ import annotations

import math
import warnings
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
from wakesleep.models.links import LinearLink, MLPLink

__all__ = ["AISResult", "ais_kernel", "ais_log_likelihood", "sigmoid_schedule"]

#: Target Metropolis acceptance rate of the adapted HMC step sizes.
TARGET_ACCEPTANCE = 0.65
#: Gibbs sweeps: at most this many factors ``q + p exp(s W)`` are multiplied before taking one logarithm.
GIBBS_GROUP = 16
#: Gibbs sweeps: default bound on rows (chains x data points) x widest Bernoulli child swept at once.
GIBBS_ELEMENTS = 2**20


@dataclass(frozen=True)
class AISResult(LogLikelihoodResult):
    """AIS estimates per data point, with the sampler's diagnostics.

    Attributes
    ----------
    log_px, ess, k
        As in :class:`LogLikelihoodResult`; ``k`` is the number of chains per data point and ``ess`` the
        effective sample size of the final AIS weights over the chains.
    acceptance : Tensor
        ``[B, L]`` per data point and latent layer (top first), averaged over the chains and temperatures: with
        HMC the Metropolis acceptance rate, with Gibbs sweeps (binary latents) the fraction of the layer's units
        that changed value per sweep.
    step_size : Tensor
        ``[B, L]`` final leapfrog step sizes (NaN with Gibbs sweeps, which have none).
    temperatures : int
        Number of intermediate distributions ``T``.
    samples : list of Tensor or None
        With ``return_samples=True``: the chains' final states ``[z_L, ..., z_1]``, each ``[C, B, D_l]``.
    log_weights : Tensor or None
        With ``return_samples=True``: ``[C, B]`` float64 log AIS weights of those states. Normalised over the
        chains of a data point they weight the states into posterior expectations, ``E[f(z) | x] ~=
        sum_c softmax(log_weights[:, b])_c f(z_cb)`` (consistent as the chains grow, like self-normalised
        importance sampling).
    kernel : str
        ``"hmc"`` (real-valued latents) or ``"gibbs"`` (sigmoid belief networks), see :func:`ais_kernel`.
    """

    acceptance: Tensor | None = None
    step_size: Tensor | None = None
    temperatures: int = 0
    samples: list[Tensor] | None = None
    log_weights: Tensor | None = None
    kernel: str = "hmc"


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


def _link_name(link: Any) -> str:
    if type(link) is LinearLink:
        return "softplus_linear" if link.softplus else "linear"
    if isinstance(link, MLPLink):
        return "mlp"
    return type(link).__name__


def ais_kernel(model: nn.Module, fn: str = "ais_log_likelihood") -> str:
    """The AIS transition kernel for a model, or a one-line :class:`WakesleepError` naming what is unsupported.

    Parameters
    ----------
    model : nn.Module
        A wakesleep :class:`HierarchicalModel`.
    fn : str
        Name prefixed to the error message.

    Returns
    -------
    str
        ``"hmc"`` when every latent layer is real-valued (any observation family); ``"gibbs"`` for a sigmoid
        belief network: every latent layer Bernoulli, every conditional layer a linear link ``W z + b`` (no
        softplus, no MLP), the observation layer Bernoulli or Gaussian.
    """
    layers = layers_of(model, fn)
    latents, obs = layers[:-1], layers[-1]
    kinds = [layer_kind(layer) for layer in latents]
    if all(kind == "real" for kind in kinds):
        return "hmc"
    for layer, kind in zip(latents, kinds, strict=True):
        if kind != "real" and family_name(layer) != "bernoulli":
            raise WakesleepError(
                f"{fn}: latent layer {layer.name} is {family_name(layer)}; AIS supports real-valued latents (HMC) "
                "or bernoulli latents with linear links (Gibbs sweeps)"
            )
    if any(kind == "real" for kind in kinds):
        binary = ", ".join(layer.name for layer, kind in zip(latents, kinds, strict=True) if kind != "real")
        real = ", ".join(layer.name for layer, kind in zip(latents, kinds, strict=True) if kind == "real")
        raise WakesleepError(
            f"{fn}: latent layers mix bernoulli ({binary}) and real-valued ({real}) families; AIS needs all latents "
            "real-valued (HMC) or all bernoulli (Gibbs sweeps)"
        )
    if family_name(obs) not in ("bernoulli", "gaussian"):
        raise WakesleepError(
            f"{fn}: observation layer {obs.name} is {family_name(obs)}; AIS with bernoulli latents supports "
            "bernoulli or gaussian observations"
        )
    for layer in layers[1:]:
        link = getattr(layer, "link", None)
        if type(link) is not LinearLink or link.softplus:
            raise WakesleepError(
                f"{fn}: layer {layer.name} has a {_link_name(link)} link; AIS with bernoulli latents (Gibbs sweeps) "
                "needs linear links (W z + b, no softplus)"
            )
    return "gibbs"


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


class _BernoulliChain:
    """A sigmoid belief network's parameters, prepared for Gibbs sweeps (see the module docstring).

    ``w[l], b[l]`` are layer ``l``'s link weight ``[D_l, D_{l-1}]`` and bias (layers top first, 1..L; ``w[0]`` is
    None). For each latent layer ``l`` whose child is Bernoulli, ``ew[l], ewn[l]`` are the ``D_l`` contiguous
    vectors ``exp(+-W[:, j])`` of ``W = w[l + 1]``, and ``group[l]`` the number of factors multiplied per
    logarithm: the largest power of two up to :data:`GIBBS_GROUP` that divides ``D_{l+1}`` and keeps every
    product within ``exp(+-64)`` (float32; ``exp(+-512)`` in float64), bounded by the sums of ``|W_kj|`` over its
    factors. ``gauss`` is the quadratic form of a Gaussian observation layer (else None). Arithmetic is in
    ``dtype``: the model's, or float64 for a float32 model with a child weight above 64 in magnitude (``exp(W)``
    would overflow).
    """

    def __init__(self, layers: list[Any], dtype: torch.dtype) -> None:
        self.n_latent = len(layers) - 1
        self.dims = [int(layer.dim) for layer in layers]
        with torch.no_grad():
            weights = [None] + [layer.link.weight.detach() for layer in layers[1:]]
            biases = [None] + [
                layer.link.bias.detach() if layer.link.bias is not None else torch.zeros_like(w[:, 0])
                for layer, w in zip(layers[1:], weights[1:], strict=True)
            ]
            gaussian_obs = family_name(layers[-1]) == "gaussian"
            children = range(1, self.n_latent + (0 if gaussian_obs else 1))  # layers with a bernoulli family
            w_max = max((float(weights[c].abs().max()) for c in children), default=0.0)
            wide = dtype == torch.float64 or w_max > 64.0
            self.dtype = torch.float64 if wide else torch.float32
            limit = 512.0 if self.dtype == torch.float64 else 64.0  # bound on |log| of a product of factors
            self.w = [None if w is None else w.to(self.dtype) for w in weights]
            self.b = [None if b is None else b.to(self.dtype) for b in biases]
            self.top_logits = layers[0].natural_params(None)[..., 0].detach().to(self.dtype)
            self.ew: dict[int, tuple[Tensor, ...]] = {}
            self.ewn: dict[int, tuple[Tensor, ...]] = {}
            self.group: dict[int, int] = {}
            for c in children:
                w = self.w[c]
                self.ew[c - 1] = torch.exp(w).T.contiguous().unbind(0)
                self.ewn[c - 1] = torch.exp(-w).T.contiguous().unbind(0)
                m, d, aw = 1, w.shape[0], w.abs().double()
                # the tree multiplies columns k, k + d/m, k + 2 d/m, ... of a row
                while (
                    2 * m <= GIBBS_GROUP and d % (2 * m) == 0 and aw.view(2 * m, -1, w.shape[1]).sum(0).max() <= limit
                ):
                    m *= 2
                self.group[c - 1] = m
            self.gauss = None
            if gaussian_obs:
                obs = layers[-1]
                var = obs.extras()["log_var"].detach().exp().expand(obs.dim)
                self.gauss = _GaussianObservation(weights[-1], biases[-1], var)


class _ChildBuffers:
    """Scratch arrays of the sweeps over a Bernoulli child's parent, ``R`` rows by ``Dc`` child units: ``u`` (the
    child's pre-activations), ``pq`` (``sigmoid(u)`` and ``sigmoid(-u)``, ``[R, 2, Dc]``), ``f`` (``exp(s W_j)``,
    then the factors), ``gathered`` and ``multipliers`` (for the flipped rows), the product tree (``(left, right,
    out)`` views, ``out = left * right``), the logs and their row sums. Allocated once per batch: fresh blocks of
    a few MB cost a page fault per 4 KiB page (see :mod:`wakesleep.runtime`)."""

    def __init__(self, rows: int, width: int, group: int, dtype: torch.dtype, device: torch.device) -> None:
        self.u, self.f, self.gathered = (torch.empty(rows, width, dtype=dtype, device=device) for _ in range(3))
        self.pq, self.multipliers = (torch.empty(rows, 2, width, dtype=dtype, device=device) for _ in range(2))
        self.p, self.q = self.pq[:, 0], self.pq[:, 1]
        self.tree = []
        g = self.f
        while group > 1:
            width, group = width // 2, group // 2
            out = torch.empty(rows, width, dtype=dtype, device=device)
            self.tree.append((g[:, :width], g[:, width:], out))
            g = out
        self.products = g
        self.logs = torch.empty(rows, width, dtype=dtype, device=device)
        self.lsum = torch.empty(rows, dtype=dtype, device=device)


def _sweep_bernoulli_child(
    z: Tensor, thr: Tensor, ew: Sequence[Tensor], ewn: Sequence[Tensor], buf: _ChildBuffers, flip: Tensor
) -> None:
    """Gibbs-update every unit of a layer whose child is Bernoulli with pre-activations ``buf.u`` (``[R, Dc]``,
    overwritten).

    ``z`` is the layer ``[D, R]`` (read only: its flips go to ``flip``, ``[D, R]`` bool); unit ``j`` flips in row
    ``r`` iff ``sum_k log(q_k + p_k exp(s W_kj)) < thr[j, r]``, with ``thr`` folding in the prior logits, the
    child's ``s c.W_j``, the temperature and the logistic noise of the draw. ``ew[j], ewn[j]`` are
    ``exp(+-W[:, j])``.
    """
    p, q, f = buf.p, buf.q, buf.f
    torch.sigmoid(buf.u, out=p)
    torch.sigmoid(buf.u.neg_(), out=q)
    units = zip(z.unsqueeze(-1).unbind(0), thr.unbind(0), flip.unbind(0), ew, ewn, strict=True)
    for zj, thr_j, flip_j, ew_j, ewn_j in units:
        torch.lerp(ew_j, ewn_j, zj, out=f)  # exp(s W_kj): exactly exp(W_kj) where z_j = 0, exp(-W_kj) where 1
        torch.addcmul(q, p, f, out=f)  # exp(softplus(u + s W_j) - softplus(u)), in [exp(-|W|), exp(|W|)]
        for left, right, out in buf.tree:  # products of groups of factors, then one log per group
            torch.mul(left, right, out=out)
        torch.sum(torch.log(buf.products, out=buf.logs), 1, out=buf.lsum)
        torch.lt(buf.lsum, thr_j, out=flip_j)
        idx = flip_j.nonzero().squeeze(1)
        if n := idx.numel():  # flipped rows: p <- p exp(s W_j) / f = sigmoid(u + s W_j), q <- q / f
            m = buf.multipliers[:n]
            torch.reciprocal(torch.index_select(f, 0, idx, out=buf.gathered[:n]), out=m[:, 1])
            torch.lerp(ew_j, ewn_j, zj.index_select(0, idx), out=m[:, 0]).mul_(m[:, 1])
            buf.pq.index_reduce_(0, idx, m, "prod")


def _sweep_gaussian_child(
    z: Tensor, s: Tensor, prior: Tensor, h: Tensor, precision: Tensor, beta: float, noise: Tensor, flip: Tensor
) -> None:
    """Gibbs-update ``z_1`` (``[D1, R]``) under a Gaussian observation with ``log p(x | z_1) = h.z_1 -
    z_1^T A z_1 / 2 + const``: flipping unit j changes it by ``s (h_j - (A z_1)_j) - A_jj / 2``."""
    az = precision @ z  # [D1, R], updated as units flip
    base = s * (prior + beta * h) - noise - (0.5 * beta) * precision.diagonal()[:, None]
    for j in range(z.shape[0]):
        torch.lt((beta * s[j]) * az[j], base[j], out=flip[j])
        az.addr_(precision[:, j], s[j] * flip[j])


def _gibbs_batch(
    chain: _BernoulliChain, model: nn.Module, xb: Tensor, chains: int, beta: Tensor
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """AIS with Gibbs sweeps for the rows ``xb`` (``[nb, Dx]``): log weights ``[C, nb]`` (float64), fraction of
    units changed per sweep ``[L, nb]`` and the final states ``[z_L, ..., z_1]`` (each ``[C, nb, D_l]``, model
    dtype). Every array of the loop is allocated here, once."""
    nb, dev, dt = xb.shape[0], xb.device, chain.dtype
    rows, n_lat, dims = chains * nb, chain.n_latent, chain.dims
    zs = [z.to(dt).T.contiguous() for z in sample_latents(model, rows)]  # [D_l, R]; row c * nb + b: chain c, x_b
    xr = xb.to(dt).repeat(chains, 1)
    gauss = chain.gauss
    if gauss is None:
        w_x, b_x = chain.w[-1], chain.b[-1]
        cw_x = (xr @ w_x).T.contiguous()  # [D1, R]: x.W_j, the child's own term of z_1's units
    else:
        h64, c64 = gauss.at(xr)
        h_t, precision = h64.to(dt).T.contiguous(), gauss.precision.to(dt)
    bufs = {l: _ChildBuffers(rows, dims[l + 1], chain.group[l], dt, dev) for l in chain.group}
    flips = [torch.empty(d, rows, dtype=torch.bool, device=dev) for d in dims[:-1]]
    s, prior, thr, noise, cw, flipf = (
        [torch.empty(d, rows, dtype=dt, device=dev) for d in dims[:-1]] for _ in range(6)
    )
    noise64 = [torch.empty(d, rows, dtype=torch.float64, device=dev) for d in dims[:-1]]
    changed = torch.zeros(n_lat, rows, dtype=torch.float64, device=dev)
    lw = torch.zeros(rows, dtype=torch.float64, device=dev)
    for t in range(1, beta.numel()):
        b_prev, b_now = float(beta[t - 1]), float(beta[t])
        z1 = zs[-1].T
        if gauss is None:  # log p(x | z_1) = sum x u - softplus(u), softplus(u) = max(u, 0) + log1p(exp(-|u|))
            xbuf = bufs[n_lat - 1]
            u_x, sp, tmp = xbuf.u, xbuf.f, xbuf.gathered
            torch.addmm(b_x, z1, w_x.T, out=u_x)
            torch.abs(u_x, out=tmp).neg_().exp_().log1p_()
            torch.clamp(u_x, min=0.0, out=sp).add_(tmp)
            log_obs = torch.addcmul(sp, xr, u_x, value=-1.0, out=sp).sum(-1).double().neg_()
        else:
            log_obs = gauss.log_prob(z1, h64, c64)
        lw += (b_now - b_prev) * torch.nan_to_num(log_obs, nan=-math.inf)
        for l in range(n_lat):
            z = zs[l]
            torch.mul(z, -2.0, out=s[l]).add_(1.0)  # s = 1 - 2 z: +1 where a flip is 0 -> 1
            if l == 0:
                prior[l].copy_(chain.top_logits[:, None].expand_as(z))
            else:
                torch.addmm(chain.b[l][:, None], chain.w[l], zs[l - 1], out=prior[l])
            # logistic noise, drawn in float64: the unit flips iff noise < its flip log-odds
            noise[l].copy_(torch.rand(z.shape, dtype=torch.float64, device=dev, out=noise64[l]).logit_())
            if l < n_lat - 1 or gauss is None:
                if l < n_lat - 1:  # child z_{l+1}: its pre-activations and c.W_j, from scratch
                    w_c = chain.w[l + 1]
                    torch.addmm(chain.b[l + 1], z.T, w_c.T, out=bufs[l].u)
                    child_term, scale = torch.mm(w_c.T, zs[l + 1], out=cw[l]), 1.0
                else:  # child x, weighted by beta (u_x above is still that of the current z_1)
                    child_term, scale = cw_x, b_now
                torch.add(prior[l], child_term, alpha=scale, out=thr[l]).mul_(s[l]).sub_(noise[l]).div_(scale)
                _sweep_bernoulli_child(z, thr[l], chain.ew[l], chain.ewn[l], bufs[l], flips[l])
            else:
                _sweep_gaussian_child(z, s[l], prior[l], h_t, precision, b_now, noise[l], flips[l])
            z.addcmul_(s[l], flipf[l].copy_(flips[l]))  # z + s * flip: 0 <-> 1
            changed[l] += flipf[l].sum(0)
    finals = [z.T.reshape(chains, nb, -1).to(xb.dtype) for z in zs]
    sweeps = (beta.numel() - 1) * torch.tensor(dims[:-1], dtype=torch.float64, device=dev)
    per_unit = changed / sweeps[:, None]
    return lw.view(chains, nb), per_unit.view(n_lat, chains, nb).mean(1), finals


def _hmc_batch(
    model: nn.Module,
    xb: Tensor,
    obs: _GaussianObservation | None,
    chains: int,
    beta: Tensor,
    leapfrog: int,
    step_size: float,
    precondition: bool,
) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """AIS with block HMC for the rows ``xb``: log weights ``[C, nb]``, mean acceptances and final step sizes
    ``[L, nb]``, final states (each ``[C, nb, D_l]``)."""
    nb, n_lat = xb.shape[0], len(layers_of(model, "ais_log_likelihood")) - 1
    target = _TemperedBlocks(model, xb, obs)
    values = [z.reshape(chains, nb, -1) for z in sample_latents(model, chains * nb)] + [xb]
    lw = torch.zeros(chains, nb, dtype=torch.float64, device=xb.device)
    eps = torch.full((n_lat, nb), float(step_size), dtype=torch.float64, device=xb.device)
    acc_sum = torch.zeros(n_lat, nb, dtype=torch.float64, device=xb.device)
    for t in range(1, beta.numel()):
        b_prev, b_now = float(beta[t - 1]), float(beta[t])
        lw += (b_now - b_prev) * torch.nan_to_num(target.log_obs(values).to(torch.float64), nan=-math.inf)
        for i in range(n_lat):
            mass = _block_mass(target, values, i, b_now) if precondition else None
            rate = _hmc_block(target, values, i, b_now, eps[i], leapfrog, mass).mean(0)
            acc_sum[i] += rate
            eps[i] *= torch.exp(0.5 * (rate - TARGET_ACCEPTANCE)).clamp(0.5, 2.0)
    return lw, acc_sum / (beta.numel() - 1), eps, [v.detach() for v in values[:-1]]


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
        A wakesleep :class:`HierarchicalModel` whose latent layers are all real-valued (Gaussian, Laplace,
        mixture-of-Gaussians top, ...; the observation layer may be of any family), moved by block HMC; or a
        sigmoid belief network (all latent layers Bernoulli, linear links without softplus, a Bernoulli or
        Gaussian observation layer), moved by single-site Gibbs sweeps. Other models raise a one-line
        :class:`WakesleepError` (:func:`ais_kernel`).
    x : array-like
        ``[B, Dx]`` observations.
    chains : int
        Independent AIS chains per data point.
    temperatures : int or sequence of float
        ``T`` (a :func:`sigmoid_schedule` with ``T`` steps) or the inverse temperatures themselves,
        increasing from 0 to 1.
    leapfrog : int
        Leapfrog steps per HMC move (unused by Gibbs sweeps).
    step_size : float
        Initial leapfrog step size (adapted per data point and layer, see the module docstring; unused by Gibbs
        sweeps).
    precondition : bool
        HMC only. Move each latent layer below the top with the diagonal mass ``1 / Var[z_l | z_{l+1}]`` at the
        chain's current parent (valid, since the parent is held fixed during the move; the top layer: 1), plus
        ``beta diag(W^T V^-1 W)`` for z_1 when the observation layer is Gaussian with a mean ``W z_1 + b``
        (the eq. 13 model). Units switched off by their parent (Laplace scales of 1e-6 in learnt patch
        models) then move on their own scale instead of forcing every unit's step down to it: without it the
        step sizes of z_1 collapsed to 1e-7 on a learnt (50, 2) patch model.
    batch_size : int, optional
        Data points run at once; memory is proportional to ``batch_size * chains``. Default: HMC
        ``min(B, max(1, 8192 // chains))``; Gibbs sweeps, equal batches of at most
        ``max(1, GIBBS_ELEMENTS // (chains * D))`` points, ``D`` the widest Bernoulli child layer (the sweeps pass
        over ``[chains x points, D]`` arrays unit by unit, fastest while they stay in the CPU cache: on the
        784-pixel SBN two batches of 800 rows ran faster than one of 1600).
    seed : int, optional
        If given, the global torch RNG is seeded for the call (and restored afterwards).
    return_samples : bool
        Also return the chains' final states and their log weights (posterior samples, see
        :class:`AISResult`).

    Returns
    -------
    AISResult
        ``.log_px`` (float64) per point, ``.ess`` over the chains, ``.acceptance`` and ``.step_size`` per layer
        (on the CPU; with Gibbs sweeps the fraction of units changed per sweep, and NaN), ``.kernel``; with
        ``return_samples``, ``.samples`` (on the model's device, in its dtype) and ``.log_weights``.
    """
    fn = "ais_log_likelihood"
    xt, _ = check_obs(model, x, fn)
    chains = check_positive_int(fn, "chains", chains)
    leapfrog = check_positive_int(fn, "leapfrog", leapfrog)
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size > 0:
        raise WakesleepError(f"{fn}: step_size must be a positive number, got {step_size!r}")
    beta = _betas(fn, temperatures)
    kernel = ais_kernel(model, fn)
    layers = layers_of(model, fn)
    B, n_lat = xt.shape[0], len(layers) - 1
    if batch_size is not None:
        bs = check_positive_int(fn, "batch_size", batch_size)
    elif kernel == "gibbs":  # equal batches of at most GIBBS_ELEMENTS // (widest swept child) rows
        widest = max([layer.dim for layer in layers[1:] if family_name(layer) == "bernoulli"], default=1)
        n_batches = math.ceil(B / max(1, GIBBS_ELEMENTS // (widest * chains)))
        bs = math.ceil(B / n_batches)
    else:
        bs = min(B, max(1, 8192 // chains))
    log_w = torch.empty(B, chains, dtype=torch.float64)
    finals: list[list[Tensor]] = []
    acc_total = torch.zeros(B, n_lat, dtype=torch.float64)
    eps_final = torch.full((B, n_lat), math.nan, dtype=torch.float64)
    devices = [xt.device] if xt.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        if kernel == "gibbs":
            chain = _BernoulliChain(layers, xt.dtype)
        else:
            obs = _gaussian_observation(model)
        for b0 in range(0, B, bs):
            xb = xt[b0 : b0 + bs]
            nb = xb.shape[0]
            if kernel == "gibbs":
                with warnings.catch_warnings():  # Tensor.index_reduce_ is "in beta" (since PyTorch 1.12)
                    warnings.filterwarnings("ignore", message=r"index_reduce\(\) is in beta", category=UserWarning)
                    lw, acc, states = _gibbs_batch(chain, model, xb, chains, beta)
            else:
                lw, acc, eps, states = _hmc_batch(model, xb, obs, chains, beta, leapfrog, step_size, precondition)
                eps_final[b0 : b0 + nb] = eps.T.cpu()
            log_w[b0 : b0 + nb] = lw.T.cpu()
            acc_total[b0 : b0 + nb] = acc.T.cpu()
            if return_samples:
                finals.append(states)
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
        kernel=kernel,
    )
