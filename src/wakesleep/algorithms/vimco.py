"""VIMCO: variational inference for Monte Carlo objectives (Mnih & Rezende 2016).

The objective is the K-sample bound (the importance-weighted free energy of seed ``002``)

    L_K = E_{z_1..K ~ q}[ L^ ],    L^ = log (1/K) sum_k w_k,    w_k = p(x, z_k) / q(z_k | x),

and both gradients are estimated from the same K particles:

* generative: ``grad_theta L^ = sum_k w~_k grad_theta log p(x, z_k)`` (unbiased for grad_theta L_K);
* recognition (score function, particles not reparameterised, so it works for any latent family)::

      grad_phi L_K  ~  sum_k [L^ - L^_{-k}] grad_phi log q(z_k | x)  -  sum_k w~_k grad_phi log q(z_k | x)

  with the leave-one-out baseline ``L^_{-k} = log (1/K) (sum_{j != k} w_j + w^_{-k})``, where the k-th weight
  is replaced by the geometric mean of the others, ``log w^_{-k} = (1/(K-1)) sum_{j != k} log w_j``
  (Mnih & Rezende 2016, section 3). The baseline of particle k does not depend on z_k, so the estimator stays
  unbiased; the learning signals are local to each particle. The second term is ``grad_phi log w_k`` at fixed
  particles (the part of the gradient that does not go through the sampling distribution).

The recognition update runs in :meth:`VIMCO.step_recognition` (Trainer contract), reusing the particles of
the wake gradient of the same minibatch when given its result (``wake=``); ``sleep()`` does nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from wakesleep.algorithms.base import WakeGradient
from wakesleep.algorithms.proposals import ProposalAlgorithm, ProposalOptions
from wakesleep.algorithms.rws import iw_diagnostics
from wakesleep.schema import option

__all__ = ["VIMCO", "vimco_signals"]


def vimco_signals(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-particle learning signals ``L^ - L^_{-k}`` and normalised weights ``w~`` (both ``[K, B]``, detached).

    Parameters
    ----------
    log_w : Tensor
        ``[K, B]`` log importance weights, K >= 2.
    """
    log_w = log_w.detach()
    k = log_w.shape[0]
    bound = torch.logsumexp(log_w, 0) - math.log(k)  # L^, [B]
    loo_geo = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)  # log w^_{-k}, [K, B]
    # matrix M[k, j] = log w_j, with the diagonal replaced by log w^_{-k}
    m = log_w.unsqueeze(0).expand(k, k, *log_w.shape[1:]).clone()
    idx = torch.arange(k, device=log_w.device)
    m[idx, idx] = loo_geo
    baseline = torch.logsumexp(m, 1) - math.log(k)  # L^_{-k}, [K, B]
    return bound.unsqueeze(0) - baseline, torch.softmax(log_w, 0)


class VIMCO(ProposalAlgorithm):
    """VIMCO (Mnih & Rezende 2016) with a layered proposal.

    Parameters
    ----------
    model : HierarchicalModel
        Any model whose latent layers :class:`~wakesleep.algorithms.proposals.LayeredProposal` supports
        (discrete latents are the intended use; continuous ones are handled by the same score-function
        estimator).
    k : int
        Particles per data point, K >= 2 (the leave-one-out baseline needs two).
    proposal_hidden : int or list of int
        Hidden widths of each proposal factor (``0``: affine/logistic, as in the paper's SBN experiments).
    proposal_activation : str
        Hidden nonlinearity of the proposal.
    """

    name = "vimco"
    needs_hierarchical = False  # the model is read only through log_joint and the proposal

    @dataclass(frozen=True)
    class Options(ProposalOptions):
        """The options of ``vimco`` (``k`` at least 2); documented in the class's ``Parameters``."""

        k: int = option(5, minimum=2, doc="particles per data point (the leave-one-out baseline needs two)")

    def __init__(self, model: torch.nn.Module, **hyperparameters: Any) -> None:
        super().__init__(model, **hyperparameters)
        self.k = self.options.k
        self._setup_proposal()

    def surrogate(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(objective_theta, log_q, log_w)``: grad_theta of the first is the wake gradient (batch mean)."""
        return self._importance_weighted_surrogate(x)

    def wake_gradient(self, x: Tensor) -> WakeGradient:
        """Estimate of grad_theta L_K (batch mean): ``sum_k w~_k grad_theta log p(x, z_k)``.

        The recognition gradient of the same particles is taken in the same backward pass and returned in the
        result's ``cache`` for :meth:`step_recognition` (``wake=``) on the same ``x``.
        """
        with torch.enable_grad():
            objective, log_q, log_w = self.surrogate(x)
            grads, q_grads = self._joint_gradients(objective, self.recognition_objective(log_q, log_w))
        grads.cache = (q_grads, log_w)
        return self._keep_wake(x, grads)

    def recognition_objective(self, log_q: Tensor, log_w: Tensor) -> Tensor:
        """Scalar whose grad_phi is the VIMCO estimate of grad_phi L_K (batch mean)."""
        signal, w = vimco_signals(log_w)
        return ((signal - w) * log_q).sum(0).mean()

    def step_recognition(self, x: Tensor, wake: WakeGradient | None = None) -> dict[str, float]:
        """Fill ``.grad`` of the proposal parameters with ``-`` the VIMCO gradient (the Trainer steps Adam).

        With ``wake`` (what :meth:`wake_gradient` returned for the same ``x``) its particles and gradient are
        reused; without it, new particles are drawn (unless the last :meth:`wake_gradient` was given this
        very tensor ``x``: ``ProposalAlgorithm._wake_cache``).
        """
        cached = self._wake_cache(x, wake)
        if cached is not None:  # the wake phase's particles and its gradient
            q_grads, log_w = cached
        else:
            with torch.enable_grad():
                _, log_q, log_w = self._particles(x)
                objective = self.recognition_objective(log_q, log_w)
                q_grads = list(torch.autograd.grad(objective, self.recognition_parameters()))
        self._descend(q_grads)
        return iw_diagnostics(log_w)
