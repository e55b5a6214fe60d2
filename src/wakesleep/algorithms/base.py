"""The shared shape of every learning algorithm: options, capabilities, the wake gradient's record.

An algorithm is a :class:`torch.nn.Module` whose registered submodules and buffers are its own learnt state
(recognition networks, proposals, flows, regression read-outs), so ``state_dict()``/``load_state_dict()`` and
``.to(device)`` come from :mod:`torch.nn`. The generative model is *not* a submodule: its parameters belong
to the Trainer, and ``algo.parameters()`` / ``algo.state_dict()`` never include them.

Each algorithm declares

* ``Options``: a frozen dataclass of its hyperparameters, fields declared with :func:`wakesleep.schema.option`
  (type, range, default, one line of documentation); :meth:`Algorithm.parse_options` validates a mapping
  against it with one-line :class:`~wakesleep.errors.WakesleepError` s naming ``algorithm.<key>``;
* ``capabilities``: a :class:`Capabilities` record that callers (the Trainer, data parallelism, evaluation)
  read instead of probing attributes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from wakesleep import schema

__all__ = ["Algorithm", "Capabilities", "WakeGradient"]


@dataclass(frozen=True)
class Capabilities:
    """What an algorithm offers beyond ``sleep``/``wake_gradient`` (read by the Trainer, ``distributed``, ``eval``).

    Attributes
    ----------
    proposal : bool
        ``algo.proposal`` is a trained sampling recognition model q(z | x) (the proposal protocol of
        ``docs/DESIGN.md``), usable for importance sampling.
    trained_recognition : bool
        ``algo.recognition_parameters()`` are trained by the Trainer's recognition optimiser through
        ``algo.step_recognition``.
    closed_form_recognition : bool
        The recognition model is fitted inside ``sleep()`` (DDC-HM), with nothing for the Trainer to optimise.
    data_parallel : {"gradients", "statistics"}
        ``"gradients"``: under data parallelism the per-rank gradients are averaged. ``"statistics"``: the
        algorithm sums its sufficient statistics across ranks itself (``set_reducer``) and ``wake_gradient``
        already returns the global gradient on every rank.
    """

    proposal: bool = False
    trained_recognition: bool = False
    closed_form_recognition: bool = False
    data_parallel: Literal["gradients", "statistics"] = "gradients"


class WakeGradient(dict):
    """The result of ``wake_gradient(x)``: ``model.named_parameters()`` name -> gradient estimate (a ``dict``).

    ``cache`` holds what the wake step computed that ``step_recognition(x, wake=...)`` on the same minibatch
    can reuse (particles, log weights, the recognition gradient of the same backward pass); ``None`` when
    there is nothing to reuse. Its content is private to the algorithm that produced it.
    """

    def __init__(self, grads: Mapping[str, torch.Tensor] | None = None, cache: Any = None) -> None:
        super().__init__(grads or {})
        self.cache = cache


class Algorithm(nn.Module):
    """Base class: an objective/estimator for the generative-model gradient, separate from the optimiser.

    Subclasses declare ``Options`` (their hyperparameters) and ``capabilities``, validate and store the
    hyperparameters in ``__init__`` (``Algorithm.__init__`` parses them into ``self.options``), and set learnt
    state (recognition weights, regression coefficients) in :meth:`sleep` or :meth:`step_recognition`.

    Parameters
    ----------
    model : torch.nn.Module
        The generative model (kept as a plain attribute, not a submodule).
    **hyperparameters
        Fields of ``Options``; unknown keys, wrong types and out-of-range values raise
        :class:`~wakesleep.errors.WakesleepError` naming ``algorithm.<key>``.
    """

    name = "base"
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: attributes that hold modules which must not become submodules (their parameters are not the algorithm's)
    _unregistered: ClassVar[frozenset[str]] = frozenset({"model"})

    @dataclass(frozen=True)
    class Options:
        """No hyperparameters."""

    def __init__(self, model: torch.nn.Module, **hyperparameters: Any) -> None:
        super().__init__()
        self.model = model
        self.options = self.parse_options(hyperparameters)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._unregistered:  # the generative model (or a copy of it) is not the algorithm's state
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # --- options --------------------------------------------------------------------------------------
    @classmethod
    def parse_options(cls, options: Mapping[str, Any] | None = None) -> Any:
        """Validate ``options`` against ``cls.Options`` (defaults filled in) and return the record.

        Raises
        ------
        WakesleepError
            One line naming ``algorithm.<key>``: an unknown key, a wrong type, a value out of range.
        """
        return schema.parse(cls.Options, options, "algorithm")

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        """Every option with its default, as plain values (lists, not tuples)."""
        return schema.to_dict(cls.parse_options({}))

    @classmethod
    def from_options(cls, model: torch.nn.Module, options: Any) -> Algorithm:
        """Build the algorithm for ``model`` from an ``Options`` record (e.g. one from :meth:`parse_options`)."""
        if not isinstance(options, cls.Options):
            raise TypeError(f"{cls.__name__}.from_options: expected a {cls.__name__}.Options record")
        return cls(model, **{f.name: getattr(options, f.name) for f in dataclasses.fields(options)})

    # --- the algorithm contract -----------------------------------------------------------------------
    @property
    def global_gradients(self) -> bool:
        """Whether ``wake_gradient`` is already the global gradient under data parallelism
        (``capabilities.data_parallel == "statistics"``; kept for ``wakesleep.distributed``)."""
        return self.capabilities.data_parallel == "statistics"

    def sleep(self) -> dict[str, float]:
        """Run one sleep phase; return diagnostics. Default: nothing to do."""
        return {}

    def wake_gradient(self, x: torch.Tensor) -> WakeGradient:
        """Estimate grad_theta (1/B) sum_b log p_theta(x_b), keyed by ``model.named_parameters()`` names."""
        raise NotImplementedError

    def step_recognition(self, x: torch.Tensor, wake: WakeGradient | None = None) -> dict[str, float]:
        """Update a trained recognition model on the minibatch ``x``; default: nothing to do.

        ``wake`` is what :meth:`wake_gradient` returned for the same ``x``: an algorithm may reuse its cache.
        """
        return {}

    def recognition_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the trainer optimises for the recognition model (may be empty)."""
        return []

    # helpers -------------------------------------------------------------------------------------------
    def _grad_dict(self, objective: torch.Tensor, retain_graph: bool = False) -> WakeGradient:
        """Gradient of a scalar surrogate ``objective`` w.r.t. every model parameter (zeros where unused)."""
        names, params = zip(*[(n, p) for n, p in self.model.named_parameters() if p.requires_grad], strict=True)
        grads = torch.autograd.grad(objective, params, allow_unused=True, retain_graph=retain_graph)
        out = WakeGradient()
        for n, p, g in zip(names, params, grads, strict=True):
            out[n] = torch.zeros_like(p) if g is None else g.detach()
        return out
