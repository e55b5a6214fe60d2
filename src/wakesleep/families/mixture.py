"""Mixture-of-Gaussians top prior (paper eq. 13, p(z_2)); not an exponential family."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wakesleep.errors import WakesleepError
from wakesleep.schema import option

_LOG_2PI = math.log(2 * math.pi)


class MixtureOfGaussians(nn.Module):
    """p(z) = sum_m w_m N(z | mu_m, diag(sigma_m^2)).

    Parameters
    ----------
    means : Tensor
        ``[M, D]`` component means.
    std : float or Tensor
        Component standard deviation (scalar, ``[M]`` or ``[M, D]``).
    weights : Tensor, optional
        ``[M]`` mixing weights (default uniform).
    learn : bool
        If False, everything is a buffer (not returned by ``named_parameters``).

    Notes
    -----
    As a top prior of a config (``family: mog``) it takes the keys of :class:`Options`, all top-only, and
    :meth:`from_options` builds it (the same contract as the exponential families', for a top layer).
    """

    @dataclass(frozen=True, kw_only=True)
    class Options:
        """Keys of a ``family: mog`` top layer."""

        means: list[list[float]] | None = option(
            None, doc="component means, each a list of dim numbers (default: all +1 and all -1)"
        )
        std: float = option(1.0, minimum=0.0, exclusive_minimum=True, doc="standard deviation of every component")
        weights: list[float] | None = option(
            None, minimum=0.0, exclusive_minimum=True, doc="mixing weights, one per component (default: uniform)"
        )
        learn: bool = option(False, doc="learn means, standard deviations and weights")

    top_only: tuple[str, ...] = ("means", "std", "weights", "learn")

    @classmethod
    def from_options(cls, options: Any, dim: int, where: str) -> MixtureOfGaussians:
        """The prior of a top layer of ``dim`` units with these (validated) options; errors name ``where``.

        Raises
        ------
        WakesleepError
            If a component mean does not have ``dim`` numbers or the weights do not match the components.
        """
        means = options.means if options.means is not None else [[1.0] * dim, [-1.0] * dim]
        if not means or any(len(m) != dim for m in means):
            raise WakesleepError(f"{where}.means: must be a list of components, each of length dim={dim}")
        means = np.asarray(means, dtype=float)
        weights = options.weights
        if weights is not None:
            if len(weights) != means.shape[0]:
                raise WakesleepError(f"{where}.weights: must be {means.shape[0]} positive numbers")
            weights = torch.as_tensor(np.asarray(weights, dtype=float))
        return cls(torch.as_tensor(means), options.std, weights, learn=options.learn)

    def __init__(self, means: Tensor, std: float | Tensor = 1.0, weights: Tensor | None = None, learn: bool = False):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.get_default_dtype())
        if means.ndim != 2:
            raise ValueError("means must be [components, dim]")
        m, d = means.shape
        log_std = torch.log(torch.as_tensor(std, dtype=means.dtype)).expand(m, d).clone()
        w = torch.full((m,), 1.0 / m) if weights is None else torch.as_tensor(weights, dtype=means.dtype)
        logits = torch.log(w / w.sum())
        reg = (lambda n, t: self.register_parameter(n, nn.Parameter(t))) if learn else self.register_buffer
        reg("means", means)
        reg("log_std", log_std)
        reg("logits", logits)
        self.dim = d
        self.learn = learn

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) summed over units: ``[..., D] -> [...]``."""
        std = self.log_std.exp()
        diff = (z.unsqueeze(-2) - self.means) / std  # [..., M, D]
        comp = (-0.5 * diff * diff - self.log_std - 0.5 * _LOG_2PI).sum(-1)
        return torch.logsumexp(comp + torch.log_softmax(self.logits, -1), dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        probs = torch.softmax(self.logits, -1).detach()
        k = torch.multinomial(probs, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, dtype=self.means.dtype, device=self.means.device, generator=generator)
        return self.means[k] + self.log_std.exp()[k] * eps

    def to_distribution(self) -> torch.distributions.MixtureSameFamily:
        comp = torch.distributions.Independent(torch.distributions.Normal(self.means, self.log_std.exp()), 1)
        return torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=self.logits), comp)
