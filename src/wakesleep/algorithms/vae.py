"""The variational autoencoder: reparameterised ELBO with a layered factorised posterior (Kingma & Welling 2014;
Rezende et al. 2014; seed ``002``, "reparametrisation trick").

Objective
---------
For a minibatch x_1..x_B and k samples z^s = z(eps^s, phi; x) ~ q_phi(z | x) drawn by reparameterisation,
the free energy of seed ``002`` is estimated by

    F_b(theta, phi) = (1/k) sum_s [ log p_theta(x_b, z^s) - log q_phi(z^s | x_b) ],

and :class:`VAE` ascends (1/B) sum_b F_b in theta and phi. Its theta-gradient is the seed's
``dF/dtheta = (1/k) sum_s grad_theta log p(x, z^s)``; its phi-gradient flows through the samples z^s
(``dF/dphi`` of the seed: the pathwise term plus the explicit dependence of log q on phi). The KL term is
estimated by Monte Carlo (no analytic KL), which works for every model family. With
``recognition_gradient="dreg"`` the explicit (score) term of the phi-gradient is dropped, the
"sticking the landing" estimator (Roeder et al. 2017): same expectation, zero variance when q is exact.

Posterior
---------
``q(z | x) = q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})`` (**bottom-up**, :class:`LayeredProposal`), each
factor a diagonal Gaussian for real-valued latents (Gaussian, Laplace, mixture-of-Gaussians top) or a diagonal
log-normal for positive ones (Gamma), sampled with ``rsample``. Discrete latents (Bernoulli, Categorical,
Poisson) have no reparameterised sampler: building the algorithm raises ``WakesleepError`` pointing to
``vimco``, ``rws`` or ``bbvi``. ``structure="top_down"`` uses instead q(z_L | x) q(z_{L-1} | z_L, x) ...
(:class:`TopDownProposal`: the generative order, conditioned on a deterministic encoding of x).

Trainer protocol and the one-backward design
---------------------------------------------
The Trainer calls ``grads = wake_gradient(x)``, steps theta, then ``step_recognition(x, wake=grads)``.
``wake_gradient`` evaluates the bound once and differentiates it w.r.t. theta *and* phi in one backward pass;
the theta part is returned, the phi part travels in the result's ``cache`` (a :class:`WakeGradient`).
``step_recognition(x, wake=grads)`` writes that ``-grad_phi`` into ``.grad`` (and recomputes the bound when
``wake`` is not given, e.g. when called on its own). So both parameter sets move along the gradient of the
same Monte Carlo bound at the same (theta, phi): exactly the joint update of a standard VAE step (Kingma &
Welling 2014, Algorithm 1), at the cost of one forward and one backward pass per minibatch. (Recomputing the
bound after the theta step would be an alternating scheme at twice the cost, with a gradient of the bound at
the new theta.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from wakesleep.algorithms.base import WakeGradient
from wakesleep.algorithms.proposals import (
    LayeredProposal,
    ProposalAlgorithm,
    ProposalOptions,
    _Factor,
    proposal_kind,
)
from wakesleep.errors import WakesleepError
from wakesleep.models.links import mlp
from wakesleep.schema import SEED_MAX, option

__all__ = ["VAE", "ReparameterizedBound", "ReparameterizedOptions", "TopDownProposal", "elbo_reduce", "iwae_reduce"]

GRADIENTS = ("total", "dreg")


def elbo_reduce(log_w: Tensor) -> Tensor:
    """ELBO estimate per data point from log weights ``[k, B]``: ``(1/k) sum_s log w_s`` (seed ``002``)."""
    return log_w.mean(0)


def iwae_reduce(log_w: Tensor) -> Tensor:
    """Importance-weighted bound per data point: ``log (1/k) sum_s w_s`` (Burda et al. 2015, eq. 8)."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


class _LogQ(nn.Module):
    """Adapter so that ``torch.func.functional_call`` can evaluate ``proposal.log_prob`` at other parameters."""

    def __init__(self, proposal: nn.Module) -> None:
        super().__init__()
        self.p = proposal

    def forward(self, x: Tensor, zs: list[Tensor]) -> Tensor:
        return self.p.log_prob(x, zs)


@dataclass
class _Stash:
    """What :meth:`ReparameterizedBound.wake_gradient` keeps for ``step_recognition`` (``WakeGradient.cache``)."""

    grads: list[Tensor | None]
    info: dict[str, float]


