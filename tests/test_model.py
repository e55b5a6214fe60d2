"""The hierarchical model: sampling, per-layer log densities, broadcasting, dtypes, config errors."""

import numpy as np
import pytest
import torch

import wakesleep

from oracles import linear_gaussian_config, linear_gaussian_loglik

PAPER = {
    "layers": [
        {"name": "z2", "family": "mog", "dim": 1, "means": [[3.0], [-3.0]], "std": 0.1, "learn": False},
        {"name": "z1", "family": "laplace", "dim": 2, "link": "softplus_linear"},
        {"name": "x", "family": "gaussian", "dim": 2, "link": "linear"},
    ]
}


def test_sample_and_log_joint_shapes_and_per_layer_terms():
    model = wakesleep.build_model({"model": PAPER})
    zs = model.sample(7)
    assert [tuple(z.shape) for z in zs] == [(7, 1), (7, 2), (7, 2)]
    terms = model.log_joint(zs[-1], zs[:-1], per_layer=True)
    assert len(terms) == 3
    torch.testing.assert_close(sum(terms), model.log_joint(zs[-1], zs[:-1]))
    # eq. 13 by hand
    z2, z1, x = zs
    lam = model.layers["z1"].link
    scale = torch.nn.functional.softplus(z2 @ lam.weight.T + lam.bias)
    torch.testing.assert_close(terms[1], torch.distributions.Laplace(0.0, scale).log_prob(z1).sum(-1))
    # a leading particle axis broadcasts against x
    zk = [torch.randn(5, 7, 1), torch.randn(5, 7, 2)]
    assert model.log_joint(x, zk).shape == (5, 7)


def test_linear_gaussian_marginal_matches_monte_carlo():
    model = wakesleep.build_model(linear_gaussian_config())
    xs = model.sample(200_000)[-1]
    from oracles import linear_gaussian_marginal

    mean, cov = linear_gaussian_marginal(model)
    torch.testing.assert_close(xs.mean(0), mean.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(xs.T), cov.detach(), atol=0.05, rtol=0.02)
    assert torch.isfinite(linear_gaussian_loglik(model, xs[:10])).all()


def test_float32_float64_and_frozen_parameters_are_buffers():
    m32 = wakesleep.build_model(PAPER)
    m64 = wakesleep.build_model({**PAPER, "dtype": "float64"})
    assert m32.sample(3)[-1].dtype == torch.float32 and m64.sample(3)[-1].dtype == torch.float64
    names = [n for n, _ in m32.named_parameters()]
    assert "layers.z2.prior.means" not in names and "layers.x.link.weight" in names


@pytest.mark.parametrize(
    "family,extra",
    [
        ("poisson", {"link": "softplus_linear"}),
        ("gamma", {"link": "softplus_linear"}),
        ("categorical", {"categories": 3}),
        ("bernoulli", {"link": "mlp", "hidden": [8]}),
    ],
)
def test_other_families_as_observations(family, extra):
    cfg = {
        "layers": [{"name": "z1", "family": "gaussian", "dim": 2}, {"name": "x", "family": family, "dim": 4, **extra}]
    }
    model = wakesleep.build_model(cfg)
    zs = model.sample(6)
    assert torch.isfinite(model.log_joint(zs[-1], zs[:-1])).all()


def test_init_file_sets_parameters(tmp_path):
    model = wakesleep.build_model(PAPER)
    w = np.arange(4.0).reshape(2, 2)
    np.savez(tmp_path / "p.npz", **{"layers.x.link.weight": w})
    model2 = wakesleep.build_model({**PAPER, "init": str(tmp_path / "p.npz")})
    assert np.allclose(model2.layers["x"].link.weight.detach().numpy(), w)
    assert not torch.equal(model.layers["x"].link.weight, model2.layers["x"].link.weight)


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda c: c["layers"][1].update(family="gauss"), "model.layers[1] (z1).family"),
        (lambda c: c["layers"][1].update(link="quadratic"), "model.layers[1] (z1).link"),
        (lambda c: c["layers"][2].update(dim=0), "model.layers[2] (x).dim"),
        (lambda c: c["layers"][2].update(colour="red"), "model.layers[2] (x).colour"),
        (lambda c: c.update(depth=3), "model.depth"),
        (lambda c: c["layers"][1].update(link="linear"), "positive parameter"),
        (lambda c: c.update(init="/nonexistent/params.npz"), "model.init"),
    ],
)
def test_bad_model_config_names_the_field(mutate, needle):
    import copy

    cfg = copy.deepcopy(PAPER)
    mutate(cfg)
    with pytest.raises(wakesleep.WakesleepError) as err:
        wakesleep.build_model(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value)
