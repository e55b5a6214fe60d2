"""Model introspection shared by the log-likelihood and posterior code: checks, linear-Gaussian structure,
enumeration of discrete latent configurations, ancestral sampling of the latents."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from wakesleep.errors import WakesleepError


def layers_of(model: Any, fn: str) -> list[Any]:
    """The layers (top first, observation last) of a :class:`HierarchicalModel`-like model."""
    layers = getattr(model, "layers", None)
    if layers is None or not hasattr(layers, "values"):
        raise WakesleepError(f"{fn}: the model has no 'layers' (a wakesleep HierarchicalModel is needed)")
    return list(layers.values())


def layer_kind(layer: Any) -> str:
    """``"real"``, ``"binary"``, ``"categorical"``, ``"count"``, ``"positive"`` for a layer's values."""
    fam = getattr(layer, "family", None)
    if fam is None:  # mixture-of-Gaussians top prior
        return "real"
    return str(getattr(fam, "support", "real"))


def family_name(layer: Any) -> str:
    fam = getattr(layer, "family", None)
    return "mog" if fam is None else str(getattr(fam, "name", type(fam).__name__))


def model_dtype_device(model: Any) -> tuple[torch.dtype, torch.device]:
    for p in list(model.parameters()) + list(model.buffers()):
        if p.is_floating_point():
            return p.dtype, p.device
    return torch.get_default_dtype(), torch.device("cpu")


def check_obs(model: Any, x: Any, fn: str, *, allow_vector: bool = False) -> tuple[Tensor, bool]:
    """Validate observations ``x`` against the model; returns ``([B, Dx] tensor, was_vector)``."""
    dtype, device = model_dtype_device(model)
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(x)
    was_vector = False
    if t.ndim == 1 and allow_vector:
        t, was_vector = t[None], True
    obs_dim = layers_of(model, fn)[-1].dim
    if t.ndim != 2:
        raise WakesleepError(f"{fn}: x must be [batch, {obs_dim}], got shape {tuple(t.shape)}")
    if t.shape[1] != obs_dim:
        raise WakesleepError(f"{fn}: x has {t.shape[1]} columns, the model's observation layer has {obs_dim}")
    if t.shape[0] == 0:
        raise WakesleepError(f"{fn}: x has no rows")
    t = t.to(dtype=dtype, device=device)
    if not bool(torch.isfinite(t).all()):
        raise WakesleepError(f"{fn}: x contains NaN or inf values")
    return t, was_vector


# --- ancestral sampling of the latents ----------------------------------------------------------------
def sample_latents(model: Any, n: int) -> list[Tensor]:
    """``[z_L, ..., z_1]``, each ``[n, D_l]``, from the prior (the observation is not sampled)."""
    layers = layers_of(model, "sample_latents")
    with torch.no_grad():
        out = [layers[0].sample(n)]
        for layer, parent in zip(layers[1:-1], layers[:-2], strict=True):
            out.append(layer.sample(n, parent.embed(out[-1])))
    return out


def log_prior(model: Any, zs: list[Tensor]) -> Tensor:
    """log p(z_L, ..., z_1) (no observation term), broadcasting over leading axes."""
    layers = layers_of(model, "log_prior")
    total = layers[0].log_prob(zs[0])
    for i in range(1, len(zs)):
        total = total + layers[i].log_prob(zs[i], layers[i - 1].embed(zs[i - 1]))
    return total


# --- enumeration ---------------------------------------------------------------------------------------
def enumerable_cardinalities(model: Any, fn: str) -> list[int]:
    """Per latent layer, the number of values each unit takes (2 for Bernoulli, C for categorical)."""
    cards = []
    for layer in layers_of(model, fn)[:-1]:
        kind = layer_kind(layer)
        if kind == "binary":
            cards.append(2)
        elif kind == "categorical":
            cards.append(int(layer.family.categories))
        else:
            raise WakesleepError(
                f"{fn}: latent layer {getattr(layer, 'name', '?')} is {family_name(layer)}; "
                "enumeration needs binary (bernoulli) or categorical latents"
            )
    return cards


def latent_configurations(model: Any, fn: str, max_configs: int) -> list[Tensor]:
    """All joint latent configurations ``[z_L, ..., z_1]``, each ``[C, D_l]`` (axis 0: configuration)."""
    layers = layers_of(model, fn)
    cards = enumerable_cardinalities(model, fn)
    dims = [layer.dim for layer in layers[:-1]]
    total = math.prod(c**d for c, d in zip(cards, dims, strict=True))
    if total > max_configs:
        count = str(total) if total < 10**12 else f"about 10^{math.log10(total):.0f}"
        raise WakesleepError(
            f"{fn}: {count} latent configurations exceed max_configs={max_configs} (latent dims {dims})"
        )
    dtype, device = model_dtype_device(model)
    per_unit = [c for c, d in zip(cards, dims, strict=True) for _ in range(d)]
    grid = torch.tensor(list(itertools.product(*[range(c) for c in per_unit])), dtype=dtype, device=device)
    grid = grid.reshape(total, sum(dims))
    return list(torch.split(grid, dims, dim=1))


