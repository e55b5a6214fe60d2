"""The shared shape of every learning algorithm."""

from __future__ import annotations

import torch


class Algorithm:
    """Base class: an objective/estimator for the generative-model gradient, separate from the optimiser.

    Subclasses store hyperparameters in ``__init__`` and set learnt state (recognition weights, regression
    coefficients) in :meth:`sleep` or :meth:`step_recognition`.
    """

    name = "base"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def sleep(self) -> dict[str, float]:
        """Run one sleep phase; return diagnostics. Default: nothing to do."""
        return {}

    def wake_gradient(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Estimate grad_theta (1/B) sum_b log p_theta(x_b), keyed by ``model.named_parameters()`` names."""
        raise NotImplementedError

    def step_recognition(self, x: torch.Tensor) -> dict[str, float]:
        """Update a trained recognition model on the minibatch ``x``; default: nothing to do."""
        return {}

    def recognition_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the trainer optimises for the recognition model (may be empty)."""
        return []

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None

    # helpers -------------------------------------------------------------------------------------------
    def _grad_dict(self, objective: torch.Tensor, retain_graph: bool = False) -> dict[str, torch.Tensor]:
        """Gradient of a scalar surrogate ``objective`` w.r.t. every model parameter (zeros where unused)."""
        names, params = zip(*[(n, p) for n, p in self.model.named_parameters() if p.requires_grad], strict=True)
        grads = torch.autograd.grad(objective, params, allow_unused=True, retain_graph=retain_graph)
        out = {}
        for n, p, g in zip(names, params, grads, strict=True):
            out[n] = torch.zeros_like(p) if g is None else g.detach()
        return out
