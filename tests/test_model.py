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


def test_init_from_a_runs_safetensors(tmp_path):
    """``model.init`` may name a trained run's ``model.safetensors``: every tensor is copied."""
    from wakesleep.io import save_safetensors

    trained = wakesleep.build_model({**PAPER, "seed": 7})
    save_safetensors(trained, tmp_path / "model.safetensors")
    model = wakesleep.build_model({**PAPER, "init": str(tmp_path / "model.safetensors")})
    for (name, a), b in zip(trained.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    (tmp_path / "bad.safetensors").write_text("not a tensor file")
    with pytest.raises(wakesleep.WakesleepError, match="model.init"):
        wakesleep.build_model({**PAPER, "init": str(tmp_path / "bad.safetensors")})


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
        # mistakes that once gave tracebacks (or passed silently)
        (lambda c: c["layers"][2].update(family="categorical"), "model.layers[2] (x).categories"),
        (lambda c: c["layers"][2].update(family=["gaussian"]), "model.layers[2] (x).family"),
        (lambda c: c.update(seed=2**70), "model.seed"),
        (lambda c: c.update(seed=-1), "model.seed"),
        (lambda c: c["layers"][0].update(std=float("nan")), "model.layers[0] (z2).std"),
        (lambda c: c["layers"][0].update(means=[[3.0], [-3.0, 1.0]]), "model.layers[0] (z2).means"),
        (lambda c: c["layers"][0].update(weights=[1.0, "a"]), "model.layers[0] (z2).weights[1]"),
        (lambda c: c["layers"][2].update(variance="big"), "model.layers[2] (x).variance"),
        (lambda c: c["layers"][2].update(variance=float("inf")), "model.layers[2] (x).variance"),
        (lambda c: c["layers"][2].update(learn_variance="no"), "model.layers[2] (x).learn_variance"),
        (lambda c: c["layers"][2].update(mean=1.0), "model.layers[2] (x).mean"),  # top-only key
        (lambda c: c["layers"][2].update(hidden=[]), "model.layers[2] (x).hidden"),
        (lambda c: c["layers"][2].update(dim=10**12), "model.layers[2] (x)"),
        (lambda c: c["layers"][2].update(name="train"), "model.layers[2].name"),
        (lambda c: c["layers"][1].update(init_std=1e300), "model: layers.z1.link.weight is not finite"),
        (lambda c: c["layers"].__setitem__(1, ["z1", "laplace", 2]), "model.layers[1]"),
        (lambda c: c.update(layers={"z1": {"family": "laplace"}}), "model.layers"),
        (lambda c: c.update(init=3), "model.init"),
    ],
)
def test_bad_model_config_names_the_field(mutate, needle):
    import copy

    cfg = copy.deepcopy(PAPER)
    mutate(cfg)
    with pytest.raises(wakesleep.WakesleepError) as err:
        wakesleep.build_model(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_layer_options_come_from_the_family():
    """Each family's keys, defaults and top-only keys (issue 18): the builder has no table of its own."""
    from wakesleep.families import FAMILIES, PRIORS
    from wakesleep.schema import fields_of

    keys = {name: set(fields_of(cls.Options)) for name, cls in {**FAMILIES, **PRIORS}.items()}
    assert keys["gaussian"] == {"variance", "learn_variance", "mean", "learn"}
    assert keys["categorical"] == {"categories", "learn"}
    assert keys["mog"] == {"means", "std", "weights", "learn"}
    for name, cls in {**FAMILIES, **PRIORS}.items():
        assert set(cls.top_only) <= keys[name] and "learn" in cls.top_only
    model = wakesleep.build_model(
        {
            "layers": [
                {"name": "z", "family": "gamma", "dim": 2, "mean": 2.0, "shape": 3.0, "learn_shape": False},
                {"name": "x", "family": "categorical", "dim": 3, "categories": 4, "link": "mlp", "hidden": [5]},
            ]
        }
    )
    z = model.layers["z"]
    torch.testing.assert_close(torch.nn.functional.softplus(z.link.value), torch.full((2,), 2.0))
    torch.testing.assert_close(z.log_shape, torch.full((2,), np.log(3.0), dtype=torch.float32))
    assert "layers.z.log_shape" not in dict(model.named_parameters())
    assert model.layers["x"].family.categories == 4 and model.layers["x"].link.net[-1].out_features == 12
