"""Black-box variational inference: score-function ELBO gradients with a control variate (Ranganath et al. 2014).

The objective is the free energy (ELBO) of seed ``002``, ``F(phi, theta) = E_q[log p(x, z) - log q(z | x)]``.
With ``K`` particles ``z_k ~ q(z | x)`` (never reparameterised, so any latent family works):

* generative gradient: ``(1/K) sum_k grad_theta log p(x, z_k)``, an unbiased estimate of grad_theta F;
* recognition gradient, the REINFORCE identity of seed ``002`` (the slide "Sampling")::

      grad_phi F = E_q[ grad_phi log q(z | x) (log p(x, z) - log q(z | x)) ]

  estimated with a control variate ``h = grad_phi log q`` (whose expectation is 0), chosen by ``control_variate``:

  ``"ranganath"`` (default)
      Ranganath et al. (2014, section 3.2): per recognition parameter d, ``f_d = h_d (log p - log q)``,
      ``a*_d = Cov(f_d, h_d) / Var(h_d)`` estimated over the K particles, estimate ``mean_k (f_d - a*_d h_d)``.
      Needs the per-particle gradients: one batched (vmapped) backward pass of 2K vectors through the proposal.
      Estimating a* from the same particles biases the estimate by O(1/K) (as in the paper).
  ``"loo"``
      Per data point leave-one-out baseline: signal ``L_k - mean_{j != k} L_j`` with ``L = log p - log q``;
      exactly unbiased, K >= 2.
  ``"none"``
      The plain score-function estimator.

Rao-Blackwellisation (the paper's other variance reduction) is not implemented: the particles of a layered
proposal are sampled jointly, and every layer's score multiplies the whole log weight.

The recognition update runs in :meth:`BBVI.step_recognition`, reusing the particles of the wake gradient of
the same minibatch when given its result (``wake=``); ``sleep()`` does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from wakesleep.algorithms.base import WakeGradient
from wakesleep.algorithms.proposals import ProposalAlgorithm, ProposalOptions
from wakesleep.errors import WakesleepError
from wakesleep.schema import option

__all__ = ["BBVI"]

CONTROL_VARIATES = ("ranganath", "loo", "none")


class BBVI(ProposalAlgorithm):
    """Score-function (black-box) variational inference with a layered proposal.

    Parameters
    ----------
    model : HierarchicalModel
        Any model whose latent layers :class:`~wakesleep.algorithms.proposals.LayeredProposal` supports.
    k : int
        Particles per data point (at least 2 unless ``control_variate="none"``).
    control_variate : {"ranganath", "loo", "none"}
        See the module docstring.
    proposal_hidden : int or list of int
        Hidden widths of each proposal factor (``0``: affine).
    proposal_activation : str
        Hidden nonlinearity of the proposal.
    """

    name = "bbvi"
    needs_hierarchical = False  # the model is read only through log_joint and the proposal

    @dataclass(frozen=True)
    class Options(ProposalOptions):
        """The options of ``bbvi`` (``k`` at least 2 unless ``control_variate`` is ``none``; see ``Parameters``)."""

        control_variate: Literal["ranganath", "loo", "none"] = option(
            "ranganath", doc="control variate of the score-function estimator (module docstring)"
        )

        def validate(self, prefix: str) -> None:
            minimum = 1 if self.control_variate == "none" else 2
            if self.k < minimum:
                raise WakesleepError(f"{prefix}.k must be an integer >= {minimum}, got {self.k!r}")

    def __init__(self, model: torch.nn.Module, **hyperparameters: Any) -> None:
        super().__init__(model, **hyperparameters)
        self.control_variate, self.k = self.options.control_variate, self.options.k
        self._setup_proposal()

    def surrogate(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(objective_theta, log_q, signal)``: grad_theta of the first is the ELBO gradient (batch mean);
        ``signal = log p - log q`` ``[K, B]`` detached; ``log_q`` carries the graph to the proposal."""
        log_p, log_q, signal = self._particles(x)
        return log_p.mean(0).mean(), log_q, signal

    def wake_gradient(self, x: Tensor) -> WakeGradient:
        """Estimate of grad_theta F (batch mean): ``(1/K) sum_k grad_theta log p(x, z_k)``.

        With ``control_variate`` ``loo`` or ``none`` the recognition gradient of the same particles is taken in
        the same backward pass and returned in the result's ``cache`` for :meth:`step_recognition` (``wake=``)
        on the same ``x``; ``ranganath`` keeps ``log_q`` with its graph for the per-particle gradients instead.
        """
        with torch.enable_grad():
            objective, log_q, signal = self.surrogate(x)
            if self.control_variate == "ranganath":
                grads, kept = self._joint_gradients(objective)[0], log_q
            else:
                grads, kept = self._joint_gradients(objective, self._score_objective(log_q, signal))
        grads.cache = (kept, signal)
        return self._keep_wake(x, grads)

    def _score_objective(self, log_q: Tensor, signal: Tensor) -> Tensor:
        """Scalar whose grad_phi is the ``none``/``loo`` score-function estimate of grad_phi F (batch mean)."""
        k, b = log_q.shape
        if self.control_variate == "loo":
            signal = signal - (signal.sum(0, keepdim=True) - signal) / (k - 1)
        return (signal * log_q).sum() / (k * b)

    def recognition_gradient(self, log_q: Tensor, signal: Tensor) -> list[Tensor]:
        """Estimate of grad_phi F (batch mean) for each proposal parameter, from ``log_q`` and ``L = log p - log q``."""
        params = self.recognition_parameters()
        k, b = log_q.shape
        if self.control_variate in ("none", "loo"):
            return list(torch.autograd.grad(self._score_objective(log_q, signal), params))
        # Ranganath et al. (2014): per-particle f_k = grad (1/B) sum_b L_kb log q_kb and h_k = grad (1/B) sum_b log q_kb
        eye = torch.eye(k, dtype=log_q.dtype, device=log_q.device).unsqueeze(-1)  # [K, K, 1]
        v = torch.cat([eye * signal.unsqueeze(0), eye.expand(k, k, b)], 0) / b  # [2K, K, B]
        grads = torch.autograd.grad(log_q, params, grad_outputs=v, is_grads_batched=True)
        out = []
        for g in grads:
            f, h = g[:k].reshape(k, -1), g[k:].reshape(k, -1)
            fc, hc = f - f.mean(0), h - h.mean(0)
            var = (hc * hc).sum(0)
            a = torch.where(var > 0, (fc * hc).sum(0) / var.clamp_min(torch.finfo(var.dtype).tiny), 0.0)
            out.append((f - a * h).mean(0).reshape(g.shape[1:]))
        return out

    def step_recognition(self, x: Tensor, wake: WakeGradient | None = None) -> dict[str, float]:
        """Fill ``.grad`` of the proposal parameters with ``-`` the ELBO gradient estimate (Trainer steps Adam).

        With ``wake`` (what :meth:`wake_gradient` returned for the same ``x``) its particles are reused;
        without it, new particles are drawn (unless the last :meth:`wake_gradient` was given this very tensor
        ``x``: ``ProposalAlgorithm._wake_cache``).
        """
        cached = self._wake_cache(x, wake)
        with torch.enable_grad():
            if cached is not None:
                kept, signal = cached
                grads = self.recognition_gradient(kept, signal) if self.control_variate == "ranganath" else kept
            else:
                _, log_q, signal = self._particles(x)
                grads = self.recognition_gradient(log_q, signal)
        for p, g in zip(self.recognition_parameters(), grads, strict=True):
            g = -g.detach()
            p.grad = g if p.grad is None else p.grad + g
        return {"elbo": float(signal.mean())}
