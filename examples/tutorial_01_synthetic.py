"""
The paper's synthetic model: DDC-HM against a VAE and an IWAE
=============================================================

The synthetic experiment of Vertes & Sahani (section 7, eq. 13) is a three-layer model whose posterior is far
from Gaussian: a mixture-of-Gaussians top unit decides which of two Laplace units is broad and which is
sparse, and a linear-Gaussian layer mixes them into a heavy-tailed "cross":

::

    z2      ~ 1/2 N(3, 0.1^2) + 1/2 N(-3, 0.1^2)
    z1 | z2 ~ Laplace(0, softplus(B z2))          (per unit)
    x | z1  ~ N(Lambda z1, diag(Psi))

This tutorial describes the run in Python (:class:`wakesleep.spec.RunSpec`), builds it with
:func:`wakesleep.runs.prepare`, trains DDC-HM, a VAE and an IWAE (k = 5) from the true parameters as the paper
does, compares their samples with the data by MMD, and compares DDC-HM's posterior expectations with NUTS.
"""

# %%
# Sizes
# -----
# ``WAKESLEEP_TUTORIAL_SMALL=1`` (the test suite) runs everything at a toy size in seconds.
import os
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import wakesleep
from wakesleep.eval import median_bandwidth, mmd, nuts_posterior
from wakesleep.experiments.synthetic import draw_true_params
from wakesleep.runs import prepare
from wakesleep.spec import RunSpec

SMALL = os.environ.get("WAKESLEEP_TUTORIAL_SMALL") == "1"
N = 1000 if SMALL else 10000  # training points
ITERS = 60 if SMALL else 1500  # Adam steps per algorithm (the experiment's --quick length)
NUTS_SAMPLES, NUTS_WARMUP = (100, 50) if SMALL else (1000, 500)
POINTS = 3  # data points whose posteriors we compare
work = Path(tempfile.mkdtemp(prefix="wakesleep_tutorial_01_"))
torch.set_num_threads(1)  # one thread is fastest for models this small

# %%
# The model and its true parameters
# ---------------------------------
# A run is four sections, exactly as in a YAML config (``configs/synthetic.yaml``). The experiment module
# draws the true ``B``, ``Lambda`` and ``Psi`` of a data set; we save them and use them twice: as the
# parameters that generate the data and as the starting point of every learner (``model.init``). (In a
# config, ``data: {source: model, true_params: FILE.npz}`` draws the data from given parameters.)
model_section = {
    "layers": [
        {"name": "z2", "family": "mog", "dim": 1, "means": [[3.0], [-3.0]], "std": 0.1, "learn": False},
        {"name": "z1", "family": "laplace", "dim": 2, "link": "softplus_linear", "bias": False},
        {"name": "x", "family": "gaussian", "dim": 2, "link": "linear", "bias": False},
    ],
    "dtype": "float64",
}
base = {
    "model": model_section,
    "algorithm": {"name": "ddc_hm"},
    "train": {"max_iters": ITERS, "epochs": 1000, "batch_size": 100, "lr": 1e-3, "seed": 0, "threads": 1},
    "data": {"source": "model", "n": N, "seed": 1},
}
shape_model = prepare(RunSpec.from_mapping(base)).model
true = draw_true_params(shape_model, seed=0)
np.savez(work / "true.npz", **true)
for name, value in true.items():
    print(f"{name:24s} {np.array2string(value.ravel(), precision=3)}")

# %%
# We draw the training data ourselves from the true model, keeping the latents that generated each point
# (NUTS will start from them below), and hand the data to :func:`~wakesleep.runs.prepare`.
true_model = prepare(RunSpec.from_mapping({**base, "model": {**model_section, "init": str(work / "true.npz")}})).model
torch.manual_seed(1)
with torch.no_grad():
    z2_true, z1_true, data = true_model.sample(N)
