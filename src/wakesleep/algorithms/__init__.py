"""Learning algorithms, one module each, all with ``sleep()`` and ``wake_gradient(x)``.

The registry maps a name to ``"module:Class"``; modules are imported only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from wakesleep.errors import WakesleepError

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
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise WakesleepError(f"algorithm.name: {name!r} is not available in this version") from None
        raise
    return getattr(module, cls_name)


def build_algorithm(name: str, model: torch.nn.Module, **options: Any):
    """Build the algorithm ``name`` for ``model`` with hyperparameters ``options``.

    Parameters
    ----------
    name : str
        A key of :data:`ALGORITHMS`.
    model : torch.nn.Module
        The generative model (see ``docs/DESIGN.md``, model contract).
    **options
        Hyperparameters of the algorithm; an unknown one raises :class:`WakesleepError`.
    """
    cls = algorithm_class(name)
    import inspect

    params = inspect.signature(cls.__init__).parameters
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not accepts_kwargs:
        unknown = sorted(set(options) - set(params) - {"self"})
        if unknown:
            raise WakesleepError(
                f"algorithm.{unknown[0]}: unknown option for {name!r} "
                f"(known: {', '.join(k for k in params if k not in ('self', 'model'))})"
            )
    return cls(model, **options)
