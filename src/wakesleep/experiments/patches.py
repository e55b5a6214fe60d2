"""Natural image patches (Vertes & Sahani, section 7, Table 1): DDC-HM against IWAE (k = 50).

Model (eq. 13) on 16 x 16 patches (Dx = 256), for each architecture (D1, D2) in ``experiment.architectures``::

    p(z2)      = mixture of 2 D2 Gaussians with means +-m e_j (j = 1..D2), std s   (fixed; m = 3, s = 0.1)
    p(z1 | z2) = Laplace(z1 | 0, softplus(B z2))                                    B: D1 x D2, learnt
    p(x | z1)  = N(x | Lambda z1, diag(Psi))                                        Lambda: 256 x D1, Psi learnt

**The top prior for D2 > 1.** The paper gives the prior only for D2 = 1 (1/2 N(m, s^2) + 1/2 N(-m, s^2)). We
use one component at ``+m e_j`` and one at ``-m e_j`` for every axis j (2 D2 equally weighted components): a
draw switches on exactly one top unit with either sign, so z2 selects one of 2 D2 sparsity patterns of z1
through ``softplus(+-m B[:, j])``: the D2 = 1 model is the special case, and D2 counts the "regimes" the
model can express. (A factorial prior, +-m independently on each axis, needs 2^D2 components, 1024 at D2 = 10,
which makes every evaluation of log p(z2) a thousand times dearer; ``experiment.prior: diagonal`` gives the
two-component prior at +-m (1, ..., 1) instead.)

Data: ``wakesleep.data.load_patches`` (images shipped with scikit-image / scikit-learn, log intensity, DC
removed, unit pixel variance; the test patches come from image regions disjoint from the training ones).

Each algorithm of ``experiment.algorithms`` is trained from the same random initialisation (``train.seed``; with
``experiment.init: ppca``, Lambda and Psi start at the probabilistic-PCA fit of the training patches, see
:func:`ppca_init`) on the training patches; ``experiment.mmd_samples`` samples of each learnt model and as
many held-out test patches go into the relative MMD test (Bounliphone et al. 2015; Gaussian kernel,
median-heuristic width on the pooled sample) with the test patches as reference, the IWAE as ``y`` and the
DDC-HM as ``z``: a small p-value says the DDC-HM is significantly closer to the data (H0: MMD_IWAE <=
MMD_DDC-HM), as in Table 1. The MMD^2 of
held-out *training* patches against the test patches is reported as the floor (a perfect model's value).

What a model without latent structure reaches is reported beside it: two Gaussians fitted to the training
patches (independent pixels; full covariance), their MMD^2 at the same width, and the relative test of DDC-HM
against the full Gaussian. Each model's total variance along the data's 10 leading principal directions, over
the data's, says whether it learnt the leading covariance (1), little beyond pixel variances (<< 1) or blew up
(>> 1). The test of the main pair is repeated at the median distance of the test patches alone, since the
pooled width grows with the models' own spread. (With the median-heuristic width the test rewards a matched
overall scale far more than covariance structure: docs/RESULTS.md, session 5.)
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep import io as wio
from wakesleep.config import dump_config
from wakesleep.errors import WakesleepError
from wakesleep.experiments._entries import EntryRunner

DEFAULT_CONFIG = """\
# Natural image patches, paper section 7 / Table 1: `wakesleep experiment patches --out DIR [--quick]`.
# The model section is a template: experiment.architectures sets dim of z1 and z2 (and the prior's means).
model:
  layers:                # top latent first, observation last
    - {name: z2, family: mog, dim: 10, std: 0.1, learn: false}                   # means: +-prior_mean e_j
    - {name: z1, family: laplace, dim: 50, link: softplus_linear, bias: false}  # scale softplus(B z2)
    - {name: x,  family: gaussian, dim: 256, link: linear, bias: false}         # mean Lambda z1, variance Psi
  dtype: float32         # the recognition accumulates its regression statistics and solves in float64 regardless
# recognition_input: message feeds the read-out Lambda^T Psi^-1 x (D1 numbers) instead of the 256 pixels: cheaper,
# and the Table 1 run in docs/RESULTS.md used it (x instead lost to IWAE at (10, 10) in every quick run)
algorithm: {name: ddc_hm, sleep_samples: 1000, features: [100, 500], recognition_hidden: 500,
            recognition_input: message}
train: {epochs: 20, batch_size: 100, lr: 1.0e-3, seed: 0, device: cpu, log_every: 500, samples: 1000,
        checkpoint_every: 2000}   # checkpoints: `--resume` continues an interrupted entry