print(
    "data:", tuple(data.shape), "; first point:", data[0].numpy().round(3), "; its z2:", round(float(z2_true[0, 0]), 3)
)

# %%
# Three learners, one spec each
# -----------------------------
# Only the ``algorithm`` section differs. DDC-HM uses the paper's sizes (200 sleep samples, 100 encoding
# functions per layer, 100 recognition units); the VAE and IWAE have recognition networks of two hidden layers
# of 100 units, as in the paper.
algorithms = {
    "DDC-HM": {"name": "ddc_hm", "sleep_samples": 200, "features": 100, "recognition_hidden": 100},
    "VAE": {"name": "vae", "proposal_hidden": [100, 100]},
    "IWAE k=5": {"name": "iwae", "k": 5, "proposal_hidden": [100, 100]},
}
runs = {}
for label, algorithm in algorithms.items():
    spec = RunSpec.from_mapping(
        {
            **base,
            "model": {**model_section, "init": str(work / "true.npz")},
            "algorithm": algorithm,
        }
    )
    run = prepare(spec, data=data)  # seeds torch, builds the model, checks the data, builds the algorithm
    start = time.perf_counter()
    trainer = run.fit(progress=False)  # no out_dir: nothing is written to disk
    last = trainer.history_[-1]
    print(
        f"{label:9s} {trainer.n_iter_} iterations in {time.perf_counter() - start:5.1f} s, "
        f"moment gaps: mean {last['mean_gap']:.3f}, covariance {last['cov_gap']:.3f}"
    )
    runs[label] = run

# %%
# Samples against the data
# ------------------------
# The unbiased MMD^2 with a Gaussian kernel (median-heuristic width) between the training data and as many
# model samples; a sample of the true model gives the floor set by sampling noise.
bandwidth = median_bandwidth(data)
torch.manual_seed(123)
samples = {"true parameters": true_model.sample(N)[-1].detach()}
for label, run in runs.items():
    samples[label] = run.model.sample(N)[-1].detach()
for label, s in samples.items():
    print(f"MMD^2 {label:16s} {mmd(data, s, bandwidth):.2e}")

fig, axes = plt.subplots(1, 4, figsize=(13, 3.4), sharex=True, sharey=True)
lim = np.quantile(data.abs().numpy(), 0.995)
for ax, (label, s) in zip(axes, [("data", data), *[(k, samples[k]) for k in algorithms]], strict=True):
    ax.scatter(s[:2000, 0], s[:2000, 1], s=2, alpha=0.4)
    ax.set_title(label)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
fig.suptitle("the data and 2000 samples of each trained model")
fig.tight_layout()

# %%
# Posteriors: DDC-HM's expectations against NUTS
# ----------------------------------------------
# DDC-HM represents p(z | x) by the expectations r(x) of its encoding functions; the expectation of any other
# function of a latent is a regression on the sleep samples (``recognise``, ``expectation`` and
# ``posterior_mean`` of :class:`~wakesleep.algorithms.ddc_hm.DDCHelmholtzMachine`). NUTS
# (:func:`wakesleep.eval.nuts_posterior`, through Pyro) samples the trained model's exact posterior. The two
# modes of z2 (near +3 and -3, each of width 0.1) are too far apart for one NUTS chain to cross, so each chain
# starts from the latents that generated its point (known here, since we simulated the data).
#
# Two DDC read-outs of the trained model: the one trained with it (the paper's recognition, eq. 8: r_2 is a
# linear map of r_1, fitted on 200 sleep samples a phase), and a fresh one fitted to the final model with
# ``recognition: direct`` (every r_l read out of the recognition's hidden layer) and 2000 sleep samples a
# phase, 30 sleep phases. Fitting a read-out to a fixed model needs no training data at all.
ddc_model = runs["DDC-HM"].model
readouts = {"trained": runs["DDC-HM"].algorithm}
readouts["direct, 2000"] = wakesleep.build_algorithm(
    "ddc_hm", ddc_model, sleep_samples=2000, features=100, recognition_hidden=300, recognition="direct"
)
for _ in range(30):
    readouts["direct, 2000"].sleep()
