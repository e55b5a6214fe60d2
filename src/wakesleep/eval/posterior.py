"""Posteriors p(z | x): NUTS samples (continuous latents, via Pyro), exact Gaussian posteriors of
linear-Gaussian models, and exact posteriors by enumeration for small discrete models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from wakesleep.errors import WakesleepError
from wakesleep.eval._checks import check_positive_int
from wakesleep.eval._model import (
    check_obs,
    family_name,
    latent_configurations,
    layer_kind,
    layers_of,
    linear_gaussian_chain,
    sample_latents,
)

__all__ = [
    "EnumeratedPosterior",
    "GaussianPosterior",
    "nuts_posterior",
    "enumerate_posterior",
    "gaussian_posterior",
]


def _import_pyro() -> Any:
    try:
        import pyro
        import pyro.infer
    except ImportError:  # pragma: no cover - depends on the environment
        raise WakesleepError(
            "nuts_posterior: Pyro is not installed; install the optional extra: pip install 'wakesleep[hmc]'"
        ) from None
    return pyro


def nuts_posterior(
    model: nn.Module,
    x: Any,
    *,
    num_samples: int = 1000,
    warmup: int = 500,
    num_chains: int = 1,
    seed: int = 0,
    init: list[Tensor] | None = None,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    progress: bool = False,
) -> list[Tensor]:
    """Samples of ``p(z | x)`` by the No-U-Turn sampler (Pyro's ``MCMC`` + ``NUTS``).

    The potential is ``-model.log_joint(x, zs)`` on the flattened latents of all layers, so every latent
    layer must be real-valued (Gaussian, Laplace, mixture-of-Gaussians top). Several data points are
    sampled jointly in one chain (their posteriors are independent, so this is exact).

    Parameters
    ----------
    model : HierarchicalModel
        A model with real-valued latents.
    x : array-like
        ``[Dx]`` for one observation or ``[B, Dx]``.
    num_samples : int
        Samples kept per chain.
    warmup : int
        Adaptation steps (step size and diagonal mass matrix) per chain.
    num_chains : int
        Chains, run sequentially and concatenated.
    seed : int
        Seed (Pyro's global RNG is seeded and torch's RNG restored afterwards).
    init : list of Tensor, optional
        Initial latents ``[z_L, ..., z_1]`` (each ``[D_l]`` or ``[B, D_l]``); default: a prior sample.
    target_accept : float
        NUTS target acceptance probability.
    max_tree_depth : int
        NUTS maximum tree depth.
    progress : bool
        Show Pyro's progress bar.

    Returns
    -------
    list of Tensor
        ``[z_L, ..., z_1]``, each ``[num_chains * num_samples, D_l]`` for a single ``x`` or
        ``[num_chains * num_samples, B, D_l]`` for a batch (float64 on the CPU).
    """
    fn = "nuts_posterior"
    pyro = _import_pyro()
    from pyro.infer import MCMC, NUTS

    xt, single = check_obs(model, x, fn, allow_vector=True)
    num_samples = check_positive_int(fn, "num_samples", num_samples)
    warmup = check_positive_int(fn, "warmup", warmup, 0)
    num_chains = check_positive_int(fn, "num_chains", num_chains)
    layers = layers_of(model, fn)
    for layer in layers[:-1]:
        if layer_kind(layer) != "real":
            raise WakesleepError(
                f"{fn}: latent layer {layer.name} is {family_name(layer)}; NUTS needs real-valued latents "
                "(use enumerate_posterior for small discrete models)"
            )
    B = xt.shape[0]
    dims = [layer.dim for layer in layers[:-1]]
    total = sum(dims)

    def unflatten(flat: Tensor) -> list[Tensor]:
        return [z.reshape(B, d) for z, d in zip(torch.split(flat.reshape(B, total), dims, dim=-1), dims, strict=True)]

    def potential(params: dict[str, Tensor]) -> Tensor:
        return -model.log_joint(xt, unflatten(params["z"])).sum()

    out: list[list[Tensor]] = [[] for _ in dims]
    with torch.random.fork_rng(devices=[]):
        for chain in range(num_chains):
            pyro.set_rng_seed(seed + chain)
            if init is None:
                z0 = sample_latents(model, B)
            else:
                if len(init) != len(dims):
                    raise WakesleepError(f"{fn}: init must list {len(dims)} latent tensors [z_L, ..., z_1]")
                z0 = [
                    torch.as_tensor(z, dtype=xt.dtype, device=xt.device).reshape(B, d)
                    for z, d in zip(init, dims, strict=True)
                ]
            flat0 = torch.cat([z.reshape(B, -1) for z in z0], dim=-1).reshape(-1).detach()
            kernel = NUTS(
                potential_fn=potential,
                target_accept_prob=target_accept,
                max_tree_depth=max_tree_depth,
                adapt_step_size=True,
                adapt_mass_matrix=True,
                full_mass=False,
            )
            mcmc = MCMC(
                kernel,
                num_samples=num_samples,
                warmup_steps=warmup,
                initial_params={"z": flat0},
                disable_progbar=not progress,
            )
            mcmc.run()
            samples = mcmc.get_samples()["z"].detach().to("cpu", torch.float64)  # [S, B * total]
            for i, z in enumerate(torch.split(samples.reshape(-1, B, total), dims, dim=-1)):
                out[i].append(z)
    result = [torch.cat(parts) for parts in out]
    return [z[:, 0] for z in result] if single else result


@dataclass(frozen=True)
class GaussianPosterior:
    """Exact Gaussian posterior ``p(z | x)`` of a linear-Gaussian model over the stacked latents.

    Attributes
    ----------
    mean : Tensor
        ``[B, sum D_l]`` posterior means of ``(z_L, ..., z_1)`` stacked (top first).
    cov : Tensor
        ``[sum D_l, sum D_l]`` posterior covariance (the same for every ``x``).
    dims : list of int
        Latent dimensions, top first (to split ``mean`` and ``cov``).
    """

    mean: Tensor
    cov: Tensor
    dims: list[int]

    def split_mean(self) -> list[Tensor]:
        """Posterior means per layer ``[z_L, ..., z_1]``, each ``[B, D_l]``."""
        return list(torch.split(self.mean, self.dims, dim=-1))

    def variances(self) -> list[Tensor]:
        """Marginal posterior variances per layer, each ``[D_l]``."""
        return list(torch.split(torch.diagonal(self.cov), self.dims))


def gaussian_posterior(model: nn.Module, x: Any) -> GaussianPosterior:
    """Exact posterior of a linear-Gaussian chain with a Gaussian top (standard Gaussian conditioning).

    Writing all variables as ``c + A eps`` with ``eps ~ N(0, I)``, the joint covariance is ``A A^T``; then
    ``E[z | x] = m_z + S_zx S_xx^{-1} (x - m_x)`` and ``Cov[z | x] = S_zz - S_zx S_xx^{-1} S_xz``.
    """
    fn = "gaussian_posterior"
    xt, _ = check_obs(model, x, fn)
    chain = linear_gaussian_chain(model, fn)
    if chain.top_means.shape[0] != 1:
        raise WakesleepError(f"{fn}: the top prior is a mixture; the posterior is not Gaussian (use nuts_posterior)")
    c, A = chain.joint_affine(0)
    dx = chain.dims[-1]
    dz = c.numel() - dx
    S = A @ A.T
    Szz, Szx, Sxx = S[:dz, :dz], S[:dz, dz:], S[dz:, dz:]
    L = torch.linalg.cholesky(Sxx)
    K = torch.cholesky_solve(Szx.T, L).T  # S_zx S_xx^{-1}
    x64 = xt.detach().cpu().double()
    mean = c[:dz] + (x64 - c[dz:]) @ K.T
    cov = Szz - K @ Szx.T
    return GaussianPosterior(mean=mean, cov=0.5 * (cov + cov.T), dims=chain.dims[:-1])


@dataclass(frozen=True)
class EnumeratedPosterior:
    """Exact posterior over all latent configurations of a small discrete model.

    Attributes
    ----------
    configs : list of Tensor
        ``[z_L, ..., z_1]``, each ``[C, D_l]``: every joint configuration.
    log_probs : Tensor
        ``[B, C]`` float64 ``log p(z = config | x_b)``.
    log_px : Tensor
        ``[B]`` exact ``log p(x_b)``.
    """

    configs: list[Tensor]
    log_probs: Tensor
    log_px: Tensor

    @property
    def probs(self) -> Tensor:
        """``[B, C]`` posterior probabilities."""
        return self.log_probs.exp()

    def marginals(self) -> list[Tensor]:
        """Posterior means ``E[z_l | x]`` per layer, each ``[B, D_l]``."""
        p = self.probs
        return [p @ z.to(torch.float64) for z in self.configs]


def enumerate_posterior(model: nn.Module, x: Any, *, max_configs: int = 2**16) -> EnumeratedPosterior:
    """Exact ``p(z | x)`` for every joint latent configuration of a small binary/categorical model.

    Parameters
    ----------
    model : HierarchicalModel
        Model whose latents are all Bernoulli or categorical.
    x : array-like
        ``[Dx]`` or ``[B, Dx]`` observations.
    max_configs : int
        Refuse models with more configurations (the result holds ``B x C`` probabilities).

    Returns
    -------
    EnumeratedPosterior
    """
    fn = "enumerate_posterior"
    xt, _ = check_obs(model, x, fn, allow_vector=True)
    configs = latent_configurations(model, fn, max_configs)
    with torch.no_grad():
        lj = model.log_joint(xt, [z[:, None, :] for z in configs]).to(torch.float64).T  # [B, C]
    log_px = torch.logsumexp(lj, dim=1)
    if not bool(torch.isfinite(log_px).all()):
        raise WakesleepError(f"{fn}: some x has zero probability under the model")
    return EnumeratedPosterior(
        configs=[z.cpu() for z in configs], log_probs=(lj - log_px[:, None]).cpu(), log_px=log_px.cpu()
    )
