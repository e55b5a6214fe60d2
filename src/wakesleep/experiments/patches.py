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
overall scale far more than covariance structure: docs/RESULTS.md, session 5.) The report:
:mod:`wakesleep.experiments.patches_report`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from wakesleep.errors import WakesleepError
from wakesleep.eval.compare import (
    draw_samples,
    gaussian_reference_nll,
    gaussian_references,
    model_nll,
    paired_nll_difference,
    principal_directions,
    variance_ratio,
)
from wakesleep.experiments import patches_report
from wakesleep.experiments.base import Experiment, ExperimentContext, fmt, fmt_p
from wakesleep.experiments.entries import ais_nll_cached, algorithm_entries, algorithm_labels, check_buildable
from wakesleep.schema import option

TOP_PCS = patches_report.TOP_PCS  # the data's leading principal directions over which models' variance is compared


@dataclass(frozen=True)
class Options:
    """The ``experiment:`` section (values: ``configs/patches.yaml``)."""

    architectures: list[list[int]] = option(minimum=1, doc="(D1, D2) pairs of Table 1")
    prior: Literal["axes", "diagonal"] = option(doc="axes: 2 D2 components at +-m e_j; diagonal: 2 at +-m (1, ..., 1)")
    prior_mean: float = option(minimum=0.0, exclusive_minimum=True, doc="m")
    prior_std: float = option(minimum=0.0, exclusive_minimum=True, doc="s")
    init: Literal["random", "ppca"] = option(doc="ppca: Lambda, Psi start at the probabilistic-PCA fit")
    algorithms: list[str | dict] | str = option(doc="names, or mappings {name, label, options...}")
    baseline: str = option(doc="label of the y of the relative test")
    candidate: str = option(doc="label of the z of the relative test")
    algorithm_options: dict = option(doc="name -> options, for plain-name entries other than algorithm.name")
    train_options: dict = option(doc="label -> train settings for that entry only")
    mmd_samples: int = option(minimum=2, doc="model samples and test patches in the relative MMD test")
    nll_points: int = option(minimum=0, doc="test patches whose log-likelihood is estimated per model")
    nll_k: int = option(minimum=1, doc="importance particles per patch")
    ais_points: int = option(minimum=0, doc="the first test patches also scored by AIS")
    ais_chains: int = option(minimum=1, doc="AIS chains per patch")
    ais_temperatures: int = option(minimum=1, doc="AIS intermediate distributions")
    ais_leapfrog: int = option(minimum=1, doc="leapfrog steps per HMC move")

    def validate(self, prefix: str) -> None:
        """Pairs (D1, D2); the relative test's labels among the entries."""
        if not self.architectures:
            raise WakesleepError(f"{prefix}.architectures must be a non-empty list of [D1, D2] pairs")
        for a in self.architectures:
            if len(a) != 2:
                raise WakesleepError(f"{prefix}.architectures: each entry must be [D1, D2], got {a!r}")
        labels = algorithm_labels(self.algorithms)
        for label in (self.baseline, self.candidate):
            if label not in labels:
                raise WakesleepError(f"{prefix}.baseline/candidate {label!r} is not a label of {prefix}.algorithms")


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


def _relative(rel: Any, **extra: Any) -> dict[str, float]:
    return {
        "mmd2_y": float(rel.mmd_xy),
        "mmd2_z": float(rel.mmd_xz),
        "p_value": float(rel.p_value),
        "log10_p_value": float(rel.log10_p_value),
        **extra,
    }


