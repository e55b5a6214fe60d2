"""
Comparing learners on a sigmoid belief network
==============================================

Which learner is better depends on how "better" is measured. This tutorial trains four learners on the same
small sigmoid belief network (binary latents in two layers, binary pixels) and scores them three ways, as the
paper's experiments and :mod:`wakesleep.eval` do:

- **MMD^2** between held-out data and model samples (:func:`wakesleep.eval.mmd`): how far the samples are from
  the data, in a kernel's eyes;
- **the relative MMD test** (:func:`wakesleep.eval.relative_mmd_test`, Bounliphone et al. 2015): is model B's
  sample significantly closer to the data than model A's? It accounts for the correlation of the two
  estimates, which share the data;
- **the test log-likelihood by annealed importance sampling** (:func:`wakesleep.eval.ais_log_likelihood`,
  Gibbs sweeps for binary latents). The model is small enough to enumerate its 2^9 latent configurations, so
  the exact value (:func:`wakesleep.eval.exact_log_likelihood_enumerate`) checks the AIS estimate.
"""

# %%
# Data from a "true" network
# --------------------------
import os
import time

import matplotlib.pyplot as plt
import torch

import wakesleep
from wakesleep.eval import (
    ais_log_likelihood,
    exact_log_likelihood_enumerate,
    median_bandwidth,
    mmd,
    relative_mmd_test,
)
from wakesleep.training import Trainer

SMALL = os.environ.get("WAKESLEEP_TUTORIAL_SMALL") == "1"
N_TRAIN = 2000 if SMALL else 10000
N_TEST = 1000 if SMALL else 5000
EPOCHS = 2 if SMALL else 30
AIS_POINTS, AIS_CHAINS, AIS_T = (50, 8, 100) if SMALL else (200, 16, 500)
torch.set_num_threads(1)  # one thread is fastest for models this small


def sbn(seed: int, init_std: float) -> torch.nn.Module:
    """A 3-6-16 sigmoid belief network: Bernoulli top, Bernoulli middle, 16 Bernoulli pixels."""
    return wakesleep.build_model(
        {
            "layers": [
                {"name": "z2", "family": "bernoulli", "dim": 3},
                {"name": "z1", "family": "bernoulli", "dim": 6, "link": "linear", "init_std": init_std},
                {"name": "x", "family": "bernoulli", "dim": 16, "link": "linear", "init_std": init_std},
            ],
            "seed": seed,
            "dtype": "float64",
        }
    )


truth = sbn(seed=7, init_std=2.0)
torch.manual_seed(0)
with torch.no_grad():
    train = truth.sample(N_TRAIN)[-1]
    test = truth.sample(N_TEST)[-1]
print("pixel means of the data:", train.mean(0).numpy().round(2))

# %%
# Four learners from the same starting point
# ------------------------------------------
# Every learner starts from the same random network (seed 0) and takes the same Adam steps on the same
# minibatches; only the gradient estimate differs. DDC-HM fits its recognition in closed form in each sleep
# phase; the others train a recognition network (the papers' sigmoid-belief-net proposal) with their own Adam.
learners = {
    "DDC-HM": ("ddc_hm", {"sleep_samples": 1000, "features": 50, "recognition_hidden": 100}),
    "VIMCO k=10": ("vimco", {"k": 10}),
    "RWS k=10": ("rws", {"k": 10}),
    "wake-sleep": ("wake_sleep", {}),
}
models = {}
for label, (name, options) in learners.items():
    model = sbn(seed=0, init_std=0.1)
    algo = wakesleep.build_algorithm(name, model, **options)
    trainer = Trainer(algo, epochs=EPOCHS, batch_size=100, lr=3e-3, recognition_lr=3e-3, seed=0, progress=False)
    start = time.perf_counter()
    trainer.fit(train)
    models[label] = model
    print(f"{label:11s} {trainer.n_iter_} iterations in {time.perf_counter() - start:5.1f} s")

# %%
# MMD^2 and the relative test
# ---------------------------
# Each model draws as many samples as there are test points. The MMD^2 of the true network's own samples is the
# floor set by sampling noise. The relative test then asks, for every learner against DDC-HM, whether DDC-HM's
# samples are closer to the test data: a small p-value says yes, a p-value near 1 says the other is closer.
torch.manual_seed(1)
samples = {"truth": truth.sample(N_TEST)[-1]}
samples.update({label: m.sample(N_TEST)[-1].detach() for label, m in models.items()})
bandwidth = median_bandwidth(test)
for label, s in samples.items():
    print(f"MMD^2 {label:11s} {mmd(test, s, bandwidth):9.2e}")
for label in list(models)[1:]:
    result = relative_mmd_test(test, samples[label], samples["DDC-HM"], bandwidth)
    print(f"is DDC-HM closer than {label:11s}? p = {result.p_value:.3g}  (statistic {result.statistic:+.2f})")

# %%
# Test log-likelihood: AIS against the exact value
# ------------------------------------------------
# AIS anneals from the prior to the posterior through ``AIS_T`` intermediate distributions with Gibbs sweeps,
# ``AIS_CHAINS`` chains per test point; its estimate of log p(x) is a stochastic lower bound (in expectation).
x = test[:AIS_POINTS]
print(f"{'model':11s} {'exact NLL':>10s} {'AIS NLL':>10s} {'median ESS':>11s}")
nll = {}
for label, m in {"truth": truth, **models}.items():
    exact = -exact_log_likelihood_enumerate(m, x).mean().item()
    ais = ais_log_likelihood(m, x, chains=AIS_CHAINS, temperatures=AIS_T, seed=0)
    nll[label] = (exact, -ais.log_px.mean().item())
    print(f"{label:11s} {exact:10.3f} {nll[label][1]:10.3f} {ais.ess.median().item():11.1f}")

# %%
# The two measures side by side. MMD looks at samples, the likelihood at how much probability the model gives
# the test points; on the large SBN of the paper's experiments they disagree (the results page: DDC-HM's
# samples are closest to the data by MMD, VIMCO's model gives the test images the higher likelihood), which is
# why the experiments report both.
fig, ax = plt.subplots(figsize=(5.5, 4))
for label in models:
    ax.scatter(mmd(test, samples[label], bandwidth), nll[label][0], s=60, label=label)
ax.axhline(nll["truth"][0], color="k", ls=":", lw=1, label="true network")
ax.set_xlabel("MMD^2 to the test data")
ax.set_ylabel("exact test NLL (nats per point)")
ax.legend()
fig.tight_layout()

# %%
# At scale
# --------
# ``wakesleep experiment sbn`` runs this comparison on binarised Fashion-MNIST or MNIST (784-200-200-200), and
# ``wakesleep evaluate --run DIR --nll-method ais`` scores any trained run by AIS; the measured numbers are in
# the results. :func:`wakesleep.eval.log_likelihood` is the importance-sampling estimate with a learner's own
# proposal (``algo.proposal``) or one fitted for the evaluation (:func:`wakesleep.eval.fit_proposal`).
print("largest error of a pixel mean:")
for label, s in samples.items():
    print(f"  {label:11s} {(s.mean(0) - test.mean(0)).abs().max().item():.3f}")
