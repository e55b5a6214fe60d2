"""Evaluation of learned generative models (paper section 7).

* :func:`mmd`, :func:`mmd_statistics`, :func:`mmd_test`: unbiased MMD^2 with a Gaussian kernel, its H1
  variance, permutation two-sample test; bandwidth by the median heuristic or maximum test power
  (:func:`select_bandwidth`).
* :func:`relative_mmd_test`: the relative similarity test of Bounliphone et al. (2015).
* :func:`log_likelihood`: importance-sampled log p(x) with any proposal (:func:`fit_proposal` trains an
  evaluation-only one); :func:`ais_log_likelihood`: annealed importance sampling with block HMC for real-valued
  latents or single-site Gibbs sweeps for sigmoid belief networks (:func:`ais_kernel` says which, or why a model
  is not supported); :func:`exact_log_likelihood` by enumeration or the Gaussian marginal.
* :func:`nuts_posterior`, :func:`gaussian_posterior`, :func:`enumerate_posterior`: posteriors p(z | x).
* :func:`recovery_error`, :func:`model_recovery_error`: parameter recovery up to permutation and sign.
* :func:`latent_predictability`: how much x says about each latent layer under the model's own samples
  (held-out variance of S(z_l) explained from x by ridge regression and an MLP).
* :mod:`wakesleep.eval.plots`: samples beside data, learning curves, posterior corner plots.
* :mod:`wakesleep.eval.compare`: the evaluation steps experiments share (seeded sample draws, NLL estimates with
  per-point values and their paired differences, reference models: fitted Gaussians, independent pixels).
"""

from wakesleep.eval.ais import AISResult, ais_kernel, ais_log_likelihood, sigmoid_schedule
from wakesleep.eval.loglik import (
    GaussianPosteriorProposal,
    LogLikelihoodResult,
    PriorProposal,
    exact_log_likelihood,
    exact_log_likelihood_enumerate,
    exact_log_likelihood_gaussian,
    log_likelihood,
)
from wakesleep.eval.mmd import (
    MMDStatistics,
    MMDTestResult,
    bandwidth_candidates,
    gaussian_kernel,
    median_bandwidth,
    mmd,
    mmd_statistics,
    mmd_test,
    select_bandwidth,
)
from wakesleep.eval.plots import plot_learning_curves, plot_posterior_corner, plot_samples, read_metrics
from wakesleep.eval.posterior import (
    EnumeratedPosterior,
    GaussianPosterior,
    enumerate_posterior,
    gaussian_posterior,
    nuts_posterior,
)
from wakesleep.eval.power import (
    KERNEL_FAMILIES,
    PairComparison,
    PowerRelativeMMDResult,
    SampleComparison,
    SampleKernel,
    compare_samples,
    kernel_grid,
    kernel_mmd,
    kernel_relative_mmd_test,
    relative_mmd_power_test,
    split_samples,
)
from wakesleep.eval.predictability import PredictabilityResult, latent_predictability
from wakesleep.eval.proposal import FactorisedProposal, fit_proposal
from wakesleep.eval.recovery import Matching, match_columns, model_recovery_error, recovery_error
from wakesleep.eval.relative import RelativeMMDResult, relative_mmd_test

__all__ = [
    "mmd",
    "mmd_statistics",
    "mmd_test",
    "MMDStatistics",
    "MMDTestResult",
    "gaussian_kernel",
    "median_bandwidth",
    "bandwidth_candidates",
    "select_bandwidth",
    "relative_mmd_test",
    "RelativeMMDResult",
    "relative_mmd_power_test",
    "PowerRelativeMMDResult",
    "compare_samples",
    "SampleComparison",
    "PairComparison",
    "SampleKernel",
    "KERNEL_FAMILIES",
    "kernel_grid",
    "kernel_mmd",
    "kernel_relative_mmd_test",
    "split_samples",
    "log_likelihood",
    "LogLikelihoodResult",
    "PriorProposal",
    "ais_kernel",
    "ais_log_likelihood",
    "AISResult",
    "sigmoid_schedule",
    "GaussianPosteriorProposal",
    "exact_log_likelihood",
    "exact_log_likelihood_enumerate",
    "exact_log_likelihood_gaussian",
    "fit_proposal",
    "FactorisedProposal",
    "nuts_posterior",
    "gaussian_posterior",
    "GaussianPosterior",
    "enumerate_posterior",
    "EnumeratedPosterior",
    "recovery_error",
    "match_columns",
    "model_recovery_error",
    "Matching",
    "latent_predictability",
    "PredictabilityResult",
    "plot_samples",
    "plot_learning_curves",
    "plot_posterior_corner",
    "read_metrics",
]
