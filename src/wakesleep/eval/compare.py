"""Comparing learnt models with data and with each other: the evaluation steps the experiments share.

Sample draws, MMD^2 at a given kernel width, importance-sampled and AIS negative log-likelihoods with their
per-point estimates, the paired difference of two such estimates on the same points, and the references a
model has to beat (Gaussians fitted to real-valued data; independent Bernoulli pixels for binary images).
Used by ``wakesleep experiment patches|sbn`` and ``wakesleep bench sbn``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from wakesleep.errors import WakesleepError

__all__ = [
    "draw_samples",
    "mmd_to",
    "model_nll",
    "nll_estimate",
    "model_ais_nll",
    "paired_nll_difference",
    "gaussian_references",
    "gaussian_reference_nll",
    "independent_pixels",
    "principal_directions",
    "variance_ratio",
]


def draw_samples(model: torch.nn.Module, n: int, seed: int, chunk: int = 5000) -> torch.Tensor:
    """``n`` observations from ``model`` (seeded), on the CPU in float64.

    Parameters
    ----------
    model : torch.nn.Module
        A generative model with ``sample(n, generator=...)`` returning the layers' values (observations last).
    n : int
        Number of observations.
    seed : int
        Seed of the generator (on the model's device).
    chunk : int
        Observations drawn per call (bounds the memory of deep models).

    Returns
    -------
    torch.Tensor
        ``[n, obs_dim]`` float64 on the CPU.
    """
    gen = torch.Generator(device=model.device).manual_seed(int(seed))
    out = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            out.append(model.sample(min(chunk, n - start), generator=gen)[-1].detach().double().cpu())
    return torch.cat(out)


def mmd_to(ref: torch.Tensor, samples: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD^2 between ``ref`` and ``samples`` with a Gaussian kernel of width ``bandwidth``.

    Parameters
    ----------
    ref, samples : torch.Tensor
        ``[n, d]`` and ``[m, d]``.
    bandwidth : float
        The kernel width (the same for every model compared against ``ref``).

    Returns
    -------
    float
    """
    from wakesleep.eval import mmd

    return float(mmd(ref, samples, bandwidth=bandwidth))


def model_nll(model: torch.nn.Module, x: torch.Tensor, k: int, seed: int) -> dict[str, Any] | None:
    """Importance-sampled mean NLL of ``x`` under a model with a Gaussian observation layer and a linear link.

    The proposal is :class:`~wakesleep.eval.loglik.GaussianPosteriorProposal` with ``k`` particles per point.

    Parameters
    ----------
    model : torch.nn.Module
        The learnt model (e.g. the eq. 13 model of the patches experiment).
    x : torch.Tensor
        ``[n, obs_dim]`` points.
    k : int
        Importance particles per point.
    seed : int
        Seed of the proposal and the particles.

    Returns
    -------
    dict or None
        ``nll``, its standard error ``sem``, ``ess_median``, ``k``, ``points`` and the per-point estimates
        ``log_px``; None when the model has no Gaussian observation layer with a linear link.
    """
    from wakesleep.eval import log_likelihood
    from wakesleep.eval.loglik import GaussianPosteriorProposal

    try:
        proposal = GaussianPosteriorProposal(model, seed=seed)
    except WakesleepError:  # not a Gaussian observation layer with a linear link
        return None
    res = log_likelihood(model, x.to(model.dtype), proposal, k=k, seed=seed)
    return {
        "nll": res.nll,
        "sem": res.sem,
        "ess_median": float(res.ess.median()),
        "k": k,
        "points": x.shape[0],
        "log_px": res.log_px.tolist(),
    }


def nll_estimate(
    model: torch.nn.Module,
    algo: Any,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    k: int,
    proposal_steps: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Importance-sampled NLL of ``test_x`` with the algorithm's own proposal, or an evaluation-only one.

    The proposal is the algorithm's recognition model when it can sample (``algo.proposal.sample``);
    otherwise :func:`wakesleep.eval.fit_proposal` trains one on ``train_x`` for ``proposal_steps`` Adam steps
    with the model frozen. Either way the estimate is a stochastic lower bound on log p(x).

    Parameters
    ----------
    model : torch.nn.Module
        The learnt model.
    algo : object
        Its algorithm (its ``proposal`` attribute, if any, is used).
    train_x, test_x : torch.Tensor
        Training points (for an evaluation-only proposal) and the points scored.
    k : int
        Importance samples per point.
    proposal_steps : int
        Adam steps of an evaluation-only proposal.
    seed : int
        Seed of the proposal's training and of the particles.

    Returns
    -------
    dict
        ``nll``, ``sem``, ``k``, ``points``, ``proposal`` (which one), ``ess_median``, ``ess_mean``, ``seconds``
        and the per-point estimates ``log_px``.
    """
    from wakesleep.eval import fit_proposal, log_likelihood

    t0 = time.perf_counter()
    proposal = getattr(algo, "proposal", None)
    kind = "own recognition model"
    if proposal is None or not hasattr(proposal, "sample"):
        proposal = fit_proposal(
            model, train_x.to(device=model.device, dtype=model.dtype), steps=int(proposal_steps), seed=seed
        )
        kind = f"fit_proposal ({proposal_steps} steps, model frozen)"
    x = test_x.to(device=model.device, dtype=model.dtype)
    res = log_likelihood(model, x, proposal, k=int(k), seed=seed)
    ess = res.ess.double()
    return {
        "nll": res.nll,
        "sem": res.sem,
        "k": int(k),
        "points": int(x.shape[0]),
        "proposal": kind,
        "ess_median": float(ess.median()),
        "ess_mean": float(ess.mean()),
        "seconds": time.perf_counter() - t0,
        "log_px": res.log_px.double().tolist(),
    }


def model_ais_nll(model: torch.nn.Module, x: torch.Tensor, settings: dict[str, int], seed: int) -> dict[str, Any]:
    """Mean NLL of ``x`` under a learnt model by annealed importance sampling.

    Parameters
    ----------
    model : torch.nn.Module
        The learnt model.
    x : torch.Tensor
        ``[n, obs_dim]`` points.
    settings : dict
        Keyword arguments of :func:`wakesleep.eval.ais_log_likelihood`: ``chains``, ``temperatures`` and,
        for HMC, ``leapfrog``.
    seed : int
        Seed of the chains.

    Returns
    -------
    dict
        ``nll``, its standard error ``sem``, the median ESS over the chains, the mean acceptance per layer
        (HMC; with Gibbs sweeps the fraction of units changed per sweep), ``kernel``, ``points``, the
        ``settings``, the seconds taken and the per-point estimates ``log_px``.
    """
    from wakesleep.eval import ais_log_likelihood

    t0 = time.perf_counter()
    res = ais_log_likelihood(model, x.to(model.dtype), seed=seed, **settings)
    return {
        "nll": res.nll,
        "sem": res.sem,
        "ess_median": float(res.ess.median()),
        "acceptance": res.acceptance.mean(0).tolist(),
        "kernel": res.kernel,
        "points": x.shape[0],
        **settings,
        "seconds": time.perf_counter() - t0,
        "log_px": res.log_px.tolist(),
    }


def paired_nll_difference(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, float] | None:
    """Mean over the same points of NLL_a - NLL_b, with its standard error.

    The models' per-point likelihoods are strongly correlated, so this is far tighter than the two NLLs'
    own standard errors.

    Parameters
    ----------
    a, b : dict or None
        Two estimates with per-point ``log_px`` (of :func:`model_ais_nll`, :func:`model_nll`, ...).

    Returns
    -------
    dict or None
        ``mean`` and ``sem``; None when either is missing or they cover different numbers of points.
    """
    if not a or not b or "log_px" not in a or "log_px" not in b or len(a["log_px"]) != len(b["log_px"]):
        return None
    d = torch.tensor(b["log_px"], dtype=torch.float64) - torch.tensor(a["log_px"], dtype=torch.float64)
    return {"mean": float(d.mean()), "sem": float(d.std() / math.sqrt(d.numel())) if d.numel() > 1 else math.nan}


def gaussian_references(x: torch.Tensor, n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` samples each from two Gaussians fitted to ``x``: independent pixels, and the full covariance.

    What a model without latent structure reaches (reference rows of a report).

    Parameters
    ----------
    x : torch.Tensor
        ``[N, d]`` training points.
    n : int
        Samples per Gaussian.
    seed : int
        Seed of the draws.

    Returns
    -------
    dict
        ``gaussian_diag`` (means and variances) and ``gaussian_full`` (means and covariance), each ``[n, d]``.
    """
    g = torch.Generator().manual_seed(seed)
    mean = x.mean(0)
    diag = mean + x.std(0) * torch.randn(n, x.shape[1], generator=g, dtype=x.dtype)
    vals, vecs = torch.linalg.eigh(torch.cov(x.T))
    root = vecs * vals.clamp_min(0.0).sqrt()  # root root^T = covariance (also when it is singular)
    full = mean + torch.randn(n, x.shape[1], generator=g, dtype=x.dtype) @ root.T
    return {"gaussian_diag": diag, "gaussian_full": full}


def gaussian_reference_nll(train: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """Exact mean NLL (nats per point) of ``x`` under the two Gaussians of :func:`gaussian_references`.

    The full covariance gets a ridge of 1e-3 of the mean pixel variance, so that it stays proper for few
    training points.

    Parameters
    ----------
    train : torch.Tensor
        ``[N, d]`` points the Gaussians are fitted to.
    x : torch.Tensor
        ``[n, d]`` points scored.

    Returns
    -------
    dict
        ``gaussian_diag`` and ``gaussian_full``.
    """
    mean, cov = train.mean(0), torch.cov(train.T)
    diag = torch.distributions.Normal(mean, cov.diagonal().sqrt()).log_prob(x).sum(-1)
    cov = cov + 1e-3 * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
    full = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)
    return {"gaussian_diag": float(-diag.mean()), "gaussian_full": float(-full.mean())}


def independent_pixels(
    train: torch.Tensor,
    test: torch.Tensor,
    n_mmd: int,
    nll_points: int,
    bandwidth: float,
    seed: int = 50_000,
    ais_points: int = 0,
) -> dict[str, float]:
    """The reference a model of binary images must beat: independent Bernoulli pixels with the training marginals.

    Parameters
    ----------
    train, test : torch.Tensor
        Binary training and test images ``[N, D]``.
    n_mmd : int
        Samples drawn, and test images they are compared with (the models' kernel width ``bandwidth``).
    nll_points : int
        The first test images scored by the exact NLL (marginals clamped to [1e-3, 1 - 1e-3]).
    bandwidth : float
        Gaussian-kernel width of the MMD.
    seed : int
        Seed of the samples.
    ais_points : int
        When positive, also the exact NLL of the first ``ais_points`` test images (``nll_ais_points``).

    Returns
    -------
    dict
        ``mmd2``, ``nll``, ``nll_sem`` and, with ``ais_points``, ``nll_ais_points``.
    """
    p = train.double().mean(0).clamp(1e-3, 1 - 1e-3)
    gen = torch.Generator().manual_seed(int(seed))
    s = torch.bernoulli(p.expand(n_mmd, -1), generator=gen)
    t = test[:nll_points].double()
    nll = -(t * p.log() + (1 - t) * (1 - p).log()).sum(1)
    out = {
        "mmd2": mmd_to(test[:n_mmd].double(), s, bandwidth),
        "nll": float(nll.mean()),
        "nll_sem": float(nll.std() / len(nll) ** 0.5),
    }
    if ais_points > 0:
        t = test[:ais_points].double()
        out["nll_ais_points"] = float(-(t * p.log() + (1 - t) * (1 - p).log()).sum(1).mean())
    return out


def principal_directions(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` leading eigenvectors of the covariance of ``x``, ``[D, k]``.

    Parameters
    ----------
    x : torch.Tensor
        ``[N, D]`` points.
    k : int
        Number of directions.

    Returns
    -------
    torch.Tensor
    """
    _, vecs = torch.linalg.eigh(torch.cov(x.T))
    return vecs[:, -k:]


def variance_ratio(samples: torch.Tensor, x: torch.Tensor, dirs: torch.Tensor) -> float:
    """Total variance of ``samples`` along ``dirs`` over that of ``x``.

    1 for a model with the data's leading covariance, well below 1 for one that learnt little beyond pixel
    variances, well above 1 for one whose variance blew up.

    Parameters
    ----------
    samples, x : torch.Tensor
        Model samples and data, ``[n, D]`` and ``[N, D]``.
    dirs : torch.Tensor
        ``[D, k]`` directions (:func:`principal_directions` of ``x``).

    Returns
    -------
    float
    """
    s, d = samples.double() @ dirs, x @ dirs
    return float(s.var(0).sum() / d.var(0).sum())