data: {source: patches, size: 16, n: 50000, n_test: 10000, seed: 0}
experiment:
  architectures: [[10, 10], [50, 2], [50, 10], [100, 2], [100, 10]]   # (D1, D2) of Table 1
  prior: axes            # axes: 2 D2 components at +-m e_j; diagonal: 2 components at +-m (1, ..., 1)
  prior_mean: 3.0        # m
  prior_std: 0.1         # s
  init: random           # ppca: Lambda, Psi start at the probabilistic-PCA fit of the training patches (all algorithms)
  # the pair compared by the relative MMD test is (reference, y, z) = (test patches, iwae, ddc_hm)
  algorithms: [ddc_hm, {name: iwae, label: iwae_k50, k: 50, proposal_hidden: [100, 100]}]
  baseline: iwae_k50     # label of the y of the relative test
  candidate: ddc_hm      # label of the z of the relative test
  algorithm_options: {}  # name -> options, for plain-name entries of `algorithms` other than algorithm.name
  train_options:         # label -> train settings for that entry only (e.g. {ddc_hm: {sleep_every: 10}})
    iwae_k50: {dtype: float64}   # IWAE diverged (NaN gradient) in float32 at (50, 10); DDC-HM runs in float32
  mmd_samples: 10000     # model samples and test patches in the relative MMD test
  nll_points: 500        # test patches whose log-likelihood is estimated per model (0: none)
  nll_k: 2000            # importance particles per patch (wakesleep.eval.GaussianPosteriorProposal)
  ais_points: 200        # the first test patches also scored by annealed importance sampling (0: none)
  ais_chains: 16         # AIS chains per patch (wakesleep.eval.ais_log_likelihood)
  ais_temperatures: 500  # AIS intermediate distributions (sigmoid schedule)
  ais_leapfrog: 10       # leapfrog steps per HMC move
  quick:
    experiment.architectures: [[10, 10], [50, 2]]
    experiment.mmd_samples: 2000
    experiment.nll_points: 100
    experiment.nll_k: 500
    experiment.ais_points: 20
    experiment.ais_temperatures: 100
    data.n: 5000
    data.n_test: 2000
    train.max_iters: 300
    train.log_every: 100
    train.threads: 1
    algorithm.sleep_samples: 500
    algorithm.features: [50, 200]
    algorithm.recognition_hidden: 200
