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

The two transition kernels are in :mod:`wakesleep.eval._ais_hmc` and :mod:`wakesleep.eval._ais_gibbs`.

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
from wakesleep.eval._ais_gibbs import GIBBS_GROUP as GIBBS_GROUP  # re-exported; patch it in _ais_gibbs
from wakesleep.eval._ais_gibbs import _BernoulliChain, _gibbs_batch
from wakesleep.eval._ais_hmc import TARGET_ACCEPTANCE as TARGET_ACCEPTANCE  # re-exported; patch it in _ais_hmc
from wakesleep.eval._ais_hmc import _gaussian_observation, _hmc_batch
from wakesleep.eval._checks import check_positive_int
from wakesleep.eval._model import check_obs, family_name, layer_kind, layers_of
from wakesleep.eval.loglik import LogLikelihoodResult
from wakesleep.models.links import LinearLink, MLPLink

__all__ = ["AISResult", "ais_kernel", "ais_log_likelihood", "sigmoid_schedule"]

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
