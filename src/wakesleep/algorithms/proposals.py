"""Sampling recognition models (the proposal protocol of ``docs/DESIGN.md``) shared by the baselines.

:class:`LayeredProposal` is the factorised, layer-by-layer recognition model of the Helmholtz machine
(seed ``003``, eqs. 7-8) generalised to every family of the library::

    q(z_1, ..., z_L | x) = q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})        ("bottom_up")

Each factor is a product over the units of the layer (eq. 7) whose parameters are an MLP of the *embedded*
value of the layer below (``hidden=()`` gives the affine map of eq. 8: ``q_j = sigma(sum_i s_i phi_ij)``
plus a bias). The family of a factor follows the support of the model's layer:

=============================================  ================================  ==============
model layer support                            factor                            reparameterised
=============================================  ================================  ==============
``real`` (gaussian, laplace, ``mog`` top)      diagonal Gaussian                 yes (rsample)
``positive`` (gamma)                           diagonal log-normal               yes (rsample)
``binary`` (bernoulli)                         independent Bernoulli (eq. 7)     no
``categorical``                                independent Categorical per unit  no
``count`` (poisson)                            -- ``WakesleepError``             --
=============================================  ================================  ==============

Shapes: ``sample(x, k)`` returns ``zs = [z_L, ..., z_1]`` (top first, like ``model.sample``), each
``[k, B, D_l]``, and ``log_q`` ``[k, B]``; ``log_prob(x, zs)`` accepts ``[k, B, D_l]`` or ``[B, D_l]`` latents.
Categorical values are integer codes stored as floats (the model's convention), embedded as one-hot vectors
before they enter the next factor.

``structure`` is a hook: only ``"bottom_up"`` is implemented here. A top-down (ladder-style) proposal that
conditions z_l on z_{l+1} and x belongs to the reparameterised VAE family and is built there; this class
raises ``NotImplementedError`` for it so that a caller can fall back cleanly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.distributions as D
from torch import Tensor, nn

from wakesleep.algorithms.base import Algorithm, Capabilities, WakeGradient
from wakesleep.errors import WakesleepError
from wakesleep.families.standard import bernoulli_log_prob_sum
from wakesleep.models.links import ACTIVATION_MODULES, mlp
from wakesleep.ops import linear
from wakesleep.schema import option

__all__ = [
    "LayeredProposal",
    "ProposalAlgorithm",
    "ProposalOptions",
    "hidden_widths",
    "log_weights",
    "model_layers",
    "proposal_kind",
    "STRUCTURES",
]

STRUCTURES = ("bottom_up", "top_down")


def model_layers(model: nn.Module) -> list[Any]:
    """The layers a proposal reads, top latent first, observation last.

    A ``HierarchicalModel``'s ``layers``, or ``model.proposal_layers()`` for a model that is not one but describes
    its sites that way (``wakesleep.models.from_pyro``): objects with ``name``, ``dim``, ``family`` (``support``,
    ``name``, ``categories``), ``embed(value)`` and ``embed_dim``.

    Raises
    ------
    WakesleepError
        For a model with neither.
    """
    describe = getattr(model, "proposal_layers", None)
    if callable(describe):
        return list(describe())
    if not hasattr(model, "layers") or not hasattr(model, "latent_names"):
        raise WakesleepError("proposal: needs a HierarchicalModel (wakesleep.build_model)")
    return list(model.layers.values())


_LOG_STD_MIN, _LOG_STD_MAX = -9.0, 5.0


def proposal_kind(layer: nn.Module) -> str:
    """Factor kind for a model layer: ``"gaussian"``, ``"lognormal"``, ``"bernoulli"`` or ``"categorical"``.

    Raises
    ------
    WakesleepError
        For count-valued (Poisson) layers, which have neither a reparameterised sampler nor a natural
        factorised proposal here.
    """
    family = getattr(layer, "family", None)
    support = "real" if family is None else family.support  # family None: mixture-of-Gaussians top prior
    kinds = {"real": "gaussian", "positive": "lognormal", "binary": "bernoulli", "categorical": "categorical"}
    if support not in kinds:
        raise WakesleepError(
            f"proposal: latent layer {getattr(layer, 'name', '?')!r} has {support}-valued support "
            f"({family.name if family is not None else 'mog'}); sampling proposals support real, positive, "
            "binary and categorical latents"
        )
    return kinds[support]


class _Factor(nn.Module):
    """One factor q(z_l | u) of the layered proposal: an MLP ``u -> parameters`` and the distribution."""

    def __init__(
        self, kind: str, in_dim: int, dim: int, hidden: tuple[int, ...], activation: str, categories: int = 0
    ) -> None:
        super().__init__()
        self.kind, self.dim, self.categories = kind, dim, categories
        n_out = {"gaussian": 2 * dim, "lognormal": 2 * dim, "bernoulli": dim, "categorical": dim * categories}[kind]
        self.net = mlp(in_dim, hidden, activation, n_out)
        if kind in ("gaussian", "lognormal"):  # start with unit spread and a small mean (a stable first step)
            with torch.no_grad():
                self.net[-1].weight.mul_(0.1)
                self.net[-1].bias.zero_()

    def params(self, u: Tensor) -> Tensor:
        for mod in self.net:  # the affine maps through wakesleep.ops.linear (oneDNN for float32)
            u = linear(u, mod.weight, mod.bias) if isinstance(mod, nn.Linear) else mod(u)
        return u

    def distribution(self, out: Tensor) -> D.Distribution:
        """The factor's distribution with batch shape ``[..., D]`` (values ``[..., D]``)."""
        if self.kind in ("gaussian", "lognormal"):
            loc, log_std = out.chunk(2, dim=-1)
            scale = torch.exp(log_std.clamp(_LOG_STD_MIN, _LOG_STD_MAX))
            return D.Normal(loc, scale) if self.kind == "gaussian" else D.LogNormal(loc, scale)
        if self.kind == "bernoulli":
            return D.Bernoulli(logits=out, validate_args=False)
        return D.Categorical(logits=out.reshape(*out.shape[:-1], self.dim, self.categories), validate_args=False)

    def log_prob(self, out: Tensor, z: Tensor) -> Tensor:
        """log q(z | u) summed over units, ``[...]``; closed forms for speed (no distribution objects)."""
        if self.kind == "bernoulli":  # sum of z * l - softplus(l), eq. 7 in logit form (one fused kernel)
            return bernoulli_log_prob_sum(z, out)
        if self.kind == "categorical":
            logits = out.reshape(*out.shape[:-1], self.dim, self.categories)
            lp = torch.log_softmax(logits, -1)
            return lp.gather(-1, z.long().unsqueeze(-1)).squeeze(-1).sum(-1)
        loc, log_std = out.chunk(2, dim=-1)
        log_std = log_std.clamp(_LOG_STD_MIN, _LOG_STD_MAX)
        y = torch.log(z) if self.kind == "lognormal" else z
        lp = -0.5 * ((y - loc) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        if self.kind == "lognormal":
            lp = lp - y
        return lp.sum(-1)

    def sample(self, out: Tensor, sample_shape: torch.Size, reparameterize: bool) -> Tensor:
        if self.kind == "bernoulli":
            p = torch.sigmoid(out.detach())
            u = torch.rand(sample_shape + p.shape, dtype=p.dtype, device=p.device)
            return u.lt_(p)  # u < p as 0./1. in u's buffer
        if self.kind == "categorical":
            return self.distribution(out.detach()).sample(sample_shape).to(out.dtype)
        dist = self.distribution(out)
        return dist.rsample(sample_shape) if reparameterize else dist.sample(sample_shape)

    def mean(self, out: Tensor) -> Tensor:
        """Mean of the factor in the *embedded* space of its layer (probabilities for Bernoulli/Categorical)."""
        if self.kind == "bernoulli":
            return torch.sigmoid(out)
        if self.kind == "categorical":
            probs = torch.softmax(out.reshape(*out.shape[:-1], self.dim, self.categories), -1)
            return probs.reshape(*out.shape[:-1], -1)
        loc, log_std = out.chunk(2, dim=-1)
        if self.kind == "gaussian":
            return loc
        return torch.exp(loc + 0.5 * torch.exp(2 * log_std.clamp(_LOG_STD_MIN, _LOG_STD_MAX)))


class LayeredProposal(nn.Module):
    """Factorised layer-by-layer recognition model q(z | x) (seed ``003`` eqs. 7-8, any family).

    Parameters
    ----------
    model : HierarchicalModel
        The generative model; only its structure is read (layer dims, families, embeddings), and it is
        *not* registered as a submodule, so ``proposal.parameters()`` are the recognition weights only.
    hidden : tuple of int
        Hidden widths of each factor's MLP; ``()`` gives the affine (logistic for binary layers) map of eq. 8.
    activation : {"tanh", "relu", "softplus", "sigmoid"}
        Hidden-layer nonlinearity.
    structure : {"bottom_up"}
        ``"bottom_up"``: q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1}). Other structures (``"top_down"``)
        raise ``NotImplementedError`` here (the hook for the reparameterised VAE family).

    Attributes
    ----------
    kinds : list of str
        Factor kind per latent layer, **top first** (``"gaussian"``, ``"lognormal"``, ``"bernoulli"``,
        ``"categorical"``).
    reparameterized : bool
        True when every factor has a reparameterised sampler (then ``sample`` returns ``rsample`` values).

    Notes
    -----
    The parameters are created in the model's dtype and on its device.
    """

    def __init__(
        self,
        model: nn.Module,
        hidden: tuple[int, ...] | list[int] | int = (100,),
        activation: str = "tanh",
        structure: str = "bottom_up",
    ) -> None:
        super().__init__()
        if structure not in STRUCTURES:
            raise WakesleepError(f"proposal.structure: must be one of {', '.join(STRUCTURES)}, got {structure!r}")
        if structure != "bottom_up":
            raise NotImplementedError(
                f"LayeredProposal: structure={structure!r} is not implemented here (only 'bottom_up')"
            )
        if activation not in ACTIVATION_MODULES:
            raise WakesleepError(
                f"proposal.activation: unknown activation {activation!r} (known: {', '.join(ACTIVATION_MODULES)})"
            )
        layers = model_layers(model)
        if isinstance(hidden, int):
            hidden = (hidden,) if hidden > 0 else ()
        hidden = tuple(int(h) for h in hidden)
        if any(h <= 0 for h in hidden):
            raise WakesleepError(f"proposal.hidden: widths must be positive, got {list(hidden)}")
        self.structure, self.hidden, self.activation = structure, hidden, activation
        self._layers = layers  # plain list: the model's modules are not registered here
        self.n_latent = len(layers) - 1
        self.kinds = [proposal_kind(layer) for layer in layers[:-1]]
        # factors bottom-up: factor i infers latent layer index L-1-i (top-first index) from the layer below
        factors = []
        for i in range(self.n_latent):
            t = self.n_latent - 1 - i  # top-first index of the inferred layer
            below, layer = layers[t + 1], layers[t]
            cats = int(getattr(layer.family, "categories", 0) or 0)
            factors.append(_Factor(self.kinds[t], int(below.embed_dim), int(layer.dim), hidden, activation, cats))
        self.factors = nn.ModuleList(factors)
        self.to(dtype=model.dtype, device=model.device)

    # --- protocol --------------------------------------------------------------------------------------
    @property
    def reparameterized(self) -> bool:
        return all(k in ("gaussian", "lognormal") for k in self.kinds)

    def _embed(self, t: int, value: Tensor) -> Tensor:
        """Embedded value of layer ``t`` (top-first index; ``t = n_latent`` is the observation)."""
        return self._layers[t].embed(value)

    def sample(self, x: Tensor, k: int = 1, reparameterize: bool | None = None) -> tuple[list[Tensor], Tensor]:
        """Draw ``k`` particles per data point, layer by layer bottom-up (ancestral sampling of q).

        Parameters
        ----------
        x : Tensor
            ``[B, Dx]``.
        k : int
            Number of particles.
        reparameterize : bool, optional
            ``None`` (default): ``rsample`` for the reparameterisable factors, plain samples for discrete ones.
            ``False``: detached samples everywhere (for score-function estimators); ``log_q`` still carries the
            gradient w.r.t. the recognition parameters at fixed samples.

        Returns
        -------
        zs : list of Tensor
            ``[z_L, ..., z_1]`` (top first), each ``[k, B, D_l]``.
        log_q : Tensor
            ``[k, B]``, log q(z | x) summed over layers and units.
        """
        if x.ndim != 2:
            raise WakesleepError(f"proposal: x must be [batch, dim], got shape {tuple(x.shape)}")
        rep = reparameterize is None or bool(reparameterize)
        u = self._embed(self.n_latent, x)
        out = self.factors[0].params(u)  # [B, P]: computed once, shared by the k particles
        zs_bottom_up, log_q = [], None
        for i, factor in enumerate(self.factors):
            if i > 0:
                out = factor.params(u)
            z = factor.sample(out, torch.Size([k]) if i == 0 else torch.Size(), rep)
            lq = factor.log_prob(out, z)
            log_q = lq if log_q is None else log_q + lq
            zs_bottom_up.append(z)
            u = self._embed(self.n_latent - 1 - i, z)
        return zs_bottom_up[::-1], log_q

    def log_prob(self, x: Tensor, zs: list[Tensor]) -> Tensor:
        """log q(z | x) for given latents ``zs = [z_L, ..., z_1]`` (each ``[k, B, D_l]`` or ``[B, D_l]``)."""
        if len(zs) != self.n_latent:
            raise ValueError(f"log_prob: expected {self.n_latent} latent layers, got {len(zs)}")
        u = self._embed(self.n_latent, x)
        total = None
        for i, factor in enumerate(self.factors):
            z = zs[self.n_latent - 1 - i]
            lq = factor.log_prob(factor.params(u), z)
            total = lq if total is None else total + lq
            u = self._embed(self.n_latent - 1 - i, z)
        return total

    def layer_params(self, x: Tensor, zs: list[Tensor]) -> list[Tensor]:
        """Raw factor outputs (logits, or ``[loc, log_std]``) at given latents, **top first**."""
        u = self._embed(self.n_latent, x)
        outs = []
        for i, factor in enumerate(self.factors):
            outs.append(factor.params(u))
            u = self._embed(self.n_latent - 1 - i, zs[self.n_latent - 1 - i])
        return outs[::-1]

    def mean_field(self, x: Tensor) -> list[Tensor]:
        """Deterministic mean-field pass (seed ``003`` eq. 9): each factor is fed the *mean* of the layer below.

        Returns
        -------
        list of Tensor
            Per latent layer, **top first**, the factor's mean in the embedded space, ``[B, E_l]``:
            Bernoulli probabilities q_j^l (eq. 9), Gaussian means, log-normal means, flattened categorical
            probabilities. Differentiable w.r.t. the recognition parameters.
        """
        u = self._embed(self.n_latent, x)
        means = []
        for factor in self.factors:
            u = factor.mean(factor.params(u))
            means.append(u)
        return means[::-1]

    def extra_repr(self) -> str:
        return f"structure={self.structure}, kinds={self.kinds}, hidden={list(self.hidden)}"


# --------------------------------------------------------------------------------------------------------
# the base of the algorithms with a sampling recognition model
# --------------------------------------------------------------------------------------------------------
ACTIVATIONS = tuple(ACTIVATION_MODULES)


def hidden_widths(value: Any, where: str = "algorithm.proposal_hidden") -> tuple[int, ...]:
    """Hidden widths of a proposal's factors: ``None``/``0``/``[]`` -> ``()`` (affine), an int -> one layer.

    Raises
    ------
    WakesleepError
        For a width that is not a positive integer (one line naming ``where``).
    """
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == 0):
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(h, int) and not isinstance(h, bool) for h in value):
        raise WakesleepError(f"{where}: must be an int or a list of ints, got {value!r}")
    if any(h <= 0 for h in value):
        raise WakesleepError(f"{where}: widths must be positive, got {list(value)}")
    return tuple(int(h) for h in value)


