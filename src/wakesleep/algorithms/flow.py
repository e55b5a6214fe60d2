"""VAE with a normalising-flow posterior (Rezende & Mohamed 2015; seed ``002``, "Useful fs").

Posterior
---------
The base is the bottom-up layered posterior of the VAE (:class:`LayeredProposal`),

    q_0(z^0 | x) = q_0(z_1^0 | x) q_0(z_2^0 | z_1^0) ... q_0(z_L^0 | z_{L-1}^0),

and every real-valued latent layer l is then pushed through its own cascade of ``flow_length`` planar or
radial flows (:mod:`wakesleep.algorithms.flows`), ``z_l = F_l(z_l^0; x)``. Given x this is a block-diagonal
bijection of the whole latent vector, so (R&M eqs. 6 and 13; seed ``002``)

    log q(z | x) = log q_0(z^0 | x) - sum_l sum_k log |det df_{l,k} / dz_{l,k-1}|.

With ``structure="top_down"`` the base is :class:`TopDownProposal` instead (same construction, the
base of z_l conditioned on the base sample of z_{l+1}). Positive latents (log-normal factors) are left
untransformed. With ``amortized=True`` (default) the flow
parameters of every layer are an affine function of recognition features c(x) (an MLP of x with the
proposal's hidden widths ``proposal_hidden``), as in R&M section 4.2; with ``amortized=False`` they are global.

Note that the base of layer l+1 is conditioned on the base sample z_l^0 = F_l^{-1}(z_l; x), a deterministic
function of (z_l, x), so the density above is exact. Planar and radial flows have no closed-form inverse,
so this posterior can be *sampled* (with its log-density) but ``log_prob`` at arbitrary z is not available;
hence ``recognition_gradient="dreg"`` is not offered.

Objective: the reparameterised ELBO averaged over ``k`` samples (R&M eq. 15; seed ``002``:
``F ~ (1/S) sum_s log p(x, f_K(...f_1(z_0^s))) + H[q_0] + (1/S) sum_s sum_k log|grad f_k|``, with H[q_0]
estimated by -log q_0 at the same samples). Training is as in :mod:`wakesleep.algorithms.vae`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from wakesleep.algorithms.flows import FlowCascade
from wakesleep.algorithms.vae import ReparameterizedBound, ReparameterizedOptions, elbo_reduce
from wakesleep.errors import WakesleepError
from wakesleep.models.links import mlp
from wakesleep.schema import option

__all__ = ["FlowProposal", "FlowVAE"]


class FlowProposal(nn.Module):
    """A layered base proposal followed by a flow cascade per real-valued latent layer (module docstring).

    Parameters
    ----------
    model : HierarchicalModel
    base : nn.Module
        A :class:`LayeredProposal` (``kinds`` attribute, reparameterised ``sample``).
    flow_type : {"planar", "radial"}
    flow_length : int
        Flows per real-valued latent layer.
    amortized : bool
        Flow parameters from recognition features of x (True) or global (False).
    hidden : tuple of int
        Widths of the feature MLP c(x) for amortised flows (``()``: c(x) is the embedded x itself).
    activation : str
    generator : torch.Generator, optional
        For the initial flow parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        base: nn.Module,
        flow_type: str = "planar",
        flow_length: int = 4,
        amortized: bool = True,
        hidden: tuple[int, ...] = (100,),
        activation: str = "tanh",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.base = base
        self._obs_layer = [list(model.layers.values())[-1]]  # plain list: the model is not a submodule
        self.latent_names = list(model.latent_names)
        self.amortized = bool(amortized)
        context_dim = None
        if self.amortized:
            in_dim = int(self._obs_layer[0].embed_dim)
            self.context = mlp(in_dim, hidden, activation)
            context_dim = hidden[-1] if hidden else in_dim
        else:
            self.context = None
        flows = {}
        for name, kind, dim in zip(self.latent_names, base.kinds, model.dims[:-1], strict=True):
            if kind == "gaussian":
                flows[name] = FlowCascade(dim, flow_type, flow_length, context_dim, generator)
        if not flows:
            raise WakesleepError("flow: the model has no real-valued latent layer to put a flow on")
        self.flows = nn.ModuleDict(flows)
        self.to(dtype=model.dtype, device=model.device)

    @property
    def reparameterized(self) -> bool:
        return bool(getattr(self.base, "reparameterized", True))

    def sample(self, x: Tensor, k: int = 1) -> tuple[list[Tensor], Tensor]:
        """``k`` particles per data point: ``([z_L, ..., z_1] each [k, B, D_l], log q [k, B])``."""
        zs0, log_q = self.base.sample(x, k)
        c = self.context(self._obs_layer[0].embed(x)) if self.amortized else None
        zs = []
        for name, z in zip(self.latent_names, zs0, strict=True):
            if name in self.flows:
                z, log_det = self.flows[name](z, c)
                log_q = log_q - log_det
            zs.append(z)
        return zs, log_q

    def extra_repr(self) -> str:
        return f"amortized={self.amortized}, flow_layers={list(self.flows)}"


class FlowVAE(ReparameterizedBound):
    """VAE whose posterior is a layered Gaussian base pushed through planar or radial flows (R&M 2015).

    Parameters
    ----------
    model : HierarchicalModel
        Latents must be real-valued or positive; real-valued layers get flows.
    flow_type : {"planar", "radial"}
        R&M eqs. 10-12 (planar) or eq. 14 (radial), with the invertibility constraints of their appendix A.
    flow_length : int
        Number of flows K per real-valued latent layer.
    amortized : bool
        Flow parameters output from recognition features of x (default) or global.
    k : int
        Samples averaged in the ELBO.
    proposal_hidden, proposal_activation, structure, seed, warmup
        See :class:`wakesleep.algorithms.vae.ReparameterizedBound` (``proposal_hidden`` also sets the feature MLP of
        amortised flows).
    recognition_gradient : {"total"}
        Only ``total``: the flow posterior has no ``log_prob`` at arbitrary z (module docstring).
    proposal : nn.Module, optional
        A custom *base* proposal (default: :class:`LayeredProposal`).
    """

    name = "flow"

    @dataclass(frozen=True)
    class Options(ReparameterizedOptions):
        """The options of ``flow``: those of ``vae`` (``recognition_gradient`` only ``total``, ``proposal`` the
        base) and the flows' (see ``Parameters``)."""

        recognition_gradient: Literal["total"] = option(
            "total", doc="only total: a flow posterior has no log_prob at arbitrary z, which dreg needs"
        )
        proposal: Any = option(None, doc="a custom base proposal module, pushed through the flows (Python API only)")
        flow_type: Literal["planar", "radial"] = option(
            "planar", doc="R&M eqs. 10-12 (planar) or eq. 14 (radial), constrained to be invertible"
        )
        flow_length: int = option(4, minimum=1, doc="flows per real-valued latent layer")
        amortized: bool = option(True, doc="flow parameters from recognition features of x (true) or global")

    @property
    def flow_type(self) -> str:
        return self.options.flow_type

    @property
    def flow_length(self) -> int:
        return self.options.flow_length

    @property
    def amortized(self) -> bool:
        return self.options.amortized

    def _given_proposal(self) -> nn.Module | None:
        return None  # the ``proposal`` option is the flows' base (``_build_proposal``)

    def _build_proposal(self) -> nn.Module:
        base = self.options.proposal if self.options.proposal is not None else super()._build_proposal()
        return FlowProposal(
            self.model, base, self.flow_type, self.flow_length, self.amortized, self.hidden, self.activation
        )

    def reduce(self, log_w: Tensor) -> Tensor:
        return elbo_reduce(log_w)