# --------------------------------------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------------------------------------
class Patches(Experiment):
    """Table 1: DDC-HM against IWAE on natural image patches, per architecture (resumable)."""

    name = "patches"
    Options = Options
    resumable = True

    def check(self, config: dict[str, Any], options: Options) -> None:
        """The data must be image patches."""
        if config["data"].get("source") not in ("patches", "van_hateren"):
            raise WakesleepError("config: data.source must be patches or van_hateren for experiment patches")

    def run(self, ctx: ExperimentContext) -> dict[str, Any]:
        """Train every entry per architecture (or reload it when resuming) and compare (module docstring)."""
        from wakesleep.data import load_dataset
        from wakesleep.eval import median_bandwidth, mmd, relative_mmd_test
        from wakesleep.runs import as_spec, build_model

        exp, config = ctx.options, ctx.config
        archs = [(int(a[0]), int(a[1])) for a in exp.architectures]
        base, cand = exp.baseline, exp.candidate
        for d1, d2 in archs:  # fail early on a bad option, before any training
            check_buildable(algorithm_entries(architecture_config(config, d1, d2), "experiment patches").values())

        size = int(config["data"].get("size", 16))
        dataset = load_dataset(dict(config["data"]), size * size, dtype=torch.float64)
        train_x, test_x = dataset.train, dataset.test
        if test_x is None or test_x.shape[0] < 2:
            raise WakesleepError("experiment patches: the data have no test set (data.n_test)")
        n_mmd = min(exp.mmd_samples, test_x.shape[0])
        ref = test_x[:n_mmd].double()
        floor_n = min(n_mmd, train_x.shape[0])
        floor = float(mmd(train_x[-floor_n:].double(), ref))
        references = gaussian_references(train_x.double(), n_mmd, seed=30_000)
        nll_x = test_x[: min(exp.nll_points, test_x.shape[0])].double()
        gaussian_nll = gaussian_reference_nll(train_x.double(), nll_x) if nll_x.shape[0] else {}
        ais_x = test_x[: min(exp.ais_points, test_x.shape[0])].double()
        ais_settings = {"chains": exp.ais_chains, "temperatures": exp.ais_temperatures, "leapfrog": exp.ais_leapfrog}
        gaussian_nll_ais = gaussian_reference_nll(train_x.double(), ais_x) if ais_x.shape[0] else {}
        top_dirs = principal_directions(train_x.double(), TOP_PCS)
        ref_width = float(median_bandwidth(ref))
        arch_results, panels = [], {"test patches": ref[:36].numpy()}
        for d1, d2 in archs:
            seed = d1 * 100 + d2
            (ctx.out_dir / f"d{d1}_{d2}").mkdir(exist_ok=True)  # exists when resuming
            entries = algorithm_entries(architecture_config(config, d1, d2), "experiment patches")
            if exp.init == "ppca":
                first = as_spec(next(iter(entries.values())))
                torch.manual_seed(first.train.seed)  # the random parts (B) as training draws them
                init = ppca_init(build_model(first), train_x, seed=seed)
                for cfg in entries.values():  # inline: each run's config.yaml holds its initial values
                    cfg["model"]["init"] = {k: v.tolist() for k, v in init.items()}
            samples: dict[str, torch.Tensor] = {}
            arch: dict[str, Any] = {"d1": d1, "d2": d2, "algorithms": {}, "floor_mmd2": floor}
            for label, cfg in entries.items():
                train_data = train_x.to(dtype=getattr(torch, cfg["train"]["dtype"]))
                e = ctx.train(cfg, f"d{d1}_{d2}/{label}", data=train_data)
                # cheap and seeded: drawn again for an entry reloaded on resuming
                samples[label] = draw_samples(e.model, n_mmd, seed=10_000 + seed)
                finite = bool(torch.isfinite(samples[label]).all())
                if e.evaluation is None:
                    e.save_evaluation({"samples_finite": finite})
                nll = model_nll(e.model, nll_x, exp.nll_k, seed=seed) if nll_x.shape[0] else None
                ratio = variance_ratio(samples[label], train_x.double(), top_dirs) if finite else None
                arch["algorithms"][label] = {
                    **e.info,
                    "samples_finite": finite,
                    "top_pc_variance_ratio": ratio,
                    "nll": nll,
                    "ais_nll": ais_nll_cached(e, ais_x, ais_settings, seed, finite),
                }
                if nll is not None and ais_x.shape[0] and ais_x.shape[0] <= nll_x.shape[0]:
                    # the importance-sampling estimate on the AIS patches, to show how loose it is
                    nll["nll_on_ais_points"] = -sum(nll["log_px"][: ais_x.shape[0]]) / ais_x.shape[0]
                if (d1, d2) == archs[0]:
                    panels[f"{label} (D1={d1}, D2={d2})"] = samples[label][:36].numpy()
            if all(torch.isfinite(s).all() for s in samples.values()):
                rel = relative_mmd_test(ref, samples[base], samples[cand], seed=seed)
                bandwidth = float(getattr(rel, "bandwidth", float("nan")))
                arch["relative_test"] = {
                    "y": base,
                    "z": cand,
                    **_relative(rel, statistic=float(rel.statistic), bandwidth=bandwidth),
                }
                # Gaussians fitted to the training patches, at the same width: what a model without latents reaches
                arch["references"] = {k: float(mmd(ref, x, bandwidth=rel.bandwidth)) for k, x in references.items()}
                # the pooled width grows with the models' own spread; the same test at the test patches' width alone
                fixed = relative_mmd_test(ref, samples[base], samples[cand], bandwidth=ref_width, seed=seed)
                arch["relative_test_data_width"] = _relative(fixed, bandwidth=ref_width)
                vs_full = relative_mmd_test(ref, references["gaussian_full"], samples[cand], seed=seed + 7)
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

        patches_report.plot_patches(ctx.out_dir / "samples.png", panels, size)
        summary = "; ".join(
            f"({r['d1']},{r['d2']}): {base} {fmt(r['relative_test']['mmd2_y'])} vs {cand} "
            f"{fmt(r['relative_test']['mmd2_z'])}, p {fmt_p(r['relative_test']['log10_p_value'])}"
            if r.get("relative_test")
            else f"({r['d1']},{r['d2']}): n/a"
            for r in arch_results
        )
        return {
            "seconds": ctx.seconds(),
            "summary": summary,
            "n_train": int(train_x.shape[0]),
            "n_test": int(test_x.shape[0]),
            "n_mmd": n_mmd,
            "data": dataset.describe(),
            "data_description": patches_report.describe(dataset),
            "gaussian_nll": gaussian_nll,
            "gaussian_nll_ais_points": gaussian_nll_ais,
            "architectures": arch_results,
        }

    report = staticmethod(patches_report.report)


EXPERIMENT = Patches()