# --- linear-Gaussian structure -------------------------------------------------------------------------
@dataclass
class LinearGaussianChain:
    """A chain ``z_L ~ sum_c w_c N(mu_c, diag v_c)``, ``v_l = W_l v_{l+1} + b_l + N(0, diag s_l)``.

    Attributes
    ----------
    top_means : Tensor
        ``[C, D_L]`` component means (``C = 1`` for a Gaussian top).
    top_vars : Tensor
        ``[C, D_L]`` component variances.
    top_log_weights : Tensor
        ``[C]`` log mixing weights.
    weights, biases, variances : list of Tensor
        Per conditional layer (top-most first, observation last): ``W [D_l, D_{l+1}]``, ``b [D_l]``,
        ``s [D_l]``.
    dims : list of int
        Dimensions, top first, observation last.
    """

    top_means: Tensor
    top_vars: Tensor
    top_log_weights: Tensor
    weights: list[Tensor]
    biases: list[Tensor]
    variances: list[Tensor]
    dims: list[int]

    def joint_affine(self, component: int = 0) -> tuple[Tensor, Tensor]:
        """All variables ``(z_L, ..., z_1, x)`` as ``c + A eps`` with ``eps ~ N(0, I)``: returns ``(c, A)``.

        ``c`` is ``[sum D]``, ``A`` is ``[sum D, sum D]`` (one noise block per layer), float64.
        """
        total = sum(self.dims)
        offs = [0]
        for d in self.dims:
            offs.append(offs[-1] + d)
        A = torch.zeros(total, total, dtype=torch.float64)
        c = torch.zeros(total, dtype=torch.float64)
        c[: self.dims[0]] = self.top_means[component].double()
        A[: self.dims[0], : self.dims[0]] = torch.diag(self.top_vars[component].double().sqrt())
        for i, (w, b, s) in enumerate(zip(self.weights, self.biases, self.variances, strict=True), start=1):
            lo, hi, plo, phi = offs[i], offs[i + 1], offs[i - 1], offs[i]
            w64 = w.double()
            c[lo:hi] = w64 @ c[plo:phi] + b.double()
            A[lo:hi] = w64 @ A[plo:phi]
            A[lo:hi, lo:hi] += torch.diag(s.double().sqrt())
        return c, A


def affine_gaussian_layer(layer: Any, parent: Any, fn: str, rtol: float = 1e-8) -> tuple[Tensor, Tensor, Tensor]:
    """``(W, b, v)`` of a Gaussian layer whose mean is ``W e(parent) + b`` and whose variance ``v`` does not depend
    on the parent, read off by probing (no parameter names assumed); otherwise a :class:`WakesleepError`."""
    dtype, device = model_dtype_device(layer)
    if family_name(layer) != "gaussian" or layer_kind(parent) != "real":
        raise WakesleepError(
            f"{fn}: layer {layer.name} is {family_name(layer)} given {family_name(parent)}; "
            "a linear-Gaussian model needs gaussian layers with real-valued parents"
        )
    with torch.no_grad():
        dp = parent.dim
        probe = torch.cat([torch.zeros(1, dp), torch.eye(dp)]).to(dtype=dtype, device=device)
        m, v = layer.family.mean_variance(layer.natural_params(probe))
        b = m[0]
        w = (m[1:] - b).T  # [D, Dp]
        g = torch.Generator().manual_seed(0)
        r = torch.randn(3, dp, generator=g).to(dtype=dtype, device=device)
        mr, vr = layer.family.mean_variance(layer.natural_params(r))
        scale = 1.0 + w.abs().max() + b.abs().max()
        eps = rtol if dtype == torch.float64 else max(rtol, 1e-3)
        tol = eps * scale * (1.0 + r.abs().max()) * max(dp, 1) ** 0.5
        if (mr - (r @ w.T + b)).abs().max() > tol:
            raise WakesleepError(f"{fn}: layer {layer.name}'s mean is not affine in its parent (link is not linear)")
        if (vr - v[0]).abs().max() > tol * v[0].abs().max():
            raise WakesleepError(f"{fn}: layer {layer.name}'s variance depends on its parent")
    return w, b, v[0]


def linear_gaussian_chain(model: Any, fn: str, rtol: float = 1e-8) -> LinearGaussianChain:
    """Read a linear-Gaussian chain off a model by probing its layers (no parameter names assumed).

    Each conditional layer must be Gaussian with a mean affine in its parent and a variance that does not
    depend on the parent; the top must be Gaussian or a mixture of Gaussians.
    """
    layers = layers_of(model, fn)
    dtype, device = model_dtype_device(model)
    top = layers[0]
    with torch.no_grad():
        if family_name(top) == "mog":
            prior = top.prior
            means = prior.means.detach()
            var = (2.0 * prior.log_std.detach()).exp().expand_as(means)
            logw = torch.log_softmax(prior.logits.detach(), -1)
        elif family_name(top) == "gaussian":
            m, v = top.family.mean_variance(top.natural_params(None))
            means, var, logw = m[None], v[None], torch.zeros(1, dtype=dtype, device=device)
        else:
            raise WakesleepError(
                f"{fn}: top layer {top.name} is {family_name(top)}; a linear-Gaussian model needs gaussian or mog"
            )
        weights, biases, variances = [], [], []
        for parent, layer in zip(layers[:-1], layers[1:], strict=True):
            w, b, v = affine_gaussian_layer(layer, parent, fn, rtol)
            weights.append(w)
            biases.append(b)
            variances.append(v)
    return LinearGaussianChain(means, var, logw, weights, biases, variances, [layer.dim for layer in layers])
