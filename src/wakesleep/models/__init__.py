"""Hierarchical generative models (deep exponential families)."""

from wakesleep.models.build import build_model, load_parameters
from wakesleep.models.hierarchical import ExpFamLayer, HierarchicalModel, MixturePriorLayer

__all__ = ["build_model", "load_parameters", "HierarchicalModel", "ExpFamLayer", "MixturePriorLayer"]
