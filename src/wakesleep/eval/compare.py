"""Comparing learnt models with data and with each other: the evaluation steps the experiments share.

Sample draws, MMD^2 at a given kernel width, importance-sampled and AIS negative log-likelihoods with their
per-point estimates, the paired difference of two such estimates on the same points, and the references a
model has to beat (Gaussians fitted to real-valued data; independent Bernoulli pixels for binary images), and
the verdicts of sample tests that can tell (:func:`sample_test_verdicts`: each test of a
:func:`wakesleep.eval.compare_samples` comparison is checked to rank the baseline last before its verdicts on
learned models count). Used by ``wakesleep experiment patches|sbn``, ``wakesleep bench sbn`` and
``benchmarks/sample_test_ranking.py``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from scipy import stats as sps

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
    "independent_pixel_samples",
    "independent_pixel_nll",
    "SAMPLE_TEST_KERNELS",
    "sample_test_verdicts",
    "kernel_ranks_baseline_last",
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
    p = train.double().mean(0).clamp(1e-3, 1 - 1e-3)  # clamped draws, as this baseline has always used
    gen = torch.Generator().manual_seed(int(seed))
    s = torch.bernoulli(p.expand(n_mmd, -1), generator=gen)
    nll = independent_pixel_nll(train, test[:nll_points])
    out = {"mmd2": mmd_to(test[:n_mmd].double(), s, bandwidth), "nll": nll["nll"], "nll_sem": nll["sem"]}
    if ais_points > 0:
        out["nll_ais_points"] = independent_pixel_nll(train, test[:ais_points])["nll"]
    return out


def independent_pixel_samples(train: torch.Tensor, n: int, seed: int = 50_000) -> torch.Tensor:
    """``n`` images of the independent-pixel model: each pixel Bernoulli at its mean over the training images.

    The baseline every model of binary images must beat in a sample test (the marginals are not clamped, so a
    pixel never on in the training images is never on in a sample).

    Parameters
    ----------
    train : torch.Tensor
        ``[N, D]`` training images (binary, or grey levels in [0, 1] whose mean is the binarised images' mean).
    n : int
        Number of images drawn.
    seed : int
        Seed of the draws.

    Returns
    -------
    torch.Tensor
        ``[n, D]`` float64 binary images on the CPU.
    """
    p = train.double().cpu().mean(0)
    return torch.bernoulli(p.expand(int(n), -1), generator=torch.Generator().manual_seed(int(seed)))


def independent_pixel_nll(train: torch.Tensor, x: torch.Tensor) -> dict[str, Any]:
    """Exact NLL of ``x`` under the independent-pixel model of :func:`independent_pixel_samples`.

    The marginals are clamped to ``[1e-3, 1 - 1e-3]`` so that a pixel never on in the training images does
    not give a test image probability 0.

    Parameters
    ----------
    train : torch.Tensor
        ``[N, D]`` training images.
    x : torch.Tensor
        ``[n, D]`` binary images scored.

    Returns
    -------
    dict
        ``nll`` (mean, nats per image), its standard error ``sem``, ``points``, ``exact`` (True) and the
        per-image ``log_px`` (so :func:`paired_nll_difference` pairs it with a model's estimate).
    """
    p = train.double().cpu().mean(0).clamp(1e-3, 1 - 1e-3)
    t = x.double().cpu()
    log_px = (t * p.log() + (1 - t) * (1 - p).log()).sum(1)
    n = log_px.numel()
    return {
        "nll": float(-log_px.mean()) if n else math.nan,
        "sem": float(log_px.std() / math.sqrt(n)) if n > 1 else math.nan,
        "points": n,
        "exact": True,
        "log_px": log_px.tolist(),
    }


#: the fixed-kernel sample tests of :func:`sample_test_verdicts`: name -> (kernel family, scale) of the grid
#: kernel (:meth:`wakesleep.eval.SampleComparison.kernel`); ``power`` and ``power_any`` choose a kernel per pair
SAMPLE_TEST_KERNELS = {"median": ("gaussian", 1.0), "quadratic": ("quadratic", 0.0), "patch": ("patch", 1.0)}


def _as_comparison_dict(comparison: Any) -> dict[str, Any]:
    return comparison if isinstance(comparison, dict) else comparison.to_dict()


def _grid_kernel_name(comp: dict[str, Any], family: str, scale: float) -> str:
    for k in comp["kernels"]:
        if k["family"] == family and math.isclose(k["scale"], scale, rel_tol=1e-9):
            return k["name"]
    raise WakesleepError(f"sample_test_verdicts: the comparison has no {family!r} kernel with scale {scale!r}")


def _find_pair(comp: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    for p in comp["pairs"]:
        if {p["y"], p["z"]} == {a, b}:
            return p
    raise WakesleepError(f"sample_test_verdicts: no pair ({a!r}, {b!r}); candidates are {comp['names']}")


def _pair_verdict(comp: dict[str, Any], test: str, a: str, b: str) -> dict[str, Any]:
    """Which of ``a``, ``b`` the test finds closer to the reference, its one-sided p-value and statistic.

    Fixed kernels: the direction with the smaller p-value (``p_first_closer``: the p-value for ``a``);
    ``power`` / ``power_any``: the kernel and the direction chosen on the selection part.
    """
    pair = _find_pair(comp, a, b)
    if test in ("power", "power_any"):
        pw = pair["power" if test == "power" else "power_unconstrained"]
        t_z = pw["test"]["statistic"]
        return {
            "closer": pair["z"] if pw["closer"] == "z" else pair["y"],
            "p": pw["p_value"],
            "log10_p": pw["log10_p_value"],
            "statistic": t_z if pw["closer"] == "z" else -t_z,
            "kernel": pw["kernel"]["name"],
        }
    kname = _grid_kernel_name(comp, *SAMPLE_TEST_KERNELS[test])
    t_z = pair["by_kernel"][kname]["statistic"]  # H1: pair["z"] closer
    t_a = -t_z if pair["y"] == a else t_z
    closer, t = (a, t_a) if t_a > 0 else (b, -t_a)
    log_p = float(sps.norm.logsf(t))
    return {
        "closer": closer,
        "p": math.exp(log_p),
        "log10_p": log_p / math.log(10.0),
        "statistic": t,
        "p_first_closer": float(sps.norm.sf(t_a)),
        "kernel": kname,
    }


def kernel_ranks_baseline_last(comparison: Any, kernel: str, learned: list[str], level: float = 0.01) -> bool:
    """Whether one grid kernel's fixed-kernel tests on the test part prefer every learned model to the baseline.

    Parameters
    ----------
    comparison : SampleComparison or dict
        :func:`wakesleep.eval.compare_samples` with a ``baseline`` (or its ``to_dict()``).
    kernel : str
        The name of a kernel of its grid.
    learned : list of str
        The learned candidates.
    level : float
        One-sided level of each test.

    Returns
    -------
    bool
    """
    comp = _as_comparison_dict(comparison)
    for m in learned:
        pair = _find_pair(comp, m, comp["baseline"])
        t = pair["by_kernel"][kernel]["statistic"]
        if not float(sps.norm.sf(t if pair["z"] == m else -t)) < level:
            return False
    return True


def sample_test_verdicts(
    comparison: Any,
    learned: list[str] | tuple[str, ...],
    tests: list[str] | tuple[str, ...] = ("median", "power", "quadratic", "patch"),
    level: float = 0.01,
) -> dict[str, dict[str, Any]]:
    """Per sample test: does it rank the baseline last, and its verdicts on every pair of learned models.

    A sample test may rank learned models only if it can tell them from the baseline (the independent-pixel
    model for binary images; docs/eval.md): for every learned model ``m`` the test of ``(baseline, m)`` must
    find ``m`` closer to the reference at ``level``. Its verdicts on the learned pairs are computed either way;
    a report shows those of an invalid test as such.

    Parameters
    ----------
    comparison : SampleComparison or dict
        :func:`wakesleep.eval.compare_samples` with a ``baseline`` (or its ``to_dict()``, e.g. read back from JSON).
    learned : sequence of str
        The learned candidates, in the order their pairs are listed.
    tests : sequence of str
        ``median`` (Gaussian at the median-heuristic width), ``quadratic`` (centred, ``c = 0``), ``patch``
        (patch widths at their median) — the fixed kernels of :data:`SAMPLE_TEST_KERNELS`, whose family must be
        in the comparison's grid —, ``power`` (per pair the kernel chosen for power on the selection part, among
        the qualified ones for learned pairs) and ``power_any`` (the same among all kernels).
    level : float
        The one-sided level of the checks against the baseline.

    Returns
    -------
    dict
        Test -> ``kernel`` (the fixed kernel; for ``power`` tests the comparison's ``common_kernel``), ``mmd2``
        (candidate -> test-part MMD^2 with that kernel), ``vs_baseline`` (learned model -> verdict of the pair
        with the baseline), ``ranks_baseline_last`` (every such verdict prefers the model at ``level``),
        ``baseline_above`` (models the test finds the baseline closer than), ``baseline_tied`` (models it
        prefers at p >= ``level`` only), ``mmd2_ranks_baseline_last``, ``valid`` (``ranks_baseline_last``; for
        ``power`` also some kernel qualified, else its learned pairs chose among all kernels) and
        ``learned_pairs`` (``"a vs b"`` -> verdict). A verdict: ``closer``, ``p``, ``log10_p``, ``statistic``
        (T, positive towards ``closer``), ``kernel`` and, for learned pairs, ``kernel_ranks_baseline_last``
        (whether that kernel's own fixed-kernel tests rank the baseline last).

    Raises
    ------
    WakesleepError
        The comparison has no baseline, an unknown test, or a test whose kernel is not in the grid.
    """
    comp = _as_comparison_dict(comparison)
    base = comp.get("baseline")
    if base is None:
        raise WakesleepError("sample_test_verdicts: the comparison has no baseline (compare_samples(baseline=...))")
    learned = [m for m in learned if m != base]
    out: dict[str, dict[str, Any]] = {}
    for test in tests:
        if test in ("power", "power_any"):
            kname = comp["common_kernel"]["name"]
        elif test in SAMPLE_TEST_KERNELS:
            kname = _grid_kernel_name(comp, *SAMPLE_TEST_KERNELS[test])
        else:
            known = ", ".join(["power", "power_any", *SAMPLE_TEST_KERNELS])
            raise WakesleepError(f"sample_test_verdicts: unknown test {test!r} (known: {known})")
        mmd2 = comp["mmd2"][kname]
        vs = {m: _pair_verdict(comp, test, m, base) for m in learned}
        pairs = {
            f"{a} vs {b}": _pair_verdict(comp, test, a, b) for i, a in enumerate(learned) for b in learned[i + 1 :]
        }
        for v in pairs.values():
            v["kernel_ranks_baseline_last"] = kernel_ranks_baseline_last(comp, v["kernel"], learned, level)
        ranks = all(v["closer"] == m and v["p"] < level for m, v in vs.items())
        out[test] = {
            "kernel": kname,
            "mmd2": mmd2,
            "vs_baseline": vs,
            "ranks_baseline_last": ranks,
            "baseline_above": [m for m, v in vs.items() if v["closer"] != m],
            "baseline_tied": [m for m, v in vs.items() if v["closer"] == m and not v["p"] < level],
            "mmd2_ranks_baseline_last": all(mmd2[base] > mmd2[m] for m in learned),
            "valid": ranks and (test != "power" or bool(comp.get("qualified"))),
            "learned_pairs": pairs,
        }
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
