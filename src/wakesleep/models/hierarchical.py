"""Deep exponential-family generative models (paper section 3).

p(z_L) p(z_{L-1} | z_L) ... p(z_1 | z_2) p(x | z_1),
log p(z_l | z_{l+1}) = g_l(z_{l+1}; theta_l)^T S_l(z_l) + log h(z_l) - A_l(g_l(z_{l+1}; theta_l)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wakesleep.families import ExponentialFamily, MixtureOfGaussians
from wakesleep.models.links import LinearLink
from wakesleep.ops import linear


class ExpFamLayer(nn.Module):
    """One layer: a family, a link from the parent (``ConstantLink`` at the top) and layer parameters.

    Parameters
    ----------
    name : str
        Layer name (``x`` for the observation, e.g. ``z1``, ``z2`` for latents).
    family : ExponentialFamily
    dim : int
        Number of units.
    link : nn.Module
        Maps the parent's embedded value ``[..., D_parent]`` to ``[..., dim * family.param_size]``.
    extra : dict
        Layer-level parameters (``log_var`` for Gaussian, ``log_shape`` for Gamma) as ``(tensor, learn)``.
    """

    def __init__(self, name: str, family: ExponentialFamily, dim: int, link: nn.Module, extra: dict | None = None):
        super().__init__()
        self.name = name
        self.family = family
        self.dim = dim
        self.link = link
        self._extra_names = []
        for key, (value, learn) in (extra or {}).items():
            if learn:
                self.register_parameter(key, nn.Parameter(value.clone()))
            else:
                self.register_buffer(key, value.clone())
            self._extra_names.append(key)

    @property
    def is_exponential_family(self) -> bool:
        return True

    def extras(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self._extra_names}

    def natural_params(self, parent: Tensor | None) -> Tensor:
        """eta = natural parameter, ``[..., dim, n_stats]`` (``[dim, n_stats]`` at the top)."""
        return self.family.natural_from_param(self.link(parent), self.extras())

    def log_prob(self, value: Tensor, parent: Tensor | None = None) -> Tensor:
        """log p(value | parent) summed over units."""
        link = self.link
        if type(link) is LinearLink and parent is not None:  # the same W z + b, by oneDNN for float32 (_linear)
            param = linear(parent, link.weight, link.bias)
            eta = self.family.natural_from_param(F.softplus(param) if link.softplus else param, self.extras())
        else:
            eta = self.natural_params(parent)
        return self.family.log_prob_sum(value, eta)

    def sample(self, n: int, parent: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        eta = self.natural_params(parent)
        if parent is None:
            eta = eta.expand(n, *eta.shape)
        return self.family.sample(eta, generator=generator)

    def embed(self, value: Tensor) -> Tensor:
        return self.family.embed(value)

    @property
    def embed_dim(self) -> int:
        return self.family.embed_dim(self.dim)


class MixturePriorLayer(nn.Module):
    """Top layer holding a :class:`MixtureOfGaussians` (not an exponential family)."""

    def __init__(self, name: str, prior: MixtureOfGaussians):
        super().__init__()
        self.name = name
        self.prior = prior
        self.dim = prior.dim
        self.family = None

    @property
    def is_exponential_family(self) -> bool:
        return False

    def log_prob(self, value: Tensor, parent: Tensor | None = None) -> Tensor:
        return self.prior.log_prob(value)

    def sample(self, n: int, parent: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        return self.prior.sample(n, generator=generator)

    def embed(self, value: Tensor) -> Tensor:
        return value

    @property
    def embed_dim(self) -> int:
        return self.dim


class ModelBase(nn.Module):
    """What every model shares: ``dtype`` and ``device`` (those of a scalar buffer ``_anchor``, which moves with
    the module) and :meth:`_joint`, the sum of ``log_joint``'s per-layer terms."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_anchor", torch.zeros(()))

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @staticmethod
    def _joint(terms: list[Tensor], per_layer: bool) -> Tensor | list[Tensor]:
        """``terms`` themselves (``per_layer``), else their sum (added top first)."""
        if per_layer:
            return terms
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total


class HierarchicalModel(ModelBase):
    """A deep exponential-family model of any depth (paper section 3).

    Parameters
    ----------
    layers : list of nn.Module
        Top latent first, observation last. The first is a top prior, the rest conditional layers.

    Notes
    -----
    Parameter names are ``layers.<layer name>.<...>`` (e.g. ``layers.x.link.weight``,
    ``layers.x.log_var``). Fixed quantities are buffers, so ``named_parameters()`` lists exactly the
    learnable parameters.
    """

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        if len(layers) < 2:
            raise ValueError("a model needs at least one latent layer and an observation layer")
        self.layers = nn.ModuleDict({layer.name: layer for layer in layers})

    # --- structure -----------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return list(self.layers.keys())

    @property
    def latent_names(self) -> list[str]:
        return self.layer_names[:-1]

    @property
    def dims(self) -> list[int]:
        return [layer.dim for layer in self.layers.values()]

    @property
    def obs_dim(self) -> int:
        return self.dims[-1]

    @property
    def top(self) -> nn.Module:
        return self.layers[self.layer_names[0]]

    @property
    def conditionals(self) -> list[ExpFamLayer]:
        return [self.layers[n] for n in self.layer_names[1:]]

    # --- sampling and densities ----------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Ancestral sample ``[z_L, ..., z_1, x]``, each ``[n, D_l]`` (no gradient)."""
        with torch.no_grad():
            out = [self.top.sample(n, generator=generator)]
            for layer, parent_layer in zip(self.conditionals, list(self.layers.values())[:-1], strict=True):
                out.append(layer.sample(n, parent_layer.embed(out[-1]), generator=generator))
        return out

    def log_joint(self, x: Tensor, zs: list[Tensor], per_layer: bool = False) -> Tensor | list[Tensor]:
        """log p(x, z_1, ..., z_L), broadcasting over leading axes.

        Parameters
        ----------
        x : Tensor
            ``[..., Dx]``.
        zs : list of Tensor
            ``[z_L, ..., z_1]``, each ``[..., D_l]`` (e.g. ``[K, B, D_l]`` for K particles per data point).
        per_layer : bool
            If True return ``[log p(z_L), ..., log p(x | z_1)]``.
        """
        if len(zs) != len(self.layers) - 1:
            raise ValueError(f"log_joint: expected {len(self.layers) - 1} latent layers, got {len(zs)}")
        values = list(zs) + [x]
        layers = list(self.layers.values())
        terms = [layers[0].log_prob(values[0])]
        for i in range(1, len(layers)):
            terms.append(layers[i].log_prob(values[i], layers[i - 1].embed(values[i - 1])))
        return self._joint(terms, per_layer)

    def extra_repr(self) -> str:
        return " -> ".join(
            f"{n}[{layer.dim}, {layer.family.name if layer.family else 'mog'}]" for n, layer in self.layers.items()
        )
