"""References for :mod:`wakesleep.eval.diagnose`: exact enumeration of small binary latent spaces, importance
sampling with the prior as proposal, and AIS posterior samples (:func:`reference_posterior`)."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wakesleep.errors import WakesleepError

__all__ = ["REFERENCES", "MAX_CONFIGURATIONS", "cosine", "family_name", "reference_posterior"]

REFERENCES = ("auto", "enumerate", "ais", "importance")
MAX_CONFIGURATIONS = 2**16  # exact enumeration up to this many joint latent configurations
_CHUNK_ELEMENTS = 2**22  # configurations x points x widest layer per chunk of an enumeration / IS pass


@dataclass
class _Reference:
    grads: dict[str, Tensor]  # float64, keyed by parameter name
    means: list[Tensor]  # E[z_l | x], top first, [B, D_l]
    nll: float | None
    ess: float
    expectations: list[Tensor] | None = None  # E[statistics_l(z_l) | x], top first, [B, K_l]


Statistics = Sequence[Callable[[Tensor], Tensor]]


def _expect(statistics: Statistics | None, particles: list[Tensor], weights: Tensor) -> list[Tensor] | None:
    """E[statistics_l(z_l) | x_b] per latent layer under normalised ``weights``: shared particles ``[S, D_l]`` with
    weights ``[S, B]``, or per-point particles ``[C, B, D_l]`` with weights ``[C, B]``."""
    if statistics is None:
        return None
    if len(statistics) != len(particles):
        raise WakesleepError(f"reference: statistics must be {len(particles)} callables, one per latent layer")
    out = []
    with torch.no_grad():
        for fn, z in zip(statistics, particles, strict=True):
            t = fn(z).double()
            out.append(weights.T @ t if z.ndim == 2 else torch.einsum("cb,cbk->bk", weights, t))
    return out


def cosine(a: Tensor, b: Tensor) -> float:
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else math.nan


def family_name(layer: nn.Module) -> str:
    fam = getattr(layer, "family", None)
    return getattr(fam, "name", "mog") if fam is not None else "mog"


def _configurations(model: nn.Module) -> Tensor | None:
    """Every joint latent configuration ``[C, sum D_l]`` (top first), or None when not enumerable."""
    layers = list(model.layers.values())[:-1]
    values: list[list[float]] = []
    for layer in layers:
        name = family_name(layer)
        if name == "bernoulli":
            values += [[0.0, 1.0]] * int(layer.dim)
        elif name == "categorical":
            values += [[float(c) for c in range(int(layer.family.categories))]] * int(layer.dim)
        else:
            return None
    if math.prod(len(v) for v in values) > MAX_CONFIGURATIONS:
        return None
    return torch.tensor(list(itertools.product(*values)), dtype=torch.float64)


def _split(configs: Tensor, dims: list[int]) -> list[Tensor]:
    return list(torch.split(configs, dims, dim=-1))


def _weighted_reference(
    md: nn.Module,
    x: Tensor,
    particles: list[Tensor],
    proposal_is_prior: bool,
    chunk: int,
    statistics: Statistics | None = None,
) -> _Reference:
    """Posterior expectations under self-normalised weights of particles shared by all points.

    ``particles``: ``[S, D_l]`` per latent layer (top first). The weight of particle s for point b is
    p(x_b, z_s) (enumeration: every configuration once) or p(x_b | z_1s) (prior draws).
    """
    s_total, b = particles[0].shape[0], x.shape[0]

    def log_weights(lo: int, hi: int) -> Tensor:
        zs = [p[lo:hi, None, :].expand(-1, b, -1) for p in particles]
        xs = x.expand(hi - lo, -1, -1)
        if proposal_is_prior:
            return md.log_joint(xs, zs, per_layer=True)[-1]
        return md.log_joint(xs, zs)

    with torch.no_grad():
        lw = torch.cat([log_weights(lo, min(lo + chunk, s_total)) for lo in range(0, s_total, chunk)])  # [S, B]
    log_norm = torch.logsumexp(lw, 0)
    w = torch.exp(lw - log_norm)  # [S, B]
    ess = float((1.0 / (w * w).sum(0)).median())
    nll = float(-(log_norm - (math.log(s_total) if proposal_is_prior else 0.0)).mean())
    means = [w.T @ p for p in particles]
    md.zero_grad()
    for lo in range(0, s_total, chunk):
        hi = min(lo + chunk, s_total)
        zs = [p[lo:hi, None, :].expand(-1, b, -1) for p in particles]
        ((md.log_joint(x.expand(hi - lo, -1, -1), zs) * w[lo:hi]).sum() / b).backward()
    grads = {k: p.grad.detach().clone() for k, p in md.named_parameters() if p.grad is not None}
    return _Reference(grads, means, nll, ess, _expect(statistics, particles, w))


def reference_posterior(
    model: nn.Module,
    x: Tensor,
    kind: str = "auto",
    *,
    chains: int = 16,
    temperatures: int = 1000,
    importance_samples: int = 100_000,
    seed: int = 1,
    statistics: Statistics | None = None,
) -> (
    tuple[str, dict[str, Tensor], list[Tensor], float | None, float]
    | tuple[str, dict[str, Tensor], list[Tensor], float | None, float, list[Tensor]]
):
    """One reference for the wake gradient and the posterior means of ``x`` (module docstring).

    Parameters
    ----------
    model : nn.Module
        A wakesleep :class:`~wakesleep.models.HierarchicalModel`.
    x : Tensor
        ``[B, D_x]`` points.
    kind : {"auto", "enumerate", "ais", "importance"}
        The reference (``auto``: enumeration where at most 2^16 latent configurations, AIS for a sigmoid belief
        network, else importance sampling from the prior).
    chains, temperatures : int
        AIS chains per point and intermediate distributions.
    importance_samples : int
        Prior draws (``importance``).
    seed : int
        Seed of the reference's randomness (the global RNG is restored afterwards).
    statistics : sequence of callables, optional
        One function per latent layer (top first) mapping ``[..., D_l]`` float64 latents to ``[..., K_l]``; when
        given, the result has a sixth element, E[statistics_l(z_l) | x_b] per layer (``[B, K_l]``), e.g. the
        reference posterior's expectations of DDC-HM's encoding functions (eq. 2).

    Returns
    -------
    (kind, grads, means, nll, ess) or (kind, grads, means, nll, ess, expectations)
        The kind used; E_{p(z|x)}[grad_theta log p(x, z)] averaged over the points (float64, keyed by parameter
        name; the exact or estimated gradient of (1/B) sum_b log p(x_b)); E[z_l | x] per latent layer (top first,
        ``[B, D_l]``); the mean NLL of the points the reference implies; the median effective sample size; with
        ``statistics``, the expectations of the statistics.
    """
    if kind not in REFERENCES:
        raise WakesleepError(f"reference: must be one of {', '.join(REFERENCES)}, got {kind!r}")
    md = copy.deepcopy(model).double()
    xd = x.detach().to(device=next(md.parameters()).device, dtype=torch.float64)
    dims = [int(d) for d in md.dims[:-1]]
    configs = _configurations(md) if kind in ("auto", "enumerate") else None
    if kind == "enumerate" and configs is None:
        raise WakesleepError(
            f"reference: enumerate needs Bernoulli or categorical latents with at most {MAX_CONFIGURATIONS} joint "
            "configurations"
        )
    if kind == "auto":
        if configs is not None:
            kind = "enumerate"
        elif all(family_name(layer) == "bernoulli" for layer in list(md.layers.values())[:-1]):
            kind = "ais"
        else:
            kind = "importance"
    chunk_rows = max(1, _CHUNK_ELEMENTS // max(1, xd.shape[0] * max(int(md.obs_dim), *dims)))

    def result(ref: _Reference) -> tuple:
        head = (kind, ref.grads, ref.means, ref.nll, ref.ess)
        return head if statistics is None else (*head, ref.expectations)

    if kind == "enumerate":
        return result(_weighted_reference(md, xd, _split(configs.to(xd.device), dims), False, chunk_rows, statistics))
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        if kind == "importance":
            with torch.no_grad():
                particles = md.sample(int(importance_samples))[:-1]
            particles = [p.reshape(p.shape[0], -1).double() for p in particles]
            return result(_weighted_reference(md, xd, particles, True, chunk_rows, statistics))
        from wakesleep.eval import ais_log_likelihood

        res = ais_log_likelihood(
            model, x.to(model.dtype), chains=chains, temperatures=temperatures, seed=seed, return_samples=True
        )
    finally:
        torch.set_rng_state(state)
    w = torch.softmax(res.log_weights.double(), 0).to(xd.device)  # [C, B]
    zs = [z.double().to(xd.device) for z in res.samples]
    md.zero_grad()
    ((md.log_joint(xd.expand(chains, -1, -1), zs) * w).sum() / xd.shape[0]).backward()
    grads = {k: p.grad.detach().clone() for k, p in md.named_parameters() if p.grad is not None}
    means = [torch.einsum("cb,cbd->bd", w, z) for z in zs]
    return result(_Reference(grads, means, float(res.nll), float(res.ess.median()), _expect(statistics, zs, w)))