class TopDownProposal(nn.Module):
    """Top-down structured posterior q(z_L | x) q(z_{L-1} | z_L, x) ... q(z_1 | z_2, x) (ladder-style sampling
    order, Sonderby et al. 2016, without their precision-weighted merge).

    A deterministic MLP ``h(x)`` (widths ``hidden``; ``()``: h(x) is the embedded x) is computed once; factor l
    is a diagonal Gaussian (log-normal for positive layers) whose parameters are an MLP (same widths) of
    ``[h(x), embed(z_{l+1})]`` (just ``h(x)`` at the top). It follows the generative direction, so for a chain
    whose posterior conditionals are diagonal it can represent p(z | x) exactly, like the bottom-up order.

    Parameters
    ----------
    model : HierarchicalModel
        Only its structure is read; every latent layer must be real-valued or positive.
    hidden : tuple of int
    activation : str
    """

    def __init__(self, model: nn.Module, hidden: tuple[int, ...] = (100,), activation: str = "tanh") -> None:
        super().__init__()
        layers = list(model.layers.values())
        self._layers = layers  # plain list: the model is not a submodule
        self.n_latent = len(layers) - 1
        self.kinds = [proposal_kind(layer) for layer in layers[:-1]]
        if not all(k in ("gaussian", "lognormal") for k in self.kinds):
            raise WakesleepError("TopDownProposal: every latent layer must be real-valued or positive")
        self.encoder = mlp(int(layers[-1].embed_dim), hidden, activation)
        d = hidden[-1] if hidden else int(layers[-1].embed_dim)
        self.factors = nn.ModuleList(
            _Factor(
                self.kinds[t],
                d + (int(layers[t - 1].embed_dim) if t > 0 else 0),
                int(layers[t].dim),
                tuple(hidden),
                activation,
            )
            for t in range(self.n_latent)
        )  # top first
        self.to(dtype=model.dtype, device=model.device)

    @property
    def reparameterized(self) -> bool:
        return True

    def _inputs(self, h: Tensor, t: int, parent: Tensor | None) -> Tensor:
        if t == 0:
            return h
        e = self._layers[t - 1].embed(parent)
        return torch.cat([h.expand(*e.shape[:-1], h.shape[-1]), e], -1)

    def sample(self, x: Tensor, k: int = 1) -> tuple[list[Tensor], Tensor]:
        """``k`` particles per data point, top layer first: ``([z_L, ..., z_1] each [k, B, D_l], log_q [k, B])``."""
        h = self.encoder(self._layers[-1].embed(x))
        zs, log_q, parent = [], None, None
        for t, factor in enumerate(self.factors):
            out = factor.params(self._inputs(h, t, parent))
            z = factor.sample(out, torch.Size([k]) if t == 0 else torch.Size(), True)
            lq = factor.log_prob(out, z)
            log_q = lq if log_q is None else log_q + lq
            zs.append(z)
            parent = z
        return zs, log_q

    def log_prob(self, x: Tensor, zs: list[Tensor]) -> Tensor:
        """log q(z | x) at given latents ``[z_L, ..., z_1]`` (each ``[k, B, D_l]`` or ``[B, D_l]``)."""
        h = self.encoder(self._layers[-1].embed(x))
        total = None
        for t, factor in enumerate(self.factors):
            lq = factor.log_prob(factor.params(self._inputs(h, t, zs[t - 1] if t > 0 else None)), zs[t])
            total = lq if total is None else total + lq
        return total


@dataclass(frozen=True)
class ReparameterizedOptions(ProposalOptions):
    """Options of the reparameterised-bound methods (``vae``, ``iwae``, ``flow``)."""

    k: int = option(1, minimum=1, doc="samples per data point")
    proposal_hidden: int | list[int] = option(
        (100,), minimum=0, doc="hidden widths of each recognition factor's MLP ([]: affine factors)"
    )
    structure: Literal["bottom_up", "top_down"] = option(
        "bottom_up", doc="order of q: bottom_up q(z_1 | x) q(z_2 | z_1) ..., or top_down q(z_L | x) ..."
    )
    recognition_gradient: Literal["total", "dreg"] = option(
        "total", doc="total: through the samples; dreg: doubly reparameterised (Tucker et al. 2019)"
    )
    proposal: Any = option(None, doc="a reparameterised proposal module to use instead (Python API only)")
    seed: int | None = option(
        None, minimum=0, maximum=SEED_MAX, doc="seed of the recognition network's initial weights (null: global RNG)"
    )
    warmup: int = option(0, minimum=0, doc="initial minibatches during which only the recognition model learns")

    def validate(self, prefix: str) -> None:
        if self.proposal is not None and not isinstance(self.proposal, nn.Module):
            raise WakesleepError(
                f"{prefix}.proposal must be a torch.nn.Module with sample(x, k) (Python API only), "
                f"got {type(self.proposal).__name__}"
            )