readouts["trained"].sleep()  # one more phase at the final parameters

x = data[:POINTS]
init = [z2_true[:POINTS], z1_true[:POINTS]]
z2_draws, z1_draws = nuts_posterior(ddc_model, x, num_samples=NUTS_SAMPLES, warmup=NUTS_WARMUP, init=init, seed=0)
quantities = {
    "E[z2]": (lambda a: a.posterior_mean(x)["z2"][:, 0], z2_draws[..., 0].mean(0)),
    "E[z1_1]": (lambda a: a.posterior_mean(x)["z1"][:, 0], z1_draws[..., 0].mean(0)),
    "E[z1_2]": (lambda a: a.posterior_mean(x)["z1"][:, 1], z1_draws[..., 1].mean(0)),
    "E|z1_1|": (lambda a: a.expectation(x, "z1", torch.abs)[:, 0], z1_draws[..., 0].abs().mean(0)),
    "E|z1_2|": (lambda a: a.expectation(x, "z1", torch.abs)[:, 1], z1_draws[..., 1].abs().mean(0)),
}
print(f"{'point':5s} {'quantity':9s} {'NUTS':>8s} {'trained':>9s} {'direct, 2000':>13s}")
errors = {}
for name, (read, reference) in quantities.items():
    values = {label: read(algo).detach() for label, algo in readouts.items()}
    for b in range(POINTS):
        row = " ".join(f"{float(values[label][b]):9.3f}" for label in readouts)
        print(f"{b:5d} {name:9s} {float(reference[b]):8.3f} {row}")
    errors[name] = [float((values[label] - reference).abs().mean()) for label in readouts]
print("\nmean |DDC-HM - NUTS| over the points")
for name, errs in errors.items():
    print(f"{name:9s} " + " ".join(f"{e:9.3f}" for e in errs))

# %%
# z2 says which Laplace unit is broad; the posterior means of z1 are the easy part (the likelihood pins them
# down), the posterior of z2 and of the sparse unit's magnitude are where a read-out shows its limits: an
# expectation of a function outside the span of the encoding functions (such as ``|z1_2|``, of size 0.03
# here) is only as good as its regression on them. Below, the NUTS posterior of z1 for each point, with both
# read-outs' posterior means marked.
fig, axes = plt.subplots(1, POINTS, figsize=(4 * POINTS, 3.6))
for b, ax in enumerate(np.atleast_1d(axes)):
    ax.scatter(z1_draws[:, b, 0], z1_draws[:, b, 1], s=3, alpha=0.3, label="NUTS samples")
    ax.scatter(*z1_draws[:, b].mean(0).numpy(), marker="+", s=150, c="k", label="NUTS mean")
    for (label, algo), style in zip(
        readouts.items(), [{"marker": "x", "c": "C3"}, {"marker": "o", "c": "C2"}], strict=True
    ):
        m = algo.posterior_mean(x)["z1"][b].detach().numpy()
        ax.scatter(*m, s=70, alpha=0.8, label=f"DDC-HM {label}", **style)
    ax.set_title(f"p(z1 | x) of point {b}")
    ax.set_xlabel("z1_1")
    ax.set_ylabel("z1_2")
np.atleast_1d(axes)[0].legend(fontsize=7)
fig.tight_layout()

# %%
# What next
# ---------
# The same comparison on 2 to 25 data sets, with a histogram of log MMD^2 (the paper's Fig. 1) is
# ``wakesleep experiment synthetic --quick --out DIR`` (``wakesleep.experiments.run_experiment`` in Python);
# the numbers measured that way are in the results. :func:`wakesleep.eval.diagnose` measures DDC-HM's wake
# gradient against reference gradients (tutorial 6).
