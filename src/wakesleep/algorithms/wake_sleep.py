"""The classic Helmholtz machine and its wake-sleep algorithm (Dayan et al. 1995; Hinton et al. 1995).

Notation of seed ``003``: layer l's binary units s^l, recognition probabilities q_j^l, generative
probabilities p_j^l. The recognition model is factorised layer by layer (eq. 7), each unit a logistic function
of the layer below (eq. 8) -- a :class:`~wakesleep.algorithms.proposals.LayeredProposal` with affine factors
(``proposal_hidden=0``, the default; hidden layers are allowed).

Variants
--------
``variant="sampled"`` (Hinton et al. 1995)
    *Wake*: z ~ q(z | x) layer by layer (eq. 7); the generative gradient is ``grad_theta log p(x, z)`` at those
    samples (averaged over ``k`` samples per data point). It estimates the gradient of the variational free
    energy, not of log p(x): it is biased towards models whose posterior is close to q.
    *Sleep*: dream (z, x) ~ p and ascend ``grad_phi log q(z | x)`` (the delta rule; each recognition layer is
    fed the *dreamt* layer below). This works for any model the proposal supports (real-valued latents too).
``variant="mean_field"`` (Dayan et al. 1995, seed ``002``'s Helmholtz-machine slide)
    *Wake*: the deterministic mean-field pass of eq. 9, q^l = sigma(phi^l q^{l-1}), q^1 = x; the generative
    gradient is ``-grad_theta F(x)`` of the mean-field free energy of eq. 12 at those means.
    *Sleep* (``q_update="sleep"``): dream (z, x) ~ p and move the mean-field outputs f(x_s) towards z_s
    (``Delta phi ~ sum_s (z_s - f(x_s)) grad f``, in its cross-entropy form for logistic units); or
    (``q_update="free_energy"``) descend eq. 12 w.r.t. phi as well, Dayan et al.'s deterministic machine.
    Needs a sigmoid belief network: every layer Bernoulli.

Free energy (eq. 12)
--------------------
``free_energy(x)`` is the minibatch mean of

    F(x) = sum_l sum_j q_j^l log(q_j^l / p_j^l) + (1 - q_j^l) log((1 - q_j^l) / (1 - p_j^l)),

over every layer including the data layer (q^1 = x, whose term is the reconstruction cross-entropy) and the
top layer (p^L = the prior probabilities sigma(b^L)). It is reported in nats as a *positive* free energy (an
approximate upper bound on -log p(x); lower is better): eq. 12 as printed equates -F with this positive sum
"up to proportionality", which is only right up to the sign. The q_j^l come from eq. 9 and the p_j^l from the
generative activation:

* ``generative_activation=False`` (default): the "obvious analogue" of eq. 9, p_j^l = sigma(sum_k q_k^{l+1}
  theta_kj + b_j), i.e. the model's own link evaluated at the means of the layer above.
* ``generative_activation=True``: eq. 11 as printed,

      p_j^l = (1 - 1 / (1 + sum_k q_k^{l+1} theta_kj)) (1 - prod_k [1 - q_k^{l+1} theta_kj / (1 + theta_kj)]),

  a function of the recognition means q^{l+1} of the layer *above* (eq. 10's ``s^{l-1}`` is the printed
  index; eq. 11 conditions on l+1, which is what the generative direction requires). theta_kj is the model's
  generative weight from unit k of layer l+1 to unit j of layer l (``layers.<l>.link.weight[j, k]``) and the
  bias b_j enters as the weight of an always-on unit (q_0 = 1), the usual convention of eq. 8. Eq. 11 is a
  probability only for non-negative weights (then ``theta / (1 + theta)`` is a noisy-OR link probability);
  elsewhere its value is clipped to [eps, 1 - eps] and the fraction of clipped units is reported as
  ``eq11_clipped``. It changes the *free energy* (and with ``variant="mean_field"`` the wake gradient); the
  model's sampling and ``log_joint`` remain the sigmoid belief network.

Trainer contract: ``sleep()`` does nothing; the sleep-phase recognition update is computed in
:meth:`WakeSleep.step_recognition` on freshly dreamt samples (one dream batch per iteration, so the two
phases alternate at the Trainer's iteration rate, and the Trainer's Adam with ``recognition_lr`` applies
it). The info dict of ``step_recognition`` holds ``free_energy`` (eq. 12, on the minibatch) for sigmoid
belief networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from wakesleep.algorithms.base import WakeGradient
from wakesleep.algorithms.proposals import ProposalAlgorithm, ProposalOptions
from wakesleep.errors import WakesleepError
from wakesleep.schema import option

__all__ = ["WakeSleep", "eq11_activation"]

_EPS = 1e-7


def _bernoulli_entropy(q: Tensor) -> Tensor:
    return -(torch.special.xlogy(q, q) + torch.special.xlogy(1 - q, 1 - q))


def eq11_activation(q_above: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """Generative probabilities of seed ``003`` eq. 11 and a mask of the units where it left [eps, 1 - eps].

    Parameters
    ----------
    q_above : Tensor
        ``[B, K]`` mean activities q^{l+1} of the layer above.
    weight : Tensor
        ``[J, K]`` generative weights, ``theta_kj = weight[j, k]``.
    bias : Tensor, optional
        ``[J]``, the weights of an always-on unit.

    Returns
    -------
    p, clipped : Tensor, Tensor
        ``[B, J]`` probabilities clipped to [eps, 1 - eps] and the boolean mask of clipped entries.
    """
    theta = weight.T  # [K, J]
    q = q_above
    if bias is not None:  # the always-on unit q_0 = 1 with weights theta_0j = b_j
        q = torch.cat([q, torch.ones_like(q[..., :1])], -1)
        theta = torch.cat([theta, bias.unsqueeze(0)], 0)
    total = q @ theta  # sum_k q_k theta_kj, [B, J]
    den = 1 + total
    den = torch.where(den.abs() < _EPS, torch.full_like(den, _EPS), den)
    first = 1 - 1 / den
    tden = 1 + theta
    tden = torch.where(tden.abs() < _EPS, torch.full_like(tden, _EPS), tden)
    link = theta / tden  # theta_kj / (1 + theta_kj), [K, J]
    prod = torch.prod(1 - q.unsqueeze(-1) * link, dim=-2)  # [B, J]
    p = first * (1 - prod)
    clipped = ~((p >= _EPS) & (p <= 1 - _EPS))
    p = torch.nan_to_num(p, nan=0.5).clamp(_EPS, 1 - _EPS)
    return p, clipped


class WakeSleep(ProposalAlgorithm):
    """The classic Helmholtz machine trained by wake-sleep (seed ``003`` eqs. 7-12).

    Parameters
    ----------
    model : HierarchicalModel
        A sigmoid belief network (all layers Bernoulli) for ``variant="mean_field"`` and the eq. 12 free energy;
        ``variant="sampled"`` accepts any model the layered proposal supports.
    variant : {"sampled", "mean_field"}
        Stochastic wake-sleep (Hinton et al. 1995) or the deterministic mean-field machine (eq. 9).
    k : int
        Recognition samples per data point in the sampled wake phase.
    q_update : {"sleep", "free_energy"}
        Recognition update: the sleep phase (both variants) or, for ``mean_field`` only, descent on eq. 12.
    generative_activation : bool
        Use eq. 11 for p_j^l in the free energy (see the module docstring).
    sleep_samples : int, optional
        Dreamt samples per sleep phase (default: the minibatch size).
    proposal_hidden : int or list of int
        Hidden widths of each recognition factor (``0``: logistic, eq. 8).
    proposal_activation : str
        Hidden nonlinearity of the recognition factors.
    """

    name = "wake_sleep"

    @dataclass(frozen=True)
    class Options(ProposalOptions):
        """The options of ``wake_sleep`` (``k`` defaults to 1); documented in the class's ``Parameters``."""

        k: int = option(1, minimum=1, doc="recognition samples per data point in the sampled wake phase")
        variant: Literal["sampled", "mean_field"] = option(
            "sampled", doc="stochastic wake-sleep (Hinton et al. 1995) or the mean-field machine (eq. 9)"
        )
        q_update: Literal["sleep", "free_energy"] = option(
            "sleep", doc="recognition update: the sleep phase, or (mean_field only) descent on eq. 12"
        )
        generative_activation: bool = option(False, doc="eq. 11 for p_j^l in the free energy")
        sleep_samples: int | None = option(
            None, minimum=1, doc="dreamt samples per sleep phase (null: the minibatch size)"
        )

        def validate(self, prefix: str) -> None:
            if self.q_update == "free_energy" and self.variant != "mean_field":
                raise WakesleepError(f"{prefix}.q_update 'free_energy' needs variant mean_field")

    def __init__(self, model: torch.nn.Module, **hyperparameters: Any) -> None:
        super().__init__(model, **hyperparameters)
        o = self.options
        self.variant, self.q_update, self.k = o.variant, o.q_update, o.k
        self.generative_activation, self.sleep_samples = o.generative_activation, o.sleep_samples
        self._setup_proposal()
        layers = list(model.layers.values())
        self.is_sbn = all(
            getattr(layer, "family", None) is not None and layer.family.name == "bernoulli" for layer in layers
        )
        if (self.variant == "mean_field" or self.generative_activation) and not self.is_sbn:
            raise WakesleepError(
                "wake_sleep: variant mean_field and generative_activation need a sigmoid belief network "
                "(every layer bernoulli)"
            )
        if self.generative_activation and not all(
            hasattr(layer.link, "weight") and layer.link.weight.ndim == 2 for layer in layers[1:]
        ):
            raise WakesleepError("wake_sleep: generative_activation (eq. 11) needs linear links (link: linear)")
        self.last_eq11_clipped = 0.0

    # --- mean field (eqs. 9, 11, 12) ------------------------------------------------------------------
    def _mean_field_logits(self, x: Tensor) -> list[Tensor]:
        """Logits of eq. 9's mean-field recognition pass, **top first**, each ``[B, D_l]``."""
        u, logits = x, []
        for factor in self.proposal.factors:
            out = factor.params(u)
            logits.append(out)
            u = torch.sigmoid(out)
        return logits[::-1]

    def free_energy(self, x: Tensor, per_example: bool = False, detach_q: bool = False) -> Tensor:
        """The mean-field free energy of eq. 12 (nats, positive; minibatch mean unless ``per_example``).

        Differentiable w.r.t. the generative and (unless ``detach_q``) the recognition parameters.
        """
        if not self.is_sbn:
            raise WakesleepError("wake_sleep.free_energy: eq. 12 needs a sigmoid belief network")
        x = self._check_x(x)
        layers = list(self.model.layers.values())
        qs = [torch.sigmoid(lg) for lg in self._mean_field_logits(x)]  # eq. 9
        qs = [q.detach() for q in qs] if detach_q else qs
        qs = qs + [x]  # q^1 = x
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        clipped, units = 0, 0
        for i, (layer, q) in enumerate(zip(layers, qs, strict=True)):
            neg_entropy = -_bernoulli_entropy(q).sum(-1)
            if i == 0:  # top layer: the prior probabilities
                eta = layer.natural_params(None)[..., 0]
                cross = -(q * eta - F.softplus(eta)).sum(-1)
            elif not self.generative_activation:  # the "obvious analogue" of eq. 9
                eta = layer.natural_params(qs[i - 1])[..., 0]
                cross = -(q * eta - F.softplus(eta)).sum(-1)
            else:  # eq. 11
                p, mask = eq11_activation(qs[i - 1], layer.link.weight, layer.link.bias)
                cross = -(q * torch.log(p) + (1 - q) * torch.log1p(-p)).sum(-1)
                clipped, units = clipped + int(mask.sum()), units + mask.numel()
            total = total + neg_entropy + cross
        if units:
            self.last_eq11_clipped = clipped / units
        return total if per_example else total.mean()

    # --- wake -----------------------------------------------------------------------------------------
    def surrogate(self, x: Tensor) -> Tensor:
        """Scalar whose grad_theta is the wake-phase generative gradient (minibatch mean)."""
        x = self._check_x(x)
        if self.variant == "mean_field":
            return -self.free_energy(x, detach_q=True)
        with torch.no_grad():
            zs, _ = self.proposal.sample(x, self.k)
        return self.model.log_joint(x, zs).mean()

    def wake_gradient(self, x: Tensor) -> WakeGradient:
        """Wake phase: ``grad_theta log p(x, z)`` at z ~ q (sampled) or ``-grad_theta F`` of eq. 12 (mean field)."""
        with torch.enable_grad():
            return self._grad_dict(self.surrogate(x))

    # --- sleep ----------------------------------------------------------------------------------------
    def recognition_loss(self, x: Tensor) -> Tensor:
        """Loss whose grad_phi is minus the recognition update (sleep phase, or eq. 12 for ``free_energy``)."""
        if self.q_update == "free_energy":
            return self.free_energy(x)
        n = self.sleep_samples or x.shape[0]
        if self.variant == "sampled":
            return self._sleep_loss(n)
        zs, xd = self.dream(n)  # mean field: move f(x_s) of eq. 9 towards the dreamt z_s
        loss = 0.0
        for logit, z in zip(self._mean_field_logits(xd), zs, strict=True):
            loss = loss + (F.softplus(logit) - z * logit).sum(-1).mean()
        return loss

    def step_recognition(self, x: Tensor, wake: WakeGradient | None = None) -> dict[str, float]:
        """Fill ``.grad`` of the recognition parameters (never the model's); report eq. 12's free energy.

        The sleep phase dreams its own samples: ``wake`` is accepted for the common signature and not used.
        """
        params = self.recognition_parameters()
        with torch.enable_grad():
            loss = self.recognition_loss(x)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        info = {"recognition_loss": float(loss.detach())}
        if self.is_sbn:
            with torch.no_grad():
                info["free_energy"] = float(self.free_energy(x))
            if self.generative_activation:
                info["eq11_clipped"] = self.last_eq11_clipped
        return info