@dataclass(frozen=True)
class ProposalOptions:
    """Options shared by every algorithm with a sampling recognition model (the proposal)."""

    k: int = option(5, minimum=1, doc="particles (importance samples) per data point")
    proposal_hidden: int | list[int] | None = option(
        0, minimum=0, doc="hidden widths of each proposal factor's MLP (0 or []: affine factors)"
    )
    proposal_activation: Literal["tanh", "relu", "softplus", "sigmoid"] = option(
        "tanh", doc="hidden nonlinearity of the proposal"
    )


class ProposalAlgorithm(Algorithm):
    """Base of the algorithms whose recognition model is a proposal q(z | x) trained by the Trainer.

    Gives ``algo.proposal`` (the proposal protocol of ``docs/DESIGN.md``, a registered submodule, so
    ``state_dict`` keys are ``proposal.<name>``), ``recognition_parameters()``, the shared checks (a
    ``HierarchicalModel``, the minibatch's shape) and the score-function plumbing of the discrete-latent
    methods (one backward pass for theta and phi, dreaming, the sleep-phase loss). Subclasses set
    ``self.hidden`` and ``self.activation`` (:meth:`_set_proposal_options`) and build the proposal with
    :meth:`_build_proposal`.
    """

    capabilities = Capabilities(proposal=True, trained_recognition=True)
    Options = ProposalOptions
    proposal: nn.Module

    #: False where the algorithm reads the model only through ``log_joint``, ``sample`` and its proposal, so that a
    #: model describing its layers by ``proposal_layers()`` (``model_layers``; e.g. a Pyro model) is accepted too
    needs_hierarchical: ClassVar[bool] = True

    def _require_hierarchical(self) -> None:
        """The proposals read the model's layers: a ``HierarchicalModel`` (``wakesleep.build_model``), or, where
        ``needs_hierarchical`` is False, a model with ``proposal_layers()``."""
        if not self.needs_hierarchical and callable(getattr(self.model, "proposal_layers", None)):
            return
        if not hasattr(self.model, "layers") or not hasattr(self.model, "latent_names"):
            raise WakesleepError(f"{self.name}: needs a HierarchicalModel (wakesleep.build_model)")

    def _set_proposal_options(self) -> None:
        """``self.hidden`` (a tuple of widths) and ``self.activation`` from the options."""
        self.hidden = hidden_widths(self.options.proposal_hidden)
        self.activation = self.options.proposal_activation

    def _build_proposal(self) -> nn.Module:
        """The bottom-up :class:`LayeredProposal` of ``self.hidden`` and ``self.activation``."""
        return LayeredProposal(self.model, self.hidden, self.activation)

    def _setup_proposal(self) -> None:
        """Check the model (:meth:`_require_hierarchical`), read the proposal options and build ``self.proposal``."""
        self._require_hierarchical()
        self._set_proposal_options()
        self.proposal = self._build_proposal()

    def _particles(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(log_p, log_q, log_w)``, each ``[K, B]``, of ``self.k`` new particles per row of ``x`` (checked).

        ``log_w = log p - log q`` is detached; ``log_p`` and ``log_q`` carry their graphs (particles detached).
        """
        _, log_p, log_q = log_weights(self.model, self.proposal, self._check_x(x), self.k)
        return log_p, log_q, log_p.detach() - log_q.detach()

    def _importance_weighted_surrogate(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(objective, log_q, log_w)`` of new particles: ``objective = (1/B) sum_b sum_k w~_kb log p(x_b, z_kb)``
        with the self-normalised weights ``w~ = softmax_k(log_w)`` detached (RWS's and VIMCO's wake gradient)."""
        log_p, log_q, log_w = self._particles(x)
        w = torch.softmax(log_w, dim=0)
        return (w * log_p).sum(0).mean(), log_q, log_w

    def _check_x(self, x: Tensor) -> Tensor:
        d = self.model.obs_dim
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != d:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise WakesleepError(f"{self.name}: x must be [batch, {d}], got shape {shape}")
        return x.to(device=self.model.device, dtype=self.model.dtype)

    def recognition_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.proposal.parameters() if p.requires_grad]

    # --- the wake step's work, reused by step_recognition ----------------------------------------------
    _last_wake: tuple[Tensor, WakeGradient] | None = None

    def _keep_wake(self, x: Tensor, grads: WakeGradient) -> WakeGradient:
        """Remember ``wake_gradient``'s result for a ``step_recognition(x)`` that is not given ``wake``."""
        self._last_wake = (x, grads)
        return grads

    def _wake_cache(self, x: Tensor, wake: WakeGradient | None) -> Any:
        """The cache of ``wake`` (what ``wake_gradient`` returned for ``x``), or None: recompute.

        TRANSITION: without ``wake``, the cache of the last ``wake_gradient`` call is used when it was given
        this very tensor ``x`` (callers that predate ``wake=``, e.g. a Trainer that does not pass it, keep the
        one-backward design). Either way the remembered result is dropped, as a stash consumed once.
        """
        last, self._last_wake = self._last_wake, None
        if wake is None and last is not None and last[0] is x:
            wake = last[1]
        return getattr(wake, "cache", None)

    def _joint_gradients(
        self, objective: Tensor, rec_objective: Tensor | None = None
    ) -> tuple[WakeGradient, list[Tensor] | None]:
        """Gradients of ``objective`` w.r.t. the model parameters (keyed by name, zeros where unused, as
        ``Algorithm._grad_dict``) and of ``rec_objective`` w.r.t. the recognition parameters, in one backward pass.

        With detached particles ``objective`` depends on theta only and ``rec_objective`` on phi only, so the
        gradient of their sum w.r.t. (theta, phi) is the pair of gradients.
        """
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        rec = [] if rec_objective is None else self.recognition_parameters()
        outputs = [objective] if rec_objective is None else [objective, rec_objective]
        grads = torch.autograd.grad(outputs, [p for _, p in named] + rec, allow_unused=True)
        theta_grads = grads[: len(named)]
        theta = WakeGradient(
            {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named, theta_grads, strict=True)}
        )
        if rec_objective is None:
            return theta, None
        phi = [torch.zeros_like(p) if g is None else g for p, g in zip(rec, grads[len(named) :], strict=True)]
        return theta, phi

    def _descend(self, ascent: list[Tensor]) -> None:
        """Add ``-ascent`` to ``.grad`` of the recognition parameters (the Trainer's Adam then descends)."""
        for p, g in zip(self.recognition_parameters(), ascent, strict=True):
            p.grad = -g if p.grad is None else p.grad - g

    def dream(self, n: int) -> tuple[list[Tensor], Tensor]:
        """``n`` samples (z, x) from the generative model (no gradient): ``([z_L, ..., z_1], x)``."""
        with torch.no_grad():
            s = self.model.sample(n)
        return s[:-1], s[-1]

    def _sleep_loss(self, n: int) -> Tensor:
        """-(1/n) sum_s log q(z_s | x_s) on dreamt (z_s, x_s) ~ p: the sleep-phase recognition loss."""
        zs, x = self.dream(n)
        return -self.proposal.log_prob(x, zs).mean()


def log_weights(
    model: nn.Module, proposal: LayeredProposal, x: Tensor, k: int, reparameterize: bool | None = False
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Draw ``k`` particles per data point and return ``(zs, log_p, log_q)``, each of the last two ``[k, B]``.

    With ``reparameterize=False`` (default) the particles carry no gradient: ``log_p`` depends on the model
    parameters only and ``log_q`` on the recognition parameters only.
    """
    zs, log_q = proposal.sample(x, k, reparameterize=reparameterize)
    log_p = model.log_joint(x, zs)
    return zs, log_p, log_q
