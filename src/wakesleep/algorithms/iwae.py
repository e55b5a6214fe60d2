"""The importance-weighted autoencoder (Burda, Grosse & Salakhutdinov 2015; seed ``002``,
"Importance-weighted free energy").

With k reparameterised particles z^1..z^k ~ q_phi(z | x) and weights w_s = p_theta(x, z^s) / q_phi(z^s | x),

    L_k(x) = E[ log (1/k) sum_s w_s ]  <=  log p(x)                      (Burda et al. eq. 8; seed 002)

is a lower bound, tighter as k grows (L_1 is the ELBO, L_k -> log p(x)). Its gradient (Burda et al. section 3)

    grad L_k = E[ sum_s w~_s grad log w_s ],     w~_s = w_s / sum_t w_t,

is estimated by differentiating the Monte Carlo bound through the samples: for theta this is the
self-normalised importance-sampling estimate ``sum_s w~_s grad_theta log p(x, z^s)`` of grad log p(x); for
phi the pathwise gradient, or the doubly reparameterised one (Tucker et al. 2019) with
``recognition_gradient="dreg"``, whose signal does not vanish as k grows.

Everything else (posterior structure, supported families, the one-backward Trainer design) is shared with
:mod:`wakesleep.algorithms.vae`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from wakesleep.algorithms.vae import ReparameterizedBound, ReparameterizedOptions, iwae_reduce
from wakesleep.schema import option

__all__ = ["IWAE"]


class IWAE(ReparameterizedBound):
    """Importance-weighted autoencoder: ascends L_k (Burda et al. 2015, eq. 8) in theta and phi.

    Parameters
    ----------
    model : HierarchicalModel
        Every latent layer must be real-valued or positive.
    k : int
        Number of importance samples (Burda et al. use 1, 5, 50; ``k = 1`` is the VAE). Default 5.
    proposal_hidden, proposal_activation, structure, recognition_gradient, proposal, seed, warmup
        See :class:`wakesleep.algorithms.vae.ReparameterizedBound`. With ``recognition_gradient="dreg"`` the
        phi-gradient is ``sum_s sg(w~_s^2) d log w_s / d z^s dz^s/dphi`` (Tucker et al. 2019, DReG).
    """

    name = "iwae"

    @dataclass(frozen=True)
    class Options(ReparameterizedOptions):
        """The options of ``iwae``: those of ``vae`` with ``k`` defaulting to 5 (see ``Parameters``)."""

        k: int = option(5, minimum=1, doc="importance samples (Burda et al. use 1, 5, 50; k = 1 is the VAE)")

    def reduce(self, log_w: Tensor) -> Tensor:
        return iwae_reduce(log_w)

    def _dreg_weights(self, log_w: Tensor):
        w = log_w.softmax(0)
        return w * w