class ReparameterizedBound(ProposalAlgorithm):
    """Shared machinery of the reparameterised-bound methods (``vae``, ``iwae``, ``flow``).

    Subclasses choose the bound (:meth:`reduce`) and the proposal (:meth:`_build_proposal`).

    Parameters
    ----------
    model : HierarchicalModel
    k : int
        Samples per data point.
    proposal_hidden : list of int
        Hidden widths of each recognition factor's MLP (``[]``: affine factors).
    proposal_activation : {"tanh", "relu", "softplus", "sigmoid"}
    structure : {"bottom_up", "top_down"}
        Order of q: ``bottom_up`` q(z_1 | x) q(z_2 | z_1) ... (:class:`LayeredProposal`) or ``top_down``
        q(z_L | x) q(z_{L-1} | z_L, x) ... (:class:`TopDownProposal`).
    recognition_gradient : {"total", "dreg"}
        ``total``: the gradient of the bound through the samples (Kingma & Welling 2014; Burda et al. 2015).
        ``dreg``: the doubly reparameterised estimator of Tucker et al. 2019 (for k = 1 and the ELBO the
        "sticking the landing" estimator of Roeder et al. 2017); needs ``proposal.log_prob``.
    proposal : nn.Module, optional
        Any reparameterised proposal (protocol of ``docs/DESIGN.md``) to use instead of the default
        :class:`LayeredProposal` (Python API only; e.g. an exact posterior in tests).
    seed : int, optional
        Seed of the recognition network's initial weights (default: the global RNG).
    warmup : int
        Number of initial minibatches during which only the recognition model learns: ``wake_gradient``
        returns zeros (the model stays put) while ``step_recognition`` fits q to the current model. Useful
        when training starts from good generative parameters (the Fig. 1 comparison starts at the truth)
        and an untrained q would otherwise push them away during its first steps. Default 0 (off). The
        number of wake steps taken is the buffer ``n_wake`` (in the ``state_dict``).
    """

    name = "reparameterized_bound"
    Options = ReparameterizedOptions

    def __init__(self, model: nn.Module, **hyperparameters: Any) -> None:
        super().__init__(model, **hyperparameters)
        o = self.options
        self._require_hierarchical()
        self.k = o.k
        self._set_proposal_options()
        self.structure, self.recognition_gradient, self.seed, self.warmup = (
            o.structure,
            o.recognition_gradient,
            o.seed,
            o.warmup,
        )
        self.register_buffer("n_wake", torch.zeros((), dtype=torch.int64))
        proposal = self._given_proposal()
        if proposal is None:
            self._check_latents()
            if self.seed is None:
                proposal = self._build_proposal()
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(self.seed))
                    proposal = self._build_proposal()
        elif not getattr(proposal, "reparameterized", True):
            raise WakesleepError(f"{self.name}: the proposal has no reparameterised sampler; use vimco, rws or bbvi")
        self.proposal = proposal
        if self.recognition_gradient == "dreg" and not callable(getattr(self.proposal, "log_prob", None)):
            raise WakesleepError(
                f"algorithm.recognition_gradient: 'dreg' needs a proposal with log_prob "
                f"({type(self.proposal).__name__} has none); use 'total'"
            )

    @property
    def n_wake_(self) -> int:
        """Wake steps taken so far (the buffer ``n_wake``)."""
        return int(self.n_wake)

    # --- construction ---------------------------------------------------------------------------------
    def _given_proposal(self) -> nn.Module | None:
        """The proposal passed as an option (Python API), or None to build the default."""
        return self.options.proposal

    def _check_latents(self) -> None:
        """Every latent layer needs a reparameterised posterior factor (real or positive support)."""
        layers = list(self.model.layers.values())
        for lname, layer in zip(self.model.latent_names, layers[:-1], strict=True):
            family = getattr(layer, "family", None)
            support = "real" if family is None else family.support
            if support not in ("real", "positive"):
                raise WakesleepError(f"{self.name}: latent {lname} is {support}; use vimco, rws or bbvi")

    def _build_proposal(self) -> nn.Module:
        if self.structure == "top_down":
            return TopDownProposal(self.model, hidden=self.hidden, activation=self.activation)
        return LayeredProposal(self.model, hidden=self.hidden, activation=self.activation, structure=self.structure)

    # --- the bound ------------------------------------------------------------------------------------
    def reduce(self, log_w: Tensor) -> Tensor:
        """Bound per data point from log weights ``[k, B]``."""
        raise NotImplementedError

    def log_weights(self, x: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        """Draw ``k`` reparameterised particles: ``(log w [k, B], zs, log_q [k, B])``, log w = log p(x, z) - log q."""
        zs, log_q = self.proposal.sample(x, self.k)
        log_w = self.model.log_joint(x, zs) - log_q
        return log_w, zs, log_q

    def bound(self, x: Tensor) -> Tensor:
        """Monte Carlo estimate of the bound for every data point, ``[B]`` (differentiable)."""
        log_w, _, _ = self.log_weights(self._check_x(x))
        return self.reduce(log_w)

    def _recognition_surrogate(self, x: Tensor, zs: list[Tensor], log_w: Tensor) -> Tensor:
        """Doubly reparameterised surrogate (Tucker et al. 2019): log q at *stopped* recognition parameters,
        weighted by the squared normalised weights ``sg(w~_s^2)`` (1/k for the ELBO: Roeder et al. 2017)."""
        params = {f"p.{n}": p.detach() for n, p in self.proposal.named_parameters()}
        log_q_stopped = torch.func.functional_call(_LogQ(self.proposal), params, (x, zs))
        log_w_stopped = self.model.log_joint(x, zs) - log_q_stopped
        return (self._dreg_weights(log_w.detach()) * log_w_stopped).sum(0).mean()

    def _dreg_weights(self, log_w: Tensor) -> Tensor:
        return torch.full_like(log_w, 1.0 / log_w.shape[0])

    def _info(self, log_w: Tensor, bound: Tensor) -> dict[str, float]:
        info = {"bound": float(bound)}
        if log_w.shape[0] > 1:
            w = torch.softmax(log_w, 0)
            info["ess"] = float((1.0 / (w * w).sum(0)).mean())
        return info

    def _gradients(self, x: Tensor, need_theta: bool) -> tuple[list[Tensor | None], list[Tensor | None], dict]:
        theta = [p for _, p in self._model_params()] if need_theta else []
        phi = self.recognition_parameters()
        with torch.enable_grad():
            log_w, zs, _ = self.log_weights(x)
            bound = self.reduce(log_w).mean()
            if self.recognition_gradient == "total":
                grads = torch.autograd.grad(bound, theta + phi, allow_unused=True)
                g_theta, g_phi = list(grads[: len(theta)]), list(grads[len(theta) :])
            else:
                g_theta = list(torch.autograd.grad(bound, theta, allow_unused=True, retain_graph=True)) if theta else []
                sur = self._recognition_surrogate(x, zs, log_w)
                g_phi = list(torch.autograd.grad(sur, phi, allow_unused=True))
        return g_theta, g_phi, self._info(log_w.detach(), bound.detach())

    def _model_params(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    # --- algorithm contract ---------------------------------------------------------------------------
    def wake_gradient(self, x: Tensor) -> WakeGradient:
        """Gradient of the bound (1/B) sum_b F_b w.r.t. every model parameter (the ascent direction).

        The recognition gradient of the same bound is returned in the result's ``cache`` for
        :meth:`step_recognition` (``wake=``; module docstring).
        """
        xx = self._check_x(x)
        learn_model = self.warmup == 0 or self.n_wake_ >= self.warmup
        self.n_wake.add_(1)
        g_theta, g_phi, info = self._gradients(xx, need_theta=learn_model)
        stash = _Stash([None if g is None else g.detach() for g in g_phi], info)
        if not learn_model:
            return self._keep_wake(x, WakeGradient({n: torch.zeros_like(p) for n, p in self._model_params()}, stash))
        out = WakeGradient(cache=stash)
        for (n, p), g in zip(self._model_params(), g_theta, strict=True):
            out[n] = torch.zeros_like(p) if g is None else g.detach()
        return self._keep_wake(x, out)

    def step_recognition(self, x: Tensor, wake: WakeGradient | None = None) -> dict[str, float]:
        """Fill ``.grad`` of the recognition parameters with minus the bound's gradient (the Trainer steps Adam).

        Uses the gradient in ``wake``'s cache (what :meth:`wake_gradient` returned for the same ``x``) when
        given (or, without ``wake``, when the last :meth:`wake_gradient` was given this very tensor ``x``:
        ``ProposalAlgorithm._wake_cache``); otherwise evaluates the bound afresh. Never touches the model's
        ``.grad``.
        """
        stash = self._wake_cache(x, wake)
        if stash is not None:
            grads, info = stash.grads, stash.info
        else:
            _, grads, info = self._gradients(self._check_x(x), need_theta=False)
        for p, g in zip(self.recognition_parameters(), grads, strict=True):
            if g is None:
                continue
            p.grad = -g if p.grad is None else p.grad - g
        return info


class VAE(ReparameterizedBound):
    """Variational autoencoder: the reparameterised ELBO (seed ``002``), bottom-up factorised posterior.

    Parameters
    ----------
    model : HierarchicalModel
        Every latent layer must be real-valued or positive (a reparameterised posterior factor exists).
    k : int
        Samples averaged in the ELBO estimate, ``F = (1/k) sum_s log p(x, z^s) / q(z^s | x)``.
    proposal_hidden, proposal_activation, structure, recognition_gradient, proposal, seed, warmup
        See :class:`ReparameterizedBound`.
    """

    name = "vae"

    def reduce(self, log_w: Tensor) -> Tensor:
        return elbo_reduce(log_w)
