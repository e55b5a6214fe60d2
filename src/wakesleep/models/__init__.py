"""Hierarchical generative models (deep exponential families)."""

from wakesleep.models.build import build_model, load_parameters
from wakesleep.models.hierarchical import ExpFamLayer, HierarchicalModel, MixturePriorLayer
from wakesleep.models.pyro_models import from_pyro  # noqa: F401  (Pyro itself is imported when used)

__all__ = ["build_model", "load_parameters", "HierarchicalModel", "ExpFamLayer", "MixturePriorLayer"]