"""

EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "architectures": [[10, 10], [50, 2], [50, 10], [100, 2], [100, 10]],
    "prior": "axes",
    "prior_mean": 3.0,
    "prior_std": 0.1,
    "init": "random",
    "algorithms": ["ddc_hm", {"name": "iwae", "label": "iwae_k50", "k": 50, "proposal_hidden": [100, 100]}],
    "baseline": "iwae_k50",
    "candidate": "ddc_hm",
    "algorithm_options": {},
    "train_options": {},
    "mmd_samples": 10000,
    "nll_points": 500,
    "nll_k": 2000,
    "ais_points": 200,
    "ais_chains": 16,
    "ais_temperatures": 500,
    "ais_leapfrog": 10,
    "quick": {},
}


# --------------------------------------------------------------------------------------------------------
# helpers shared with the SBN experiment
# --------------------------------------------------------------------------------------------------------
def algorithm_entries(config: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """``{label: resolved run config}`` for each entry of ``experiment.algorithms``.

    An entry is a name (the config's own ``algorithm`` section when it names the same algorithm, else
    ``experiment.algorithm_options[name]``) or a mapping ``{name: iwae, label: iwae_k50, k: 50}``.
    ``experiment.train_options[label]`` overrides the ``train`` section for one entry (e.g. DDC-HM's
    ``sleep_every``).
    """
    from wakesleep.algorithms import ALGORITHMS
    from wakesleep.config import resolve_config

    exp = config["experiment"]
    algos = exp["algorithms"]
    if isinstance(algos, str):
        algos = [algos]
    if not isinstance(algos, list) or not algos:
        raise WakesleepError("config: experiment.algorithms must be a non-empty list of algorithm names")
    opts = exp.get("algorithm_options") or {}
    if not isinstance(opts, dict):
        raise WakesleepError("config: experiment.algorithm_options must be a mapping name -> options")
    train_opts = exp.get("train_options") or {}
    if not isinstance(train_opts, dict) or not all(isinstance(v, dict) for v in train_opts.values()):
        raise WakesleepError("config: experiment.train_options must be a mapping label -> train settings")
    out: dict[str, dict[str, Any]] = {}
    for entry in algos:
        if isinstance(entry, dict):
            if "name" not in entry:
                raise WakesleepError(f"config: experiment.algorithms: entry {entry!r} has no 'name'")
            algo = {k: v for k, v in entry.items() if k != "label"}
            label = entry.get("label", entry["name"])
        elif entry == config["algorithm"]["name"]:
            algo, label = dict(config["algorithm"]), entry
        else:
            algo, label = {"name": entry, **(opts.get(entry) or {})}, entry
        if algo["name"] not in ALGORITHMS:
            raise WakesleepError(f"config: experiment.algorithms: unknown algorithm {algo['name']!r}")
        if not isinstance(label, str) or label in out:
            raise WakesleepError(f"config: experiment.algorithms: labels must be distinct strings, got {label!r}")
        raw = {k: copy.deepcopy(config[k]) for k in ("model", "train", "data")}
        raw["algorithm"] = algo
        raw["train"].update(copy.deepcopy(train_opts.get(label) or {}))
        out[label] = resolve_config(raw, source=where, check_model=False)
    unknown = set(train_opts) - set(out)
    if unknown:  # not an error: the shipped configs name entries that a shorter experiment.algorithms may drop
        warnings.warn(
            f"config: experiment.train_options: {sorted(unknown)} are not labels of experiment.algorithms (ignored)",
            stacklevel=2,
        )
    return out


def positive_int(exp: dict[str, Any], key: str, minimum: int = 1) -> int:
    v = exp[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise WakesleepError(f"config: experiment.{key} must be an integer >= {minimum}, got {v!r}")
    return v


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def _fmt_nll(r: dict[str, float] | None) -> str:
    if not r:
        return "n/a"
    return f"{r['nll']:.1f} +- {r['sem']:.1f} ({r['ess_median']:.0f})"


def fmt_p(log10_p: float | None) -> str:
    """A p-value from its log10, readable down to 1e-1000 and beyond."""
    if log10_p is None or not math.isfinite(log10_p):
        return "n/a"
    if log10_p > -3:
        return f"{10**log10_p:.3g}"
    return f"< 1e{math.floor(log10_p) + 1}"


def draw_samples(model: torch.nn.Module, n: int, seed: int, chunk: int = 5000) -> torch.Tensor:
    """``n`` observations from ``model`` (seeded), on the CPU in float64."""
    gen = torch.Generator(device=model.device).manual_seed(int(seed))
    out = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            out.append(model.sample(min(chunk, n - start), generator=gen)[-1].detach().double().cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------------------------------------
# the model for one architecture
# --------------------------------------------------------------------------------------------------------
def prior_means(d2: int, m: float, kind: str) -> list[list[float]]:
    """Component means of the top prior (see the module docstring)."""
    if kind == "diagonal":
        return [[m] * d2, [-m] * d2]
    means = []
    for sign in (1.0, -1.0):
        for j in range(d2):
            row = [0.0] * d2
            row[j] = sign * m
            means.append(row)
    return means


def architecture_config(config: dict[str, Any], d1: int, d2: int) -> dict[str, Any]:
    """A copy of ``config`` whose model has latent sizes (D1, D2) and the experiment's top prior."""
    exp = config["experiment"]
    cfg = copy.deepcopy(config)
    layers = cfg["model"]["layers"]
    if len(layers) != 3:
        raise WakesleepError("experiment patches: model.layers must be [z2 (mog), z1 (laplace), x (gaussian)]")
    layers[0]["dim"] = int(d2)
    layers[0]["means"] = prior_means(int(d2), float(exp["prior_mean"]), exp["prior"])
    layers[0]["std"] = float(exp["prior_std"])
    layers[1]["dim"] = int(d1)
    return cfg


