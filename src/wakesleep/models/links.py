"""Links g_l(z_{l+1}; theta_l): parent value -> the family's standard parameter (paper section 3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wakesleep.ops import linear

LINKS = ("linear", "softplus_linear", "mlp")

#: the hidden nonlinearities of MLPs (links, proposals, encoders), by name
ACTIVATION_MODULES = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "sigmoid": nn.Sigmoid}


def mlp(in_dim: int, hidden: Sequence[int], activation: str = "tanh", out_dim: int | None = None) -> nn.Sequential:
    """``Linear, activation`` per hidden width, then a final ``Linear`` to ``out_dim`` (None: none).

    The output width is ``out_dim``, else the last hidden width (``in_dim`` without hidden layers).
    """
    mods: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        mods += [nn.Linear(d, h), ACTIVATION_MODULES[activation]()]
        d = h
    if out_dim is not None:
        mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class LinearLink(nn.Module):
    """``W z + b`` (optionally followed by softplus for positive parameters: the paper's ``softplus(B z2)``)."""

    def __init__(
        self, in_dim: int, out_dim: int, bias: bool = True, softplus: bool = False, init_std: float | None = None
    ):
        super().__init__()
        std = init_std if init_std is not None else 1.0 / max(in_dim, 1) ** 0.5
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) * std)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_dim))
        else:
            self.register_parameter("bias", None)
        self.softplus = softplus

    def forward(self, z: Tensor) -> Tensor:
        out = linear(z, self.weight, self.bias)  # F.linear, with large float32 CPU products done by oneDNN
        return F.softplus(out) if self.softplus else out

    @property
    def is_affine(self) -> bool:
        """Whether the output is the affine map ``W z + b`` itself (no softplus), linear in ``(W, b)``."""
        return not self.softplus

    def affine_weight_bias(self) -> tuple[Tensor, Tensor | None]:
        """``(W [out, in], b [out] or None)`` of an affine link (:attr:`is_affine`): the output is ``W z + b``."""
        if not self.is_affine:
            raise ValueError("affine_weight_bias: the link applies softplus, so it is not affine")
        return self.weight, self.bias


class MLPLink(nn.Module):
    """A multilayer perceptron; a final softplus when the family's parameter must be positive."""

    def __init__(self, in_dim: int, out_dim: int, hidden: list[int], activation: str = "tanh", softplus: bool = False):
        super().__init__()
        self.net = mlp(in_dim, hidden, activation, out_dim)
        self.softplus = softplus

    def forward(self, z: Tensor) -> Tensor:
        out = self.net(z)
        return F.softplus(out) if self.softplus else out

    @property
    def is_affine(self) -> bool:
        """An MLP is not an affine map of its input (see :attr:`LinearLink.is_affine`)."""
        return False


class ConstantLink(nn.Module):
    """Top layer: g_L(theta_L) = theta_L, a free parameter (softplus-transformed when it must be positive)."""

    def __init__(self, out_dim: int, init: Tensor | None = None, softplus: bool = False, learn: bool = True):
        super().__init__()
        value = torch.zeros(out_dim) if init is None else torch.as_tensor(init, dtype=torch.get_default_dtype())
        if learn:
            self.value = nn.Parameter(value.clone())
        else:
            self.register_buffer("value", value.clone())
        self.softplus = softplus

    def forward(self, z: Tensor | None = None) -> Tensor:
        return F.softplus(self.value) if self.softplus else self.value

    @property
    def is_affine(self) -> bool:
        """A constant has no parent to be affine in (see :attr:`LinearLink.is_affine`)."""
        return False
