"""Reweighted wake-sleep (Bornschein & Bengio 2015), K particles, minibatched.

With particles ``z_k ~ q(z | x)`` (k = 1..K) and importance weights ``w_k = p(x, z_k) / q(z_k | x)``
self-normalised to ``w~_k = w_k / sum_j w_j``:

* generative (wake) gradient: ``sum_k w~_k grad_theta log p(x, z_k)``. Its expectation is the gradient of
  the K-sample importance-weighted bound ``L_K = E_q[log (1/K) sum_k w_k]`` (seed ``002``, importance-weighted
  free energy), because the particles do not depend on theta; as K grows it tends to grad log p(x).
* wake-phase q update: ascend ``sum_k w~_k grad_phi log q(z_k | x)``, a self-normalised estimate of
  ``-grad_phi KL(p(z | x) || q(z | x))``;
* sleep-phase q update: ascend ``grad_phi log q(z | x)`` at ``(z, x)`` dreamt from the model (the
  classic sleep phase, ``-grad_phi KL(p(z, x) || q(z | x) p(x))``).

Both q updates run in :meth:`ReweightedWakeSleep.step_recognition` (Trainer contract: the Trainer zeroes and
steps the recognition optimiser); ``sleep()`` does nothing. Given the wake step's result
(``step_recognition(x, wake=grads)``), the wake-phase q update reuses the particles and weights drawn for the
wake gradient of the same minibatch (one set of K particles per iteration, as in the paper), so the weights are
those of the model before the trainer's generative step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from wakesleep.algorithms.base import WakeGradient
from wakesleep.algorithms.proposals import ProposalAlgorithm, ProposalOptions
from wakesleep.errors import WakesleepError
from wakesleep.schema import option

__all__ = ["ReweightedWakeSleep", "iw_diagnostics"]


def iw_diagnostics(log_w: Tensor) -> dict[str, float]:
    """``bound``: minibatch mean of log (1/K) sum_k w_k; ``ess``: mean effective sample size (sum w)^2 / sum w^2."""
    k = log_w.shape[0]
    bound = torch.logsumexp(log_w, 0) - math.log(k)
    w = torch.softmax(log_w, 0)
    ess = 1.0 / (w * w).sum(0)
    return {"bound": float(bound.mean()), "ess": float(ess.mean())}


class ReweightedWakeSleep(ProposalAlgorithm):
    """Reweighted wake-sleep with a layered proposal (Bornschein & Bengio 2015).

    Parameters
    ----------
    model : HierarchicalModel
        Any model whose latent layers :class:`~wakesleep.algorithms.proposals.LayeredProposal` supports.
    k : int
        Particles per data point (K).
    q_update : {"wake", "sleep", "both"}
        Which recognition updates to use; ``both`` adds the two losses.
    sleep_samples : int, optional
        Dreamt samples per sleep-phase q update (default: the minibatch size).
    proposal_hidden : int or list of int
        Hidden widths of each proposal factor (``0``/``[]``: affine, the sigmoid-belief-net recognition model
        of the paper).
    proposal_activation : str
        Hidden nonlinearity of the proposal.
    proposal : nn.Module, optional
        Any proposal (protocol of ``docs/DESIGN.md``: ``sample(x, k, reparameterize)``, ``log_prob(x, zs)``) to
        use instead of the layered one (Python API only), e.g. a Pyro guide
        (:class:`wakesleep.models.pyro_models.PyroGuide`); its parameters are the recognition parameters.

    Notes
    -----
    The model is read only through ``log_joint``, ``sample`` and the proposal (``needs_hierarchical = False``),
    so a model from :func:`wakesleep.models.from_pyro` is accepted.
    """

    name = "rws"
    needs_hierarchical = False

    @dataclass(frozen=True)
    class Options(ProposalOptions):
        """The options of ``rws``; documented in the class's ``Parameters``."""

        q_update: Literal["wake", "sleep", "both"] = option(
            "both", doc="recognition updates: wake-phase (importance weighted), sleep-phase (dreams), or both"
        )
        sleep_samples: int | None = option(
            None, minimum=1, doc="dreamt samples per sleep-phase q update (null: the minibatch size)"
        )
        proposal: Any = option(None, doc="a proposal module to use instead of the layered one (Python API only)")

        def validate(self, prefix: str) -> None:
            if self.proposal is not None and not isinstance(self.proposal, nn.Module):
                raise WakesleepError(
                    f"{prefix}.proposal must be a torch.nn.Module with sample(x, k) and log_prob(x, zs) "
                    f"(Python API only), got {type(self.proposal).__name__}"
                )

    def __init__(self, model: torch.nn.Module, **hyperparameters: Any) -> None:
        super().__init__(model, **hyperparameters)
        o = self.options
        self.k, self.q_update, self.sleep_samples = o.k, o.q_update, o.sleep_samples
        if o.proposal is None:
            self._setup_proposal()
        else:  # a given proposal (e.g. a Pyro guide): the model is read only through log_joint and sample
            self._set_proposal_options()
            self.proposal = o.proposal

    # --- wake -----------------------------------------------------------------------------------------
    def surrogate(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(objective, log_q, log_w)``: grad_theta of ``objective`` is the RWS wake gradient averaged over x.

        ``objective = (1/B) sum_b sum_k w~_kb log p(x_b, z_kb)`` with the weights detached; ``log_q [K, B]``
        carries the graph to the recognition parameters (particles detached) for the wake-phase q update.
        """
        return self._importance_weighted_surrogate(x)

    def wake_gradient(self, x: Tensor) -> WakeGradient:
        """Estimate of grad_theta (1/B) sum_b log p(x_b): the self-normalised importance-weighted gradient.

        The wake-phase q update uses the same particles and weights; its gradient is taken in the same backward
        pass and returned in the result's ``cache`` for :meth:`step_recognition` (``wake=``) on the same ``x``.
        """
        with torch.enable_grad():
            objective, log_q, log_w = self.surrogate(x)
            wake_q = self._wake_q_objective(log_q, log_w) if self.q_update in ("wake", "both") else None
            grads, q_grads = self._joint_gradients(objective, wake_q)
        grads.cache = (q_grads, log_w)
        return self._keep_wake(x, grads)

    # --- recognition ----------------------------------------------------------------------------------
    @staticmethod
    def _wake_q_objective(log_q: Tensor, log_w: Tensor) -> Tensor:
        """``(1/B) sum_b sum_k w~_kb log q(z_kb | x_b)``: its grad_phi is the wake-phase q update."""
        return (torch.softmax(log_w, dim=0) * log_q).sum(0).mean()

    def _fresh_wake_q(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(wake-phase objective, log_w)`` on new particles (when the wake phase's are not given)."""
        with torch.enable_grad():
            _, log_q, log_w = self._particles(x)
        return self._wake_q_objective(log_q, log_w), log_w

    def recognition_loss(self, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The loss whose gradient w.r.t. the proposal parameters is minus the chosen q-update direction
        (on new particles; :meth:`step_recognition` reuses those of the wake phase instead)."""
        info: dict[str, float] = {}
        loss = torch.zeros((), dtype=self.model.dtype, device=self.model.device)
        if self.q_update in ("wake", "both"):
            wake_q, log_w = self._fresh_wake_q(x)
            loss = loss - wake_q
            info.update(iw_diagnostics(log_w))
        if self.q_update in ("sleep", "both"):
            n = self.sleep_samples or x.shape[0]
            sleep_loss = self._sleep_loss(n)
            loss = loss + sleep_loss
            info["sleep_nll"] = float(sleep_loss.detach())
        return loss, info

    def step_recognition(self, x: Tensor, wake: WakeGradient | None = None) -> dict[str, float]:
        """Fill ``.grad`` of the proposal parameters with the q-update loss gradient (the Trainer steps Adam).

        With ``wake`` (what :meth:`wake_gradient` returned for the same ``x``) the wake-phase update reuses its
        particles, weights and gradient; without it, new particles are drawn (unless the last
        :meth:`wake_gradient` was given this very tensor ``x``: ``ProposalAlgorithm._wake_cache``).
        """
        cached = self._wake_cache(x, wake)
        info: dict[str, float] = {}
        with torch.enable_grad():
            if self.q_update in ("wake", "both"):
                if cached is not None:  # the wake phase's particles and its gradient
                    q_grads, log_w = cached
                else:
                    wake_q, log_w = self._fresh_wake_q(x)
                    q_grads = list(torch.autograd.grad(wake_q, self.recognition_parameters()))
                self._descend(q_grads)
                info.update(iw_diagnostics(log_w))
            if self.q_update in ("sleep", "both"):
                sleep_loss = self._sleep_loss(self.sleep_samples or x.shape[0])
                sleep_loss.backward()
                info["sleep_nll"] = float(sleep_loss.detach())
        return info
