"""Annealed importance sampling against exact log-likelihoods (linear-Gaussian marginal, quadrature of the eq. 13
model, enumeration of small sigmoid belief networks), its preconditioning, Gibbs sweeps, schedule and errors."""

import math
import re

import pytest
import torch

import wakesleep
from wakesleep.errors import WakesleepError
from wakesleep.eval import ais_log_likelihood, enumerate_posterior, log_likelihood, sigmoid_schedule

from oracles import (
    enumerate_loglik,
    linear_gaussian_config,
    linear_gaussian_loglik,
    sbn_config,
    tiny_patch_loglik,
    tiny_patch_model_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _patch_model(on_off: bool) -> torch.nn.Module:
    """``tiny_patch_model_config``; ``on_off``: z_1's Laplace scale is softplus(5 z_2), about 15 in the mixture
    component at +3 and 3e-7 in the one at -3 (a unit switched off, as in learnt patch models)."""
    model = wakesleep.build_model(tiny_patch_model_config())
    if on_off:
        with torch.no_grad():
            model.layers["z1"].link.weight.fill_(5.0)
    return model


def test_ais_on_a_linear_gaussian_chain_is_unbiased_and_beats_the_prior_proposal():
    """20 points, 64 chains, 200 temperatures: every estimate within 4 / sqrt(ESS) of the exact marginal, the
    mean error within 4 standard errors of 0 (AIS is unbiased for p(x); log p_hat is low by about var/2), and
    importance sampling from the prior with as many particles is far worse (3x the error, a fifth of the ESS)."""
    model = wakesleep.build_model(linear_gaussian_config(dims=(2, 3, 8)))
    torch.manual_seed(0)
    x = model.sample(20)[-1]
    exact = linear_gaussian_loglik(model, x).detach()
    res = ais_log_likelihood(model, x, chains=64, temperatures=200, seed=1)
    err = res.log_px - exact
    assert bool((err.abs() < 4.0 / res.ess.sqrt()).all()), (err, res.ess)
    assert abs(float(err.mean())) < 4.0 * float(err.std()) / math.sqrt(20) + 0.02
    assert float(err.abs().max()) < 0.5
    prior = log_likelihood(model, x, "prior", k=64, seed=1)  # the baseline the annealing improves on
    assert float((prior.log_px - exact).abs().mean()) > 3.0 * float(err.abs().mean())
    assert float(res.ess.mean()) > 5.0 * float(prior.ess.mean())
    assert res.k == 64 and res.temperatures == 200
    assert res.acceptance.shape == (20, 2) and res.step_size.shape == (20, 2)
    assert bool(((res.acceptance > 0.5) & (res.acceptance < 0.8)).all())  # adapted towards 0.65


def test_ais_matches_quadrature_on_the_patch_model_with_and_without_preconditioning():
    """The eq. 13 model of the GaussianPosteriorProposal test (2-d quadrature of its own log_joint), for data from
    the model and scaled 3x: within 4 / sqrt(ESS) with 256 chains, preconditioned or not."""
    model = _patch_model(on_off=False)
    torch.manual_seed(0)
    x = torch.cat([model.sample(3)[-1], 3.0 * model.sample(3)[-1]])
    z2 = torch.cat([torch.linspace(-3.6, -2.4, 101), torch.linspace(2.4, 3.6, 101)]).double()
    truth = tiny_patch_loglik(model, x, z2, torch.linspace(-30.0, 30.0, 4001).double())
    for precondition in (True, False):
        res = ais_log_likelihood(model, x, chains=256, temperatures=200, seed=3, precondition=precondition)
        assert bool(((res.log_px - truth).abs() < 4.0 / res.ess.sqrt()).all()), (precondition, res.log_px - truth)
        assert float(res.ess.min()) > 30


def test_ais_preconditioning_keeps_switched_off_units_from_freezing_the_chain():
    """z_1's scale is 3e-7 in one mixture component. Truth: quadrature over the other component plus, for this
    one, 0.5 p(x | z_1 = 0) (exact up to O(scale^2); a 2x / 3x finer grid changes it by 1e-4). Preconditioned
    AIS (128 chains) is accurate with a z_1 step size of order 0.1-1; with the identity mass the step size
    collapses to the switched-off scale (the failure seen on learnt (50, 2) patch models) and the ESS drops."""
    model = _patch_model(on_off=True)
    torch.manual_seed(0)
    x = torch.cat([model.sample(4)[-1], 3.0 * model.sample(2)[-1]])
    z2, z1 = torch.linspace(2.4, 3.6, 101).double(), torch.linspace(-150.0, 150.0, 6001).double()
    on = tiny_patch_loglik(model, x, z2, z1)
    with torch.no_grad():
        off = math.log(0.5) + model.layers["x"].log_prob(x, torch.zeros(len(x), 1, dtype=torch.float64))
    truth = torch.logaddexp(on, off)
    pre = ais_log_likelihood(model, x, chains=128, temperatures=150, seed=1)
    assert bool(((pre.log_px - truth).abs() < 4.0 / pre.ess.sqrt()).all()), (pre.log_px - truth, pre.ess)
    assert float(pre.step_size[:, 1].min()) > 0.01
    plain = ais_log_likelihood(model, x, chains=128, temperatures=150, seed=1, precondition=False)
    assert float(plain.step_size[:, 1].median()) < 1e-4
    assert float(pre.ess.min()) > 2.0 * float(plain.ess.min())


def test_ais_is_reproducible_with_a_seed_and_follows_the_model_dtype():
    model = wakesleep.build_model({**linear_gaussian_config(dims=(1, 2, 3)), "dtype": "float32"})
    x = model.sample(4)[-1]
    a = ais_log_likelihood(model, x, chains=4, temperatures=10, seed=5)
    b = ais_log_likelihood(model, x, chains=4, temperatures=10, seed=5)
    assert torch.equal(a.log_px, b.log_px) and a.log_px.dtype == torch.float64
    c = ais_log_likelihood(model, x, chains=4, temperatures=[0.0, 0.3, 1.0], batch_size=3, seed=5)
    assert c.temperatures == 2 and bool(torch.isfinite(c.log_px).all())


def test_sigmoid_schedule():
    beta = sigmoid_schedule(100)
    assert beta.shape == (101,) and float(beta[0]) == 0.0 and float(beta[-1]) == 1.0
    assert bool((beta.diff() > 0).all())
    assert float(beta.diff()[0]) < float(beta.diff()[50]) / 5  # dense near beta = 0


def _model(*layers):
    return wakesleep.build_model({"layers": list(layers), "dtype": "float64"})


def test_ais_errors_are_one_line():
    gauss = wakesleep.build_model(linear_gaussian_config(dims=(1, 2, 3)))
    x = torch.zeros(2, 3, dtype=torch.float64)
    top, obs = {"name": "z2", "family": "bernoulli", "dim": 2}, {"name": "x", "family": "bernoulli", "dim": 3}
    mlp = _model(top, {"name": "z1", "family": "bernoulli", "dim": 2, "link": "mlp", "hidden": [4]}, obs)
    softplus = _model(top, {**obs, "link": "softplus_linear"})
    mixed = _model({"name": "z2", "family": "gaussian", "dim": 2}, {"name": "z1", "family": "bernoulli", "dim": 2}, obs)
    categorical = _model({"name": "z", "family": "categorical", "dim": 2, "categories": 3}, obs)
    poisson = _model(top, {"name": "x", "family": "poisson", "dim": 3, "link": "softplus_linear"})
    gibbs = "AIS with bernoulli latents (Gibbs sweeps) needs linear links (W z + b, no softplus)"
    cases = [
        (lambda: ais_log_likelihood(mlp, x), f"layer z1 has a mlp link; {gibbs}"),
        (lambda: ais_log_likelihood(softplus, x), f"layer x has a softplus_linear link; {gibbs}"),
        (lambda: ais_log_likelihood(mixed, x), "latent layers mix bernoulli (z1) and real-valued (z2) families"),
        (lambda: ais_log_likelihood(categorical, x), "latent layer z is categorical; AIS supports real-valued latents"),
        (lambda: ais_log_likelihood(poisson, x), "observation layer x is poisson; AIS with bernoulli latents supports"),
        (lambda: ais_log_likelihood(gauss, x, temperatures=[0.0, 0.5, 0.4, 1.0]), "increase strictly from 0 to 1"),
        (lambda: ais_log_likelihood(gauss, x, temperatures=[0.1, 1.0]), "increase strictly from 0 to 1"),
        (lambda: ais_log_likelihood(gauss, x, chains=0), "chains"),
        (lambda: ais_log_likelihood(gauss, x, step_size=-1.0), "step_size must be a positive number"),
        (lambda: ais_log_likelihood(gauss, torch.zeros(2, 4, dtype=torch.float64)), "x has 4 columns"),
    ]
    for call, message in cases:
        with pytest.raises(WakesleepError, match=re.escape(message)) as info:
            call()
        assert "\n" not in str(info.value)


def test_the_gaussian_observation_shortcut_equals_the_model_layer():
    """AIS evaluates an affine-Gaussian observation layer as a quadratic form in z_1: same values as the layer."""
    from wakesleep.eval.ais import _gaussian_observation

    model = _patch_model(on_off=False)
    with torch.no_grad():
        model.layers["x"].link.weight.copy_(torch.tensor([[1.5], [-0.7]], dtype=torch.float64))
        model.layers["x"].log_var.copy_(torch.tensor([-1.0, 0.5], dtype=torch.float64))
    obs = _gaussian_observation(model)
    g = torch.Generator().manual_seed(0)
    x, z1 = torch.randn(5, 2, generator=g, dtype=torch.float64), torch.randn(7, 5, 1, generator=g, dtype=torch.float64)
    expected = model.layers["x"].log_prob(x, z1)
    assert torch.allclose(obs.log_prob(z1, *obs.at(x)), expected, rtol=1e-12, atol=1e-10)
    assert _gaussian_observation(wakesleep.build_model(_bernoulli_obs_config())) is None


def _bernoulli_obs_config():
    return {
        "layers": [
            {"name": "z", "family": "gaussian", "dim": 1},
            {"name": "x", "family": "bernoulli", "dim": 6, "link": "linear"},
        ],
        "dtype": "float64",
        "seed": 4,
    }


def test_ais_on_a_non_gaussian_observation_layer_matches_quadrature():
    """The general path (the layer's own log_prob, identity mass for the top layer): z ~ N(0, 1), six Bernoulli
    pixels with logits W z + b (weights scaled 3x so that the posterior is far from the prior); log p(x) by 1-d
    quadrature, within 4 / sqrt(ESS) with 128 chains."""
    model = wakesleep.build_model(_bernoulli_obs_config())
    with torch.no_grad():
        model.layers["x"].link.weight.mul_(3.0)
    torch.manual_seed(0)
    x = model.sample(6)[-1]
    z = torch.linspace(-12.0, 12.0, 24001, dtype=torch.float64)
    with torch.no_grad():
        truth = torch.stack([torch.logsumexp(model.log_joint(row.expand(z.numel(), 6), [z[:, None]]), 0) for row in x])
    truth = truth + math.log(float(z[1] - z[0]))
    res = ais_log_likelihood(model, x, chains=128, temperatures=100, seed=2)
    assert bool(((res.log_px - truth).abs() < 4.0 / res.ess.sqrt()).all()), (res.log_px - truth, res.ess)
    assert float(res.ess.min()) > 20


def test_ais_final_states_weighted_are_posterior_samples():
    """With return_samples, the weighted final states give the exact posterior mean and variance of a
    linear-Gaussian chain (gaussian_posterior): 256 chains, errors within 5 posterior sds / sqrt(ESS) (mean)
    and 35 % (variance, pooled over 10 points)."""
    from wakesleep.eval import gaussian_posterior

    model = wakesleep.build_model(linear_gaussian_config(dims=(2, 3, 8)))
    torch.manual_seed(0)
    x = model.sample(10)[-1]
    res = ais_log_likelihood(model, x, chains=256, temperatures=100, seed=4, return_samples=True)
    assert [tuple(z.shape) for z in res.samples] == [(256, 10, 2), (256, 10, 3)]
    assert tuple(res.log_weights.shape) == (256, 10)
    assert torch.allclose(torch.logsumexp(res.log_weights, 0) - math.log(256), res.log_px)
    w = torch.softmax(res.log_weights, 0)  # [C, B]
    post = gaussian_posterior(model, x)
    for z, mean, var in zip(res.samples, post.split_mean(), post.variances(), strict=True):
        m = torch.einsum("cb,cbd->bd", w, z.double())
        tol = 5.0 * var.sqrt() / res.ess.sqrt()[:, None]
        assert bool(((m - mean).abs() < tol).all()), (m - mean, tol)
        v = torch.einsum("cb,cbd->bd", w, (z.double() - mean) ** 2).mean(0)
        assert bool(((v / var - 1).abs() < 0.35).all()), v / var
    plain = ais_log_likelihood(model, x, chains=4, temperatures=5, seed=4)
    assert plain.samples is None and plain.log_weights is None


# --- sigmoid belief networks: single-site Gibbs sweeps ----------------------------------------------------------
def _sbn(dims=(4, 6, 60), seed=1, scale=1.5):
    """``sbn_config`` (link weights N(0, 2^2)) with the weights scaled by ``scale``: with 60 pixels the posterior
    is far from the prior (see the tests below)."""
    model = wakesleep.build_model(sbn_config(dims, seed))
    with torch.no_grad():
        for layer in list(model.layers.values())[1:]:
            layer.link.weight.mul_(scale)
    return model


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ais_gibbs_on_a_sigmoid_belief_network_matches_enumeration(dtype):
    """4-6-60 SBN, 40 points from the model, exact log p(x) by enumerating the 2^10 latent configurations. AIS with
    64 chains and 200 temperatures: mean error within 0.05 nats (over AIS seeds 1-20: standard deviation 0.010,
    largest 0.031 in float64, 0.024 in float32) and every point within 4 / sqrt(ESS) (seen: within 2). Importance
    sampling from the prior with as many particles is more than 1 nat low on average (seen: 1.5-2.9), and AIS with
    only 2 temperatures more than 0.3 (seen: 0.5-1.4): both far outside the tolerance."""
    model = _sbn()
    torch.manual_seed(0)
    x = model.sample(40)[-1]
    exact = enumerate_loglik(model, x).detach()
    model, x = model.to(getattr(torch, dtype)), x.to(getattr(torch, dtype))
    res = ais_log_likelihood(model, x, chains=64, temperatures=200, seed=1)
    err = res.log_px - exact
    assert res.kernel == "gibbs" and res.log_px.dtype == torch.float64 and res.temperatures == 200
    assert abs(float(err.mean())) < 0.05, err
    assert bool((err.abs() < 4.0 / res.ess.sqrt()).all()), (err, res.ess)
    prior = log_likelihood(model, x, "prior", k=64, seed=1)
    assert float((prior.log_px - exact).mean()) < -1.0
    few = ais_log_likelihood(model, x, chains=64, temperatures=2, seed=1)
    assert float((few.log_px - exact).mean()) < -0.3
    # Gibbs diagnostics: fraction of units that changed per sweep; no step size
    assert res.acceptance.shape == (40, 2) and bool(((res.acceptance > 0) & (res.acceptance < 1)).all())
    assert res.step_size.shape == (40, 2) and bool(res.step_size.isnan().all())


def test_ais_gibbs_final_states_weighted_are_the_exact_posterior():
    """return_samples on the SBN above (10 points, 256 chains, 200 temperatures): the weighted final states'
    marginals E[z_lj | x] are within 4 sd / sqrt(ESS) + 0.005 of enumeration (sd = sqrt(m (1 - m)); the largest
    error seen was 2.8 of these units, 0.066 in probability). The posterior is far from the prior: the prior's
    marginals are more than 0.3 away from it for some unit."""
    from wakesleep.eval._model import latent_configurations, log_prior

    model = _sbn()
    torch.manual_seed(0)
    x = model.sample(10)[-1]
    exact = enumerate_posterior(model, x)
    res = ais_log_likelihood(model, x, chains=256, temperatures=200, seed=1, return_samples=True)
    assert [tuple(z.shape) for z in res.samples] == [(256, 10, 4), (256, 10, 6)]
    assert tuple(res.log_weights.shape) == (256, 10) and res.samples[0].dtype == torch.float64
    assert torch.allclose(torch.logsumexp(res.log_weights, 0) - math.log(256), res.log_px)
    assert bool(((res.samples[0] == 0) | (res.samples[0] == 1)).all())
    w = torch.softmax(res.log_weights, 0)
    configs = latent_configurations(model, "test", 2**10)
    with torch.no_grad():
        prior_probs = torch.softmax(log_prior(model, configs), 0)
    for z, m, zc in zip(res.samples, exact.marginals(), configs, strict=True):
        est = torch.einsum("cb,cbd->bd", w, z.double())
        tol = 4.0 * (m * (1.0 - m)).sqrt() / res.ess.sqrt()[:, None] + 0.005
        assert bool(((est - m).abs() < tol).all()), (est - m) / tol
        prior_mean = prior_probs @ zc
        assert float((m - prior_mean).abs().max()) > 0.3


def test_ais_gibbs_with_a_gaussian_observation_layer_matches_enumeration():
    """Bernoulli 3-5 latents, 8 Gaussian pixels (linear mean, variance 0.1), exact log p(x) by enumeration: 64
    chains, 200 temperatures, mean error within 0.05 (seen: 0.006), each point within 4 / sqrt(ESS); importance
    sampling from the prior is off by more than 0.3 on average (seen: 0.53)."""
    model = wakesleep.build_model(
        {
            "layers": [
                {"name": "z2", "family": "bernoulli", "dim": 3},
                {"name": "z1", "family": "bernoulli", "dim": 5, "link": "linear", "init_std": 2.0},
                {"name": "x", "family": "gaussian", "dim": 8, "link": "linear", "variance": 0.1},
            ],
            "dtype": "float64",
            "seed": 1,
        }
    )
    torch.manual_seed(0)
    x = model.sample(20)[-1]
    exact = enumerate_loglik(model, x).detach()
    res = ais_log_likelihood(model, x, chains=64, temperatures=200, seed=1)
    err = res.log_px - exact
    assert res.kernel == "gibbs" and abs(float(err.mean())) < 0.05, err
    assert bool((err.abs() < 4.0 / res.ess.sqrt()).all()), (err, res.ess)
    prior = log_likelihood(model, x, "prior", k=64, seed=1)
    assert float((prior.log_px - exact).mean()) < -0.3


def test_ais_gibbs_grouped_products_equal_one_log_per_factor(monkeypatch):
    """The sweeps multiply up to 16 factors q + p exp(s W) before one log: the same estimates (same seed, same
    flips) as one log per factor, to 1e-10 in float64; groups shrink when the weights are large, and float32
    models with weights above 64 run in float64."""
    from wakesleep.eval import _ais_gibbs as ais

    model = _sbn(dims=(2, 3, 32), scale=1.0)
    torch.manual_seed(0)
    x = model.sample(8)[-1]
    chain = ais._BernoulliChain(list(model.layers.values()), torch.float64)
    assert chain.group == {0: 1, 1: 16}  # 3 units cannot be halved; 32 = 16 x 2
    grouped = ais_log_likelihood(model, x, chains=8, temperatures=20, seed=3, return_samples=True)
    monkeypatch.setattr(ais, "GIBBS_GROUP", 1)
    single = ais_log_likelihood(model, x, chains=8, temperatures=20, seed=3, return_samples=True)
    assert torch.allclose(grouped.log_weights, single.log_weights, rtol=0.0, atol=1e-10)
    assert all(torch.equal(a, b) for a, b in zip(grouped.samples, single.samples, strict=True))
    monkeypatch.undo()
    with torch.no_grad():
        model.layers["x"].link.weight.mul_(20.0)  # |W| up to about 160: groups of 2 keep products below exp(512)
        big = ais._BernoulliChain(list(model.layers.values()), torch.float64)
        assert big.group[1] < 16
        assert ais._BernoulliChain(list(model.float().layers.values()), torch.float32).dtype == torch.float64


def test_ais_gibbs_is_reproducible_and_batches_do_not_matter_statistically():
    model = _sbn(dims=(2, 3, 10), scale=1.0)
    torch.manual_seed(0)
    x = model.sample(6)[-1]
    a = ais_log_likelihood(model, x, chains=16, temperatures=30, seed=5)
    b = ais_log_likelihood(model, x, chains=16, temperatures=30, seed=5)
    assert torch.equal(a.log_px, b.log_px)
    c = ais_log_likelihood(model, x, chains=16, temperatures=30, seed=5, batch_size=4)
    assert c.log_px.shape == (6,) and bool(torch.isfinite(c.log_px).all())
