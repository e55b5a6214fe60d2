"""Learning algorithms, one module (DDC-HM: one package) each, all with ``sleep()`` and ``wake_gradient(x)``.

The registry maps a name to ``"module:Class"``; modules are imported only when used. Every class declares its
hyperparameters as ``Options`` (:func:`options_class`, :func:`default_options`, :func:`parse_options`) and what
it offers as ``capabilities`` (:class:`~wakesleep.algorithms.base.Capabilities`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from wakesleep.algorithms.base import Algorithm, Capabilities, WakeGradient
from wakesleep.errors import WakesleepError, import_registered

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Capabilities",
    "WakeGradient",
    "algorithm_class",
    "build_algorithm",
    "default_options",
    "options_class",
    "parse_options",
]

ALGORITHMS: dict[str, str] = {
    "ddc_hm": "wakesleep.algorithms.ddc_hm:DDCHelmholtzMachine",
    "wake_sleep": "wakesleep.algorithms.wake_sleep:WakeSleep",
    "rws": "wakesleep.algorithms.rws:ReweightedWakeSleep",
    "vae": "wakesleep.algorithms.vae:VAE",
    "iwae": "wakesleep.algorithms.iwae:IWAE",
    "vimco": "wakesleep.algorithms.vimco:VIMCO",
    "bbvi": "wakesleep.algorithms.bbvi:BBVI",
    "flow": "wakesleep.algorithms.flow:FlowVAE",
    "al_ws": "wakesleep.algorithms.al_ws:AmortisedLearningWakeSleep",
}


def algorithm_class(name: str) -> type:
    """Return the class registered under ``name``."""
    if name not in ALGORITHMS:
        raise WakesleepError(f"algorithm.name: unknown algorithm {name!r} (known: {', '.join(sorted(ALGORITHMS))})")
    module_name, cls_name = ALGORITHMS[name].split(":")
    return getattr(import_registered(module_name, "algorithm.name", name), cls_name)


def options_class(name: str) -> type:
    """The frozen dataclass of the options of algorithm ``name`` (fields declared with ``schema.option``)."""
    return algorithm_class(name).Options


def default_options(name: str) -> dict[str, Any]:
    """Every option of algorithm ``name`` with its default, as plain values (what a resolved config lists)."""
    return algorithm_class(name).default_options()


def parse_options(name: str, options: Mapping[str, Any] | None = None) -> Any:
    """Validate ``options`` for algorithm ``name`` and return its ``Options`` record (defaults filled in).

    Raises
    ------
    WakesleepError
        One line naming ``algorithm.<key>``: an unknown option, a wrong type or a value out of range.
    """
    return algorithm_class(name).parse_options(options)


def build_algorithm(name: str, model: torch.nn.Module, **options: Any) -> Algorithm:
    """Build the algorithm ``name`` for ``model`` with hyperparameters ``options``.

    Parameters
    ----------
    name : str
        A key of :data:`ALGORITHMS`.
    model : torch.nn.Module
        The generative model (see ``docs/DESIGN.md``, model contract).
    **options
        Hyperparameters of the algorithm, validated against its ``Options`` (:func:`parse_options`); an
        unknown one, a wrong type or a value out of range raises :class:`WakesleepError` naming it.
    """
    cls = algorithm_class(name)
    return cls.from_options(model, cls.parse_options(options))
