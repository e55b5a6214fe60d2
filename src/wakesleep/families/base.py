"""The exponential-family protocol (paper section 3, eq. 15 of the appendix).

A family is *per unit*: ``D`` independent units, each with ``n_stats`` sufficient statistics, so that

    log p(x | eta) = sum_d [ eta_d . S(x_d) + log h(x_d) - A(eta_d) ].

Families know nothing of models or algorithms. We do not build on ``torch.distributions.ExponentialFamily``
(it has no sufficient-statistics method and its natural-parameter API is private); ``to_distribution``
converts to the matching ``torch.distributions`` object for sampling and cross-checks.

Each family also declares the keys a layer of it takes in a config's ``model:`` section and how those keys
become the layer (the contract that :func:`wakesleep.models.build_model` follows generically):

``Options``
    A frozen, keyword-only option record (:func:`wakesleep.schema.option` fields) of the family's keys,
    e.g. Gaussian's ``variance``. It subclasses ``ExponentialFamily.Options``, which holds ``learn``.
``top_only``
    The names of the keys only a top layer takes (its initial parameter, ``learn``); a conditional layer
    gets its parameter from its link instead. The one key besides ``learn`` is read by :meth:`top_parameter`.
:meth:`from_options`, :meth:`layer_parameters`, :meth:`top_parameter`
    The family object, its layer-level parameters (``log_var``...) and the top layer's initial parameter.
:meth:`in_support` and ``support_text``
    Which observed values the family can explain (checked on data by :meth:`support_violation`).

Adding a family: write the class (the protocol and the members above) and register it in
``wakesleep.families.FAMILIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wakesleep.schema import option


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
    support_text : str
        The support in words, for error messages (e.g. ``"{0, 1}"``).
    top_only : tuple of str
        The keys of :class:`Options` that only a top layer takes.
    """

    name = "base"
    n_stats = 1
    param_size = 1
    param_kind = "real"
    support = "real"
    support_text = "finite real numbers"
    reparameterizable = False

    @dataclass(frozen=True, kw_only=True)
    class Options:
        """The keys of a layer of this family in the ``model:`` section (besides name, family, dim, link keys)."""

        learn: bool = option(True, doc="top layer only: learn its parameter (false: keep it fixed)")

    top_only: tuple[str, ...] = ("learn",)

    # --- building a layer from its options -------------------------------------------------------------
    @classmethod
    def from_options(cls, options: Any) -> ExponentialFamily:
        """The family object of a layer with these (validated) options."""
        return cls()

    def layer_parameters(self, options: Any, dim: int) -> dict[str, tuple[Tensor, bool]]:
        """Layer-level parameters as ``name -> (initial value [dim], learn)`` (e.g. Gaussian's ``log_var``)."""
        return {}

    def top_parameter(self, options: Any) -> float:
        """Initial value of the top layer's standard parameter (the link output), the same for every unit.

        The value of the one key of ``top_only`` besides ``learn`` (e.g. Gaussian's ``mean``); without such a
        key, 1 for a positive parameter and 0 otherwise.
        """
        keys = [k for k in self.top_only if k != "learn"]
        if len(keys) == 1:
            return getattr(options, keys[0])
        return 1.0 if self.param_kind == "positive" else 0.0

    # --- the support, for checking data ------------------------------------------------------------------
    def in_support(self, x: np.ndarray) -> np.ndarray:
        """Boolean mask of the values of ``x`` (a real or integer NumPy array) that the family can produce."""
        return np.isfinite(x)

    def support_violation(self, x: np.ndarray) -> str | None:
        """Describe the first value of ``x`` (``[N, D]``, row-major order) outside the support, or None.

        Parameters
        ----------
        x : numpy.ndarray
            Real, integer or boolean observations, usually ``[N, D]``.

        Returns
        -------
        str or None
            E.g. ``"row 3, column 7: 9.0 is outside the support of a bernoulli observation layer ({0, 1})"``.
        """
        x = np.asarray(x)
        if x.dtype == np.bool_:
            x = x.astype(np.uint8)
        bad = ~np.asarray(self.in_support(x), dtype=bool)
        if not bad.any():
            return None
        pos = np.unravel_index(int(np.argmax(bad)), x.shape)
        value = x[pos]
        where = f"row {pos[0]}, column {pos[1]}" if x.ndim == 2 else f"index {', '.join(str(int(p)) for p in pos)}"
        shown = str(value)  # (str, not format: a float32 shows its shortest repr, e.g. 0.1, not 0.10000000149)
        return f"{where}: {shown} is outside the support of a {self.name} observation layer ({self.support_text})"

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
