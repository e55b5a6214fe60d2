"""Each family: log density equals torch.distributions; grad A(eta) equals the Monte Carlo mean of S(x)."""

import math

import pytest
import torch

from wakesleep.families import FAMILIES, ExponentialFamily, MixtureOfGaussians


def _eta(name, gen):
    d = 3
    if name == "gaussian":
        return FAMILIES[name]().natural_from_param(
            torch.randn(d, generator=gen, dtype=torch.float64),
            {"log_var": torch.randn(d, generator=gen, dtype=torch.float64)},
        )
    if name == "laplace":
        return FAMILIES[name]().natural_from_param(torch.rand(d, generator=gen, dtype=torch.float64) + 0.5, {})
    if name == "bernoulli":
        return FAMILIES[name]().natural_from_param(torch.randn(d, generator=gen, dtype=torch.float64), {})
    if name == "poisson":
        return FAMILIES[name]().natural_from_param(3 * torch.rand(d, generator=gen, dtype=torch.float64) + 0.5, {})
    if name == "gamma":
        return FAMILIES[name]().natural_from_param(
            torch.rand(d, generator=gen, dtype=torch.float64) + 0.5,
            {"log_shape": torch.randn(d, generator=gen, dtype=torch.float64)},
        )
    if name == "categorical":
        return FAMILIES[name](4).natural_from_param(torch.randn(d * 4, generator=gen, dtype=torch.float64), {})
    raise KeyError(name)


def _family(name):
    return FAMILIES[name](4) if name == "categorical" else FAMILIES[name]()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_log_prob_matches_torch_distributions(name):
    gen = torch.Generator().manual_seed(1)
    fam, eta = _family(name), _eta(name, gen)
    dist = fam.to_distribution(eta)
    x = dist.sample((50,))
    torch.testing.assert_close(fam.log_prob(x, eta), dist.log_prob(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_mean_parameters_match_monte_carlo_mean_of_sufficient_statistics(name):
    gen = torch.Generator().manual_seed(2)
    fam, eta = _family(name), _eta(name, gen)
    n = 200_000
    x = fam.sample(eta.expand(n, *eta.shape), generator=gen)
    s = fam.sufficient_statistics(x)
    mc, se = s.mean(0), s.std(0) / math.sqrt(n)
    mu = fam.mean_parameters(eta)
    assert ((mu - mc).abs() <= 5 * se + 1e-12).all(), (mu, mc, se)
    # the analytic mean parameters equal autograd of the log-normaliser (the protocol's default)
    torch.testing.assert_close(mu, ExponentialFamily.mean_parameters(fam, eta))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_sampler_agrees_with_torch_distribution(name):
    """Our sampler and torch's draw from the same law: compare means of S(x) (5 standard errors)."""
    gen = torch.Generator().manual_seed(3)
    fam, eta = _family(name), _eta(name, gen)
    n = 100_000
    ours = fam.sufficient_statistics(fam.sample(eta.expand(n, *eta.shape), generator=gen))
    theirs = fam.sufficient_statistics(fam.to_distribution(eta).sample((n,)))
    se = (ours.var(0) / n + theirs.var(0) / n).sqrt()
    assert ((ours.mean(0) - theirs.mean(0)).abs() <= 5 * se + 1e-12).all()


def test_mixture_of_gaussians_matches_torch_mixture():
    prior = MixtureOfGaussians(
        torch.tensor([[3.0, 0.0], [-3.0, 1.0]], dtype=torch.float64), 0.5, torch.tensor([0.3, 0.7], dtype=torch.float64)
    )
    z = prior.sample(1000)
    torch.testing.assert_close(prior.log_prob(z), prior.to_distribution().log_prob(z))
    assert abs(float((z[:, 0] > 0).double().mean()) - 0.3) < 5 * math.sqrt(0.21 / 1000)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_own_samples_lie_in_the_support(name):
    """What a family draws passes its support check (as float64 and float32 data), so data checks agree."""
    gen = torch.Generator().manual_seed(4)
    fam, eta = _family(name), _eta(name, gen)
    x = fam.sample(eta.expand(500, *eta.shape), generator=gen)
    assert fam.support_violation(x.numpy()) is None
    assert fam.support_violation(x.float().numpy()) is None
    assert fam.support_violation(x.numpy()[:1, :1] + 0.5) is None or name not in ("gaussian", "laplace")
