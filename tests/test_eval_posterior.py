"""Posteriors: NUTS against the exact posterior of a conjugate (linear-Gaussian) model, enumeration."""

import sys

import pytest
import torch

import wakesleep
from wakesleep.errors import WakesleepError
from wakesleep.eval import enumerate_posterior, exact_log_likelihood, gaussian_posterior, nuts_posterior

from oracles import enumerate_loglik, linear_gaussian_config, perturb

pytestmark = pytest.mark.usefixtures("one_thread")


def _gaussian_model(seed=0):
    cfg = linear_gaussian_config(dims=(2, 3, 4), seed=seed)
    cfg["layers"][2]["variance"] = 0.5
    model = wakesleep.build_model(cfg)
    perturb(model, scale=0.3, seed=seed + 1)
    return model


def _sbn(seed=0):
    cfg = {
        "dtype": "float64",
        "seed": seed,
        "layers": [
            {"name": "z2", "family": "bernoulli", "dim": 2},
            {"name": "z1", "family": "bernoulli", "dim": 3, "link": "linear", "init_std": 1.5},
            {"name": "x", "family": "bernoulli", "dim": 6, "link": "linear", "init_std": 1.5},
        ],
    }
    return wakesleep.build_model(cfg)


def test_gaussian_posterior_is_the_mode_and_curvature_of_log_joint():
    """For a Gaussian posterior: grad log p(x, z) = 0 at the mean and the Hessian is -Cov^{-1}."""
    model = _gaussian_model()
    x = model.sample(2)[-1]
    post = gaussian_posterior(model, x)
    for b in range(2):

        def f(z, b=b):
            return model.log_joint(x[b], list(torch.split(z, post.dims)))

        z = post.mean[b].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(z), z)
        assert g.abs().max() < 1e-10
        H = torch.autograd.functional.hessian(f, post.mean[b])
        assert torch.allclose(H, -torch.linalg.inv(post.cov), atol=1e-9)


def test_nuts_matches_exact_conjugate_posterior():
    """400 NUTS draws (300 warm-up) for two data points at once.

    Tolerances: means within 0.3 posterior sd (about 4 Monte Carlo standard errors at an effective sample
    size near 200), variances within a factor 0.6-1.6.
    """
    model = _gaussian_model(seed=2)
    x = model.sample(2)[-1]
    post = gaussian_posterior(model, x)
    draws = nuts_posterior(model, x, num_samples=400, warmup=300, seed=0)
    assert [tuple(d.shape) for d in draws] == [(400, 2, 2), (400, 2, 3)]
    z = torch.cat(draws, dim=-1)  # [S, B, 5]
    sd = torch.diagonal(post.cov).sqrt()
    assert bool(((z.mean(0) - post.mean).abs() < 0.3 * sd).all()), (z.mean(0), post.mean)
    ratio = z.var(0) / torch.diagonal(post.cov)
    assert bool(((ratio > 0.6) & (ratio < 1.6)).all()), ratio
    # a single observation gives [S, D_l]
    one = nuts_posterior(model, x[0], num_samples=5, warmup=5, seed=1)
    assert [tuple(d.shape) for d in one] == [(5, 2), (5, 3)]


def test_enumerate_posterior():
    model = _sbn()
    x = model.sample(3)[-1]
    post = enumerate_posterior(model, x)
    assert post.log_probs.shape == (3, 2**5)
    assert torch.allclose(post.probs.sum(1), torch.ones(3, dtype=torch.float64), atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(post.log_px, enumerate_loglik(model, x), atol=1e-12)
    assert torch.allclose(post.log_px, exact_log_likelihood(model, x))
    # Bayes by hand for one configuration
    zs = [post.configs[0][7:8], post.configs[1][7:8]]
    with torch.no_grad():
        lj = model.log_joint(x[1:2], zs)
    assert float(post.log_probs[1, 7]) == pytest.approx(float(lj - post.log_px[1]), abs=1e-12)
    means = post.marginals()
    assert means[0].shape == (3, 2) and bool(((means[1] >= 0) & (means[1] <= 1)).all())


def test_bad_input(monkeypatch):
    sbn = _sbn()
    with pytest.raises(WakesleepError, match="NUTS needs real-valued latents"):
        nuts_posterior(sbn, sbn.sample(1)[-1])
    model = _gaussian_model()
    with pytest.raises(WakesleepError, match="nuts_posterior: x has 3 columns"):
        nuts_posterior(model, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(WakesleepError, match="enumeration needs binary"):
        enumerate_posterior(model, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(WakesleepError, match="gaussian_posterior: x contains NaN"):
        gaussian_posterior(model, torch.full((1, 4), float("nan"), dtype=torch.float64))
    monkeypatch.setitem(sys.modules, "pyro", None)
    with pytest.raises(WakesleepError, match=r"wakesleep\[hmc\]"):
        nuts_posterior(model, torch.zeros(4, dtype=torch.float64))
