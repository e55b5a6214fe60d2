"""Exponential families (sufficient statistics, log-normaliser, sampling) and the mixture-of-Gaussians prior."""

from wakesleep.families.base import ExponentialFamily
from wakesleep.families.mixture import MixtureOfGaussians
from wakesleep.families.standard import Bernoulli, Categorical, Gamma, Gaussian, Laplace, Poisson

FAMILIES = {
    "gaussian": Gaussian,
    "laplace": Laplace,
    "bernoulli": Bernoulli,
    "poisson": Poisson,
    "gamma": Gamma,
    "categorical": Categorical,
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
]
