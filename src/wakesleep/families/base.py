"""The exponential-family protocol (paper section 3, eq. 15 of the appendix).

A family is *per unit*: ``D`` independent units, each with ``n_stats`` sufficient statistics, so that

    log p(x | eta) = sum_d [ eta_d . S(x_d) + log h(x_d) - A(eta_d) ].

Families know nothing of models or algorithms. We do not build on ``torch.distributions.ExponentialFamily``
(it has no sufficient-statistics method and its natural-parameter API is private); ``to_distribution``
converts to the matching ``torch.distributions`` object for sampling and cross-checks.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ExponentialFamily:
    """Base class of a diagonal exponential family.

    Attributes
    ----------
    name : str
        Registry name used in configs.
    n_stats : int
        Number of sufficient statistics per unit.
    param_size : int
        Number of link outputs per unit (the family's standard parameter; 1 except Categorical).
    param_kind : str
        ``"real"`` if the link output may be any real number, ``"positive"`` if it must be positive.
    support : str
        ``"real"``, ``"binary"``, ``"count"``, ``"positive"`` or ``"categorical"``.
    reparameterizable : bool
        Whether ``to_distribution(eta).rsample`` exists.
    """

    name = "base"
    n_stats = 1
    param_size = 1
    param_kind = "real"
    support = "real"
    reparameterizable = False

    # --- the protocol --------------------------------------------------------------------------------
    def sufficient_statistics(self, x: Tensor) -> Tensor:
        """S(x): ``[..., D] -> [..., D, n_stats]``."""
        raise NotImplementedError

    def log_normalizer(self, eta: Tensor) -> Tensor:
        """A(eta): ``[..., D, n_stats] -> [..., D]``."""
        raise NotImplementedError

    def log_base_measure(self, x: Tensor) -> Tensor:
        """log h(x): ``[..., D] -> [..., D]``."""
        return torch.zeros_like(x)

    def mean_parameters(self, eta: Tensor) -> Tensor:
        """mu = grad A(eta) = E[S(x)] (appendix eq. 18). Default: autograd of :meth:`log_normalizer`."""
        with torch.enable_grad():
            e = eta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.log_normalizer(e).sum(), e)
        return g

    def sample(self, eta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw x ~ p(x | eta): ``[..., D, n_stats] -> [..., D]``."""
        return self.to_distribution(eta).sample()

    def to_distribution(self, eta: Tensor) -> torch.distributions.Distribution:
        """The same distribution as a ``torch.distributions`` object with batch shape ``[..., D]``."""
        raise NotImplementedError

    def natural_from_param(self, param: Tensor, extra: dict[str, Tensor]) -> Tensor:
        """Map the link output (``[..., D * param_size]``) and layer-level parameters to eta."""
        raise NotImplementedError

    def embed(self, x: Tensor) -> Tensor:
        """Vector representation of a value for encoders/recognition (identity unless categorical)."""
        return x

    def embed_dim(self, dim: int) -> int:
        return dim

    # --- derived -------------------------------------------------------------------------------------
    def log_prob(self, x: Tensor, eta: Tensor) -> Tensor:
        """Per-unit log density ``(eta * S(x)).sum(-1) + log h(x) - A(eta)``, shape ``[..., D]``."""
        return (eta * self.sufficient_statistics(x)).sum(-1) + self.log_base_measure(x) - self.log_normalizer(eta)

    def log_prob_sum(self, x: Tensor, eta: Tensor) -> Tensor:
        """``log_prob(x, eta).sum(-1)``: the log density summed over units, shape = broadcast batch shape.

        Same value and gradients as the sum of :meth:`log_prob`; families may override it with a fused kernel
        that does not materialise the per-unit terms (a hot path of the sampling-based algorithms).
        """
        return self.log_prob(x, eta).sum(-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
