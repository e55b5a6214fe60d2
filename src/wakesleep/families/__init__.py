"""Exponential families (sufficient statistics, log-normaliser, sampling) and the mixture-of-Gaussians prior.

``FAMILIES`` names the exponential families a layer of a config may use (any position); ``PRIORS`` names the
top priors that are not exponential families. Each class declares its own config keys (an ``Options``
record, ``top_only``) and how a layer is built from them: see :mod:`wakesleep.families.base`.
"""

from wakesleep.families.base import ExponentialFamily
from wakesleep.families.mixture import MixtureOfGaussians
from wakesleep.families.standard import Bernoulli, Categorical, Gamma, Gaussian, Laplace, Poisson

FAMILIES: dict[str, type[ExponentialFamily]] = {
    "gaussian": Gaussian,
    "laplace": Laplace,
    "bernoulli": Bernoulli,
    "poisson": Poisson,
    "gamma": Gamma,
    "categorical": Categorical,
}

#: Top priors that are not exponential families (only the first layer of a model may use them).
PRIORS: dict[str, type] = {
    "mog": MixtureOfGaussians,
}

__all__ = [
    "ExponentialFamily",
    "Gaussian",
    "Laplace",
    "Bernoulli",
    "Poisson",
    "Gamma",
    "Categorical",
    "MixtureOfGaussians",
    "FAMILIES",
    "PRIORS",
]