def ppca_init(model: torch.nn.Module, x: torch.Tensor, n_prior: int = 100000, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial Lambda and Psi of the eq. 13 model from the data's principal components (``experiment.init: ppca``).

    The maximum-likelihood factor loadings of probabilistic PCA (Tipping & Bishop 1999) for the second-moment
    matrix S of ``x`` (no mean: the model has none): ``Lambda = U_D1 (L_D1 - sigma^2)^(1/2) V^(-1/2)``, with
    U_D1, L_D1 the leading D1 eigenvectors and eigenvalues of S, sigma^2 the mean of the others (``Psi =
    sigma^2 I``), and V the prior variances of z_1 (estimated from ``n_prior`` draws of the model's prior, whose
    B is still random), so that the model's second moments match the data's at the start. Every algorithm of
    an architecture starts from it, as from the shared random initialisation otherwise.

    Returns
    -------
    dict
        ``{"layers.x.link.weight": [Dx, D1], "layers.x.log_var": [Dx]}`` for ``model.init``.
    """
    layers = list(model.layers.values())
    obs = layers[-1]
    d1 = layers[-2].embed_dim
    xd = x.double()
    second = xd.T @ xd / xd.shape[0]
    evals, evecs = torch.linalg.eigh(second)
    evals, evecs = evals.flip(0), evecs.flip(1)
    sigma2 = float(evals[d1:].mean()) if evals.shape[0] > d1 else float(evals[-1]) * 1e-2
    sigma2 = max(sigma2, 1e-6 * float(evals[0]))  # data (nearly) inside a D1-dimensional subspace
    gen = torch.Generator(device=model.device).manual_seed(int(seed))
    with torch.no_grad():
        z1 = model.sample(n_prior, generator=gen)[-2].double()
    v = (z1 * z1).mean(0).cpu()
    scale = (evals[:d1] - sigma2).clamp_min(1e-6 * float(evals[0])).sqrt() / v.sqrt()
    return {
        f"layers.{obs.name}.link.weight": (evecs[:, :d1] * scale).numpy(),
        f"layers.{obs.name}.log_var": np.full(evals.shape[0], math.log(sigma2)),
    }


TOP_PCS = 10  # the data's leading principal directions over which models' variance is compared


def gaussian_references(x: torch.Tensor, n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` samples each from two Gaussians fitted to ``x``: independent pixels (means and variances) and the
    full covariance. Reference rows of the report: what a model without latent structure reaches."""
    g = torch.Generator().manual_seed(seed)
    mean = x.mean(0)
    diag = mean + x.std(0) * torch.randn(n, x.shape[1], generator=g, dtype=x.dtype)
    vals, vecs = torch.linalg.eigh(torch.cov(x.T))
    root = vecs * vals.clamp_min(0.0).sqrt()  # root root^T = covariance (also when it is singular)
    full = mean + torch.randn(n, x.shape[1], generator=g, dtype=x.dtype) @ root.T
    return {"gaussian_diag": diag, "gaussian_full": full}


def gaussian_reference_nll(train: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """Exact mean NLL (nats per patch) of ``x`` under the two Gaussians of :func:`gaussian_references` (the full
    covariance with a ridge of 1e-3 of the mean pixel variance, so that it stays proper for few patches)."""
    mean, cov = train.mean(0), torch.cov(train.T)
    diag = torch.distributions.Normal(mean, cov.diagonal().sqrt()).log_prob(x).sum(-1)
    cov = cov + 1e-3 * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
    full = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)
    return {"gaussian_diag": float(-diag.mean()), "gaussian_full": float(-full.mean())}


def model_nll(model: torch.nn.Module, x: torch.Tensor, k: int, seed: int) -> dict[str, float] | None:
    """Importance-sampled mean NLL of ``x`` under a learnt eq. 13 model (:class:`GaussianPosteriorProposal`,
    ``k`` particles per patch): ``nll``, its standard error ``sem``, the median effective sample size and the
    per-patch estimates ``log_px``."""
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


def model_ais_nll(model: torch.nn.Module, x: torch.Tensor, settings: dict[str, int], seed: int) -> dict[str, Any]:
    """Mean NLL of ``x`` under a learnt model by annealed importance sampling
    (:func:`wakesleep.eval.ais_log_likelihood`; ``settings``: ``chains``, ``temperatures`` and, for HMC,
    ``leapfrog``), with its standard error, the median ESS over the chains, the mean acceptance per layer (HMC;
    with Gibbs sweeps the fraction of units changed per sweep), the seconds taken and the per-point estimates
    ``log_px``."""
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
    """Mean over the same patches of NLL_a - NLL_b (per-patch ``log_px`` of two estimates), with its standard
    error: the models' per-patch likelihoods are strongly correlated, so this is far tighter than the two NLLs'
    own standard errors."""
    if not a or not b or "log_px" not in a or "log_px" not in b or len(a["log_px"]) != len(b["log_px"]):
        return None
    d = torch.tensor(b["log_px"], dtype=torch.float64) - torch.tensor(a["log_px"], dtype=torch.float64)
    return {"mean": float(d.mean()), "sem": float(d.std() / math.sqrt(d.numel())) if d.numel() > 1 else math.nan}


def principal_directions(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` leading eigenvectors of the covariance of ``x``, ``[D, k]``."""
    _, vecs = torch.linalg.eigh(torch.cov(x.T))
    return vecs[:, -k:]


def variance_ratio(samples: torch.Tensor, x: torch.Tensor, dirs: torch.Tensor) -> float:
    """Total variance of ``samples`` along ``dirs`` over that of ``x``: 1 for a model with the data's leading
    covariance, well below 1 for one that learnt little beyond pixel variances, well above 1 for one whose
    variance blew up."""
    s, d = samples.double() @ dirs, x @ dirs
    return float(s.var(0).sum() / d.var(0).sum())


def _validate(config: dict[str, Any]) -> list[tuple[int, int]]:
    exp = config["experiment"]
    archs = exp["architectures"]
    if not isinstance(archs, list) or not archs:
        raise WakesleepError("config: experiment.architectures must be a non-empty list of [D1, D2] pairs")
    out = []
    for a in archs:
        if (
            not isinstance(a, list | tuple)
            or len(a) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in a)
        ):
            raise WakesleepError(f"config: experiment.architectures: each entry must be [D1, D2], got {a!r}")
        out.append((int(a[0]), int(a[1])))
    if exp["init"] not in ("random", "ppca"):
        raise WakesleepError(f"config: experiment.init must be random or ppca, got {exp['init']!r}")
    if exp["prior"] not in ("axes", "diagonal"):
        raise WakesleepError(f"config: experiment.prior must be axes or diagonal, got {exp['prior']!r}")
    for key in ("prior_mean", "prior_std"):
        v = exp[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise WakesleepError(f"config: experiment.{key} must be a positive number, got {v!r}")
    positive_int(exp, "mmd_samples", 2)
    positive_int(exp, "nll_points", 0)
    positive_int(exp, "nll_k", 1)
    positive_int(exp, "ais_points", 0)
    for key in ("ais_chains", "ais_temperatures", "ais_leapfrog"):
        positive_int(exp, key, 1)
    if config["data"].get("source") not in ("patches", "van_hateren"):
        raise WakesleepError("config: data.source must be patches or van_hateren for experiment patches")
    return out


# --------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------
def _plot_patches(path: Path, panels: dict[str, np.ndarray], size: int, n: int = 36) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(panels)
    side = int(math.ceil(math.sqrt(n)))
    fig, axes = plt.subplots(1, cols, figsize=(3.2 * cols, 3.4), squeeze=False)
    for ax, (title, arr) in zip(axes[0], panels.items(), strict=True):
        arr = arr[:n].reshape(-1, size, size)
        grid = np.full((side * (size + 1) - 1, side * (size + 1) - 1), np.nan)
        for i, img in enumerate(arr):
            r, c = divmod(i, side)
            lo, hi = np.percentile(img, [1, 99])
            grid[r * (size + 1) : r * (size + 1) + size, c * (size + 1) : c * (size + 1) + size] = np.clip(
                (img - lo) / max(hi - lo, 1e-12), 0, 1
            )
        ax.imshow(grid, cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _report(results: dict[str, Any]) -> str:
    cfg = results["config"]
    exp, t, a = cfg["experiment"], cfg["train"], cfg["algorithm"]
    base, cand = exp["baseline"], exp["candidate"]
    lines = [
        "# Natural image patches (paper section 7, Table 1)",
        "",
        f"{'Quick run (scaled down, see below)' if results['quick'] else 'Full run'}: "
        f"{results['n_train']} training patches, {results['n_test']} test patches "
        f"({cfg['data'].get('size', 16)} x {cfg['data'].get('size', 16)}; {results['data_description']}); "
        f"{t['epochs']} epochs"
        + (f" capped at {t['max_iters']} iterations" if t.get("max_iters") else "")
        + f", batch {t['batch_size']}, Adam lr {t['lr']:g}, {t['dtype']}, device {t['device']}; "
        f"total {results['seconds']:.0f} s.",
        "",
        f"DDC-HM: {a.get('sleep_samples')} sleep samples, K (top first) {a.get('features')}, recognition hidden "
        f"{a.get('recognition_hidden')}. Top prior: {exp['prior']} mixture, m = {exp['prior_mean']:g}, "
        f"s = {exp['prior_std']:g} (fixed); recognition input {a.get('recognition_input', 'auto')}.",
        "",
    ]
    for label, opts in (exp.get("train_options") or {}).items():
        lines += [f"Train settings of {label} only: {', '.join(f'{k} = {v}' for k, v in opts.items())}.", ""]
    lines += [
        f"Relative MMD test (Bounliphone et al. 2015): reference = {results['n_mmd']} test patches, y = {base}, "
        f"z = {cand}, {results['n_mmd']} samples each, Gaussian kernel, median-heuristic width. "
        f"H0: MMD({base}) <= MMD({cand}); a small p-value prefers {cand}.",
        "",
        f"| D1 | D2 | MMD^2 {base} | MMD^2 {cand} | p-value | preferred | floor (train vs test) | "
        f"MMD^2 Gaussian, independent pixels / full covariance | p, {cand} against the full Gaussian | "
        "p at the test patches' width |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["architectures"]:
        rel = r.get("relative_test")
        if rel is None:
            lines.append(f"| {r['d1']} | {r['d2']} | n/a | n/a | n/a | | {fmt(r['floor_mmd2'])} | | | |")
            continue
        pref = cand if rel["p_value"] < 0.01 else (base if rel["p_value"] > 0.99 else "neither (p in [0.01, 0.99])")
        refs, vs = r.get("references") or {}, r.get("candidate_vs_gaussian_full") or {}
        fixed = r.get("relative_test_data_width") or {}
        ref_cell = " / ".join(fmt(refs.get(k)) for k in ("gaussian_diag", "gaussian_full")) if refs else "n/a"
        lines.append(
            f"| {r['d1']} | {r['d2']} | {fmt(rel['mmd2_y'])} | {fmt(rel['mmd2_z'])} | "
            f"{fmt_p(rel['log10_p_value'])} | {pref} | {fmt(r['floor_mmd2'])} | {ref_cell} | "
            f"{fmt_p(vs.get('log10_p_value'))} | {fmt_p(fixed.get('log10_p_value'))} |"
        )
    lines += [
        "",
        "The two Gaussians are fitted to the training patches and sampled like the models; the column after their "
        f"MMD^2 is the relative test with the full Gaussian as y and {cand} as z (small p: {cand} closer to the "
        "test patches). "
        "With the median-heuristic width this test is driven mostly by the patches' overall scale: the Gaussian "
        "with the data's full covariance scores about as well as independent pixels (docs/RESULTS.md). The width "
        "of the main test is the median distance of the pooled test patches and model samples, so it grows with "
        "the models' spread; the last column repeats the test of the first pair at the median distance of the "
        "test patches alone.",
        "",
        "Paper (van Hateren patches, their MMD values): IWAE 0.126 / 0.0754 / 0.247 / 0.076 / 0.171 vs "
        "DDC-HM 0.0388 / 0.0269 / 0.00313 / 0.0211 / 0.00355, all p < 1e-22.",
        "",
        "Per algorithm (training time, iterations, last logged metrics):",
        "",
        f"| D1 | D2 | algorithm | seconds | iterations | cov_gap | mean_gap | variance along the data's top "
        f"{TOP_PCS} principal directions, model / data | test NLL (nats per patch, +- s.e.; median ESS) | "
        "AIS test NLL (+- s.e.; median ESS of the chains) | importance-sampling NLL on the AIS patches |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["architectures"]:
        for name, ar in r["algorithms"].items():
            fm = ar.get("final_metrics", {})
            lines.append(
                f"| {r['d1']} | {r['d2']} | {name} | {ar['seconds']:.0f} | {ar['iterations']} | "
                f"{fmt(fm.get('cov_gap'))} | {fmt(fm.get('mean_gap'))} | {fmt(ar.get('top_pc_variance_ratio'))} | "
                f"{_fmt_nll(ar.get('nll'))} | {_fmt_nll(ar.get('ais_nll'))} | "
                f"{fmt((ar.get('nll') or {}).get('nll_on_ais_points'), 4)} |"
            )
    gn = results.get("gaussian_nll") or {}
    if gn:
        nll_k = cfg["experiment"].get("nll_k")
        lines += [
            "",
            f"Test NLL over the first {cfg['experiment'].get('nll_points')} test patches by importance sampling "
            f"with {nll_k} particles per patch (`wakesleep.eval.GaussianPosteriorProposal`: z_1 from a defensive "
            "Gaussian posterior, z_2 from the prior; a small ESS flags an unreliable value). Exact NLL of the "
            f"Gaussians fitted to the training patches: independent pixels {gn['gaussian_diag']:.1f}, full "
            f"covariance {gn['gaussian_full']:.1f}.",
        ]
    ga = results.get("gaussian_nll_ais_points") or {}
    if ga:
        e = cfg["experiment"]
        lines += [
            "",
            f"AIS: the first {e.get('ais_points')} test patches, {e.get('ais_chains')} chains per patch, "
            f"{e.get('ais_temperatures')} temperatures, block HMC with {e.get('ais_leapfrog')} leapfrog steps "
            "(`wakesleep.eval.ais_log_likelihood`); like importance sampling it is a stochastic lower bound on "
            "log p(x), so the larger of the two log-likelihoods (the smaller NLL) is the tighter. Exact NLL of the "
            f"Gaussians on these patches: independent pixels {ga['gaussian_diag']:.1f}, full covariance "
            f"{ga['gaussian_full']:.1f}.",
        ]
        diffs = [
            f"({r['d1']}, {r['d2']}) {r['ais_nll_difference']['mean']:+.1f} +- {r['ais_nll_difference']['sem']:.1f}"
            for r in results["architectures"]
            if r.get("ais_nll_difference")
        ]
        if diffs:
            lines += [
                "",
                f"AIS NLL of {cand} minus {base}, paired over the same patches (mean +- s.e.; positive: {base} "
                "assigns the test patches the higher likelihood): " + "; ".join(diffs) + ".",
            ]
    lines += ["", "![samples](samples.png)", ""]
    if results["quick"]:
        lines += [
            "**Quick run**: fewer architectures, patches, iterations, sleep samples, encoding functions and "
            "MMD samples than the paper (see `config.yaml`, `experiment.quick`); the numbers show the pipeline "
            "works, not the paper's result.",
            "",
        ]
    lines += [
        "Files: `results.json` (all numbers), `config.yaml`, one run directory per architecture and algorithm "
        "(`d<D1>_<D2>/<label>/`: config.yaml, metrics.jsonl, model.safetensors, done.json).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------------------------------------
def run(
    config: dict[str, Any], out_dir: Path, progress: bool | None = None, runner: EntryRunner | None = None
) -> dict[str, Any]:
    """Run the patches experiment described by a resolved config, writing into ``out_dir``.

    ``runner`` trains each entry (or, continuing an interrupted run, reloads the finished ones); default: a
    fresh :class:`~wakesleep.experiments._entries.EntryRunner`.
    """
    from wakesleep.data import load_dataset
    from wakesleep.eval import median_bandwidth, mmd, relative_mmd_test
    from wakesleep.train import apply_threads, build_algorithm_from_config, build_model_from_config

    exp = config["experiment"]
    archs = _validate(config)
    apply_threads(config)
    runner = runner if runner is not None else EntryRunner(progress=progress)
    entries = algorithm_entries(architecture_config(config, *archs[0]), "experiment patches")
    base, cand = exp["baseline"], exp["candidate"]
    for label in (base, cand):
        if label not in entries:
            raise WakesleepError(
                f"config: experiment.baseline/candidate {label!r} is not a label of experiment.algorithms"
            )
    for d1, d2 in archs:  # fail early on a bad option, before any training
        for cfg in algorithm_entries(architecture_config(config, d1, d2), "experiment patches").values():
            build_algorithm_from_config(cfg, build_model_from_config(cfg))

    t_start = time.perf_counter()
    dataset = load_dataset(
        dict(config["data"]),
        16 * 16 if "size" not in config["data"] else int(config["data"]["size"]) ** 2,
        dtype=torch.float64,
    )
    train_x, test_x = dataset.train, dataset.test
    if test_x is None or test_x.shape[0] < 2:
        raise WakesleepError("experiment patches: the data have no test set (data.n_test)")
    n_mmd = min(int(exp["mmd_samples"]), test_x.shape[0])
    ref = test_x[:n_mmd].double()
    floor_n = min(n_mmd, train_x.shape[0])
    floor = float(mmd(train_x[-floor_n:].double(), ref))
    references = gaussian_references(train_x.double(), n_mmd, seed=30_000)
    nll_x = test_x[: min(int(exp["nll_points"]), test_x.shape[0])].double()
    gaussian_nll = gaussian_reference_nll(train_x.double(), nll_x) if nll_x.shape[0] else {}
    ais_x = test_x[: min(int(exp["ais_points"]), test_x.shape[0])].double()
    ais_settings = {k: int(exp[f"ais_{k}"]) for k in ("chains", "temperatures", "leapfrog")}
    gaussian_nll_ais = gaussian_reference_nll(train_x.double(), ais_x) if ais_x.shape[0] else {}
    top_dirs = principal_directions(train_x.double(), TOP_PCS)
    ref_width = float(median_bandwidth(ref))
    size = int(config["data"].get("size", 16))
    arch_results, panels = [], {"test patches": ref[:36].numpy()}
    for d1, d2 in archs:
        acfg = architecture_config(config, d1, d2)
        arch_dir = out_dir / f"d{d1}_{d2}"
        arch_dir.mkdir(exist_ok=True)  # exists when resuming
        entries = algorithm_entries(acfg, "experiment patches")
        if exp["init"] == "ppca":
            first = next(iter(entries.values()))
            torch.manual_seed(first["train"]["seed"])  # the random parts (B) as train_from_config draws them
            init = ppca_init(build_model_from_config(first), train_x, seed=d1 * 100 + d2)
            for cfg in entries.values():  # inline: each run's config.yaml holds its initial values
                cfg["model"]["init"] = {k: v.tolist() for k, v in init.items()}
        samples: dict[str, torch.Tensor] = {}
        arch: dict[str, Any] = {"d1": d1, "d2": d2, "algorithms": {}, "floor_mmd2": floor}
        for label, cfg in entries.items():
            train_data = train_x.to(dtype=getattr(torch, cfg["train"]["dtype"]))
            e = runner.run(cfg, arch_dir / label, train_data)
            # cheap and seeded: drawn again for an entry reloaded on resuming
            samples[label] = draw_samples(e.model, n_mmd, seed=10_000 + d1 * 100 + d2)
            finite = bool(torch.isfinite(samples[label]).all())
            if e.evaluation is None:
                e.save_evaluation({"samples_finite": finite})
            nll = model_nll(e.model, nll_x, int(exp["nll_k"]), seed=d1 * 100 + d2) if nll_x.shape[0] else None
            arch["algorithms"][label] = {
                **e.info,
                "samples_finite": finite,
                "top_pc_variance_ratio": variance_ratio(samples[label], train_x.double(), top_dirs) if finite else None,
                "nll": nll,
                "ais_nll": ais_nll_cached(e, ais_x, ais_settings, d1 * 100 + d2, finite),
            }
            if nll is not None and ais_x.shape[0] and ais_x.shape[0] <= nll_x.shape[0]:
                # the importance-sampling estimate on the AIS patches, to show how loose it is
                nll["nll_on_ais_points"] = -sum(nll["log_px"][: ais_x.shape[0]]) / ais_x.shape[0]
            if (d1, d2) == archs[0]:
                panels[f"{label} (D1={d1}, D2={d2})"] = samples[label][:36].numpy()
        if all(torch.isfinite(s).all() for s in samples.values()):
            rel = relative_mmd_test(ref, samples[base], samples[cand], seed=d1 * 100 + d2)
            arch["relative_test"] = {
                "y": base,
                "z": cand,
                "mmd2_y": float(rel.mmd_xy),
                "mmd2_z": float(rel.mmd_xz),
                "p_value": float(rel.p_value),
                "log10_p_value": float(rel.log10_p_value),
                "statistic": float(rel.statistic),
                "bandwidth": float(getattr(rel, "bandwidth", float("nan"))),
            }
            # Gaussians fitted to the training patches, at the same width: what a model without latents reaches
            arch["references"] = {name: float(mmd(ref, x, bandwidth=rel.bandwidth)) for name, x in references.items()}
            # the pooled width grows with the models' own spread; the same test at the test patches' width alone
            fixed = relative_mmd_test(ref, samples[base], samples[cand], bandwidth=ref_width, seed=d1 * 100 + d2)
            arch["relative_test_data_width"] = {
                "mmd2_y": float(fixed.mmd_xy),
                "mmd2_z": float(fixed.mmd_xz),
                "p_value": float(fixed.p_value),
                "log10_p_value": float(fixed.log10_p_value),
                "bandwidth": ref_width,
            }
            vs_full = relative_mmd_test(ref, references["gaussian_full"], samples[cand], seed=d1 * 100 + d2 + 7)
            arch["candidate_vs_gaussian_full"] = {
                "p_value": float(vs_full.p_value),
                "log10_p_value": float(vs_full.log10_p_value),
            }
        else:
            arch["relative_test"] = None
        algos = arch["algorithms"]
        arch["ais_nll_difference"] = paired_nll_difference(  # candidate minus baseline, on the same patches
            algos.get(cand, {}).get("ais_nll"), algos.get(base, {}).get("ais_nll")
        )
        arch_results.append(arch)

    _plot_patches(out_dir / "samples.png", panels, size)
    seconds = time.perf_counter() - t_start
    summary = "; ".join(
        f"({r['d1']},{r['d2']}): {base} {fmt(r['relative_test']['mmd2_y'])} vs {cand} "
        f"{fmt(r['relative_test']['mmd2_z'])}, p {fmt_p(r['relative_test']['log10_p_value'])}"
        if r.get("relative_test")
        else f"({r['d1']},{r['d2']}): n/a"
        for r in arch_results
    )
    results = {
        "experiment": "patches",
        "quick": bool(exp.get("quick_run", False)),
        "seconds": seconds,
        "summary": summary,
        "n_train": int(train_x.shape[0]),
        "n_test": int(test_x.shape[0]),
        "n_mmd": n_mmd,
        "data": dataset.describe(),
        "data_description": _describe(dataset),
        "gaussian_nll": gaussian_nll,
        "gaussian_nll_ais_points": gaussian_nll_ais,
        "architectures": arch_results,
        "config": config,
    }
    wio.save_json(out_dir / "results.json", results)
    wio.write_text(out_dir / "report.md", _report(results))
    wio.write_text(out_dir / "config.yaml", dump_config(config))
    return results


def ais_nll_cached(e: Any, x: torch.Tensor, settings: dict[str, int], seed: int, finite: bool) -> dict | None:
    """AIS NLL of an entry (:func:`model_ais_nll`; None when ``x`` is empty or the model not ``finite``), reused
    from its saved evaluation when a resumed run asks for the same one (AIS takes minutes per model; the other
    numbers are recomputed in seconds); a new estimate is saved with the entry."""
    if not x.shape[0] or not finite:
        return None
    key = {"points": x.shape[0], **settings, "seed": seed}
    saved = (e.evaluation or {}).get("ais_nll")
    if saved and "log_px" in saved and all(saved.get(k) == v for k, v in key.items()):
        return saved
    result = {**model_ais_nll(e.model, x, settings, seed), "seed": seed}
    e.save_evaluation({**(e.evaluation or {}), "ais_nll": result})
    return result


def _describe(dataset) -> str:
    d = dataset.describe()
    keys = [k for k in ("images", "log", "whiten") if k in d]
    return ", ".join(f"{k}: {d[k] if not isinstance(d[k], list) else len(d[k])}" for k in keys) or "built-in images"
