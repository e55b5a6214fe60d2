"""LayeredProposal: shapes, densities against torch.distributions, sampling frequencies, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as D

import wakesleep
from wakesleep.algorithms.proposals import LayeredProposal
from wakesleep.errors import WakesleepError


def mixed_model():
    """mog top -> categorical -> gamma -> laplace -> gaussian x: every supported proposal kind."""
    cfg = {
        "layers": [
            {"name": "z4", "family": "mog", "dim": 2},
            {"name": "z3", "family": "categorical", "dim": 2, "categories": 3, "link": "linear"},
            {"name": "z2", "family": "gamma", "dim": 3, "link": "softplus_linear"},
            {"name": "z1", "family": "bernoulli", "dim": 2, "link": "linear"},
            {"name": "x", "family": "gaussian", "dim": 4, "link": "linear"},
        ],
        "seed": 0,
        "dtype": "float64",
    }
    return wakesleep.build_model(cfg)


def gaussian_model():
    cfg = {
        "layers": [
            {"name": "z2", "family": "gaussian", "dim": 2},
            {"name": "z1", "family": "laplace", "dim": 3, "link": "softplus_linear"},
            {"name": "x", "family": "gaussian", "dim": 4, "link": "linear"},
        ],
        "seed": 0,
        "dtype": "float64",
    }
    return wakesleep.build_model(cfg)


def test_shapes_kinds_and_log_prob_consistency():
    model = mixed_model()
    q = LayeredProposal(model, hidden=(7,))
    assert q.kinds == ["gaussian", "categorical", "lognormal", "bernoulli"]
    assert not q.reparameterized
    x = model.sample(5)[-1]
    zs, log_q = q.sample(x, 3)
    assert [tuple(z.shape) for z in zs] == [(3, 5, 2), (3, 5, 2), (3, 5, 3), (3, 5, 2)]
    assert log_q.shape == (3, 5) and log_q.dtype == torch.float64
    assert torch.allclose(log_q, q.log_prob(x, zs))
    # the model accepts the particles
    assert model.log_joint(x, zs).shape == (3, 5)
    # categorical codes are valid integers, gamma-layer values positive, bernoulli values binary
    assert set(zs[1].unique().tolist()) <= {0.0, 1.0, 2.0}
    assert (zs[2] > 0).all() and set(zs[3].unique().tolist()) <= {0.0, 1.0}
    # [B, D] latents (no particle axis) work too
    assert q.log_prob(x, [z[0] for z in zs]).shape == (5,)


def test_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    model = mixed_model()
    q = LayeredProposal(model, hidden=())
    x = model.sample(4)[-1]
    zs, log_q = q.sample(x, 2)
    outs = q.layer_params(x, zs)  # top first
    expected = torch.zeros_like(log_q)
    for factor, out, z in zip(q.factors[::-1], outs, zs, strict=True):
        if factor.kind == "gaussian":
            loc, log_std = out.chunk(2, -1)
            expected += D.Normal(loc, log_std.exp()).log_prob(z).sum(-1)
        elif factor.kind == "lognormal":
            loc, log_std = out.chunk(2, -1)
            expected += D.LogNormal(loc, log_std.exp()).log_prob(z).sum(-1)
        elif factor.kind == "bernoulli":
            expected += D.Bernoulli(logits=out).log_prob(z).sum(-1)
        else:
            expected += D.Categorical(logits=out.reshape(*out.shape[:-1], 2, 3)).log_prob(z).sum(-1)
    assert torch.allclose(log_q, expected, atol=1e-10)


def test_bernoulli_sampling_frequencies():
    """First-layer frequencies against sigmoid(logits): z-test with n = 20000 particles, |z| < 5."""
    torch.manual_seed(1)
    cfg = {
        "layers": [
            {"name": "z1", "family": "bernoulli", "dim": 3},
            {"name": "x", "family": "bernoulli", "dim": 4, "link": "linear"},
        ],
        "dtype": "float64",
    }
    model = wakesleep.build_model(cfg)
    q = LayeredProposal(model, hidden=())
    x = model.sample(2)[-1]
    n = 20000
    zs, _ = q.sample(x, n)
    p = torch.sigmoid(q.factors[0].net(x))
    freq = zs[0].mean(0)
    z = (freq - p) / torch.sqrt(p * (1 - p) / n)
    assert z.abs().max() < 5


def test_reparameterised_sampling_carries_gradients():
    model = gaussian_model()
    q = LayeredProposal(model)
    assert q.reparameterized and q.kinds == ["gaussian", "gaussian"]
    x = model.sample(3)[-1]
    zs, log_q = q.sample(x, 4)
    assert all(z.requires_grad for z in zs)
    (model.log_joint(x, zs) - log_q).mean().backward()
    assert all(p.grad is not None for p in q.parameters())
    zs2, lq2 = q.sample(x, 4, reparameterize=False)
    assert not any(z.requires_grad for z in zs2) and lq2.requires_grad


def test_gaussian_sampling_moments():
    torch.manual_seed(2)
    model = gaussian_model()
    q = LayeredProposal(model, hidden=())
    x = model.sample(1)[-1]
    n = 40000
    zs, _ = q.sample(x, n)
    loc, log_std = q.factors[0].net(x).chunk(2, -1)
    m = zs[1].mean(0)
    assert ((m - loc).abs() / (log_std.exp() / math.sqrt(n))).max() < 5
    assert torch.allclose(zs[1].std(0), log_std.exp(), rtol=0.03)


def test_parameters_are_recognition_only_and_follow_dtype():
    model = gaussian_model()
    q = LayeredProposal(model)
    names = [n for n, _ in q.named_parameters()]
    assert names and all(n.startswith("factors.") for n in names)
    assert all(p.dtype == torch.float64 for p in q.parameters())


def test_mean_field_propagates_means():
    cfg = {
        "layers": [
            {"name": "z2", "family": "bernoulli", "dim": 2},
            {"name": "z1", "family": "bernoulli", "dim": 3, "link": "linear"},
            {"name": "x", "family": "bernoulli", "dim": 4, "link": "linear"},
        ],
        "dtype": "float64",
    }
    model = wakesleep.build_model(cfg)
    q = LayeredProposal(model, hidden=())
    x = model.sample(5)[-1]
    q1 = torch.sigmoid(q.factors[0].net(x))
    q2 = torch.sigmoid(q.factors[1].net(q1))  # eq. 9: the mean, not a sample, feeds the next layer
    top, bottom = q.mean_field(x)
    assert torch.allclose(top, q2) and torch.allclose(bottom, q1)


def test_errors():
    cfg = {
        "layers": [
            {"name": "z1", "family": "poisson", "dim": 2},
            {"name": "x", "family": "gaussian", "dim": 2, "link": "linear"},
        ],
    }
    with pytest.raises(WakesleepError, match="count"):
        LayeredProposal(wakesleep.build_model(cfg))
    with pytest.raises(NotImplementedError):
        LayeredProposal(gaussian_model(), structure="top_down")
    with pytest.raises(WakesleepError, match="structure"):
        LayeredProposal(gaussian_model(), structure="sideways")
    with pytest.raises(WakesleepError, match="activation"):
        LayeredProposal(gaussian_model(), activation="swish")
    with pytest.raises(WakesleepError):
        wakesleep.build_algorithm("rws", gaussian_model(), q_update="never")
    with pytest.raises(WakesleepError):
        wakesleep.build_algorithm("vimco", gaussian_model(), k=1)
    with pytest.raises(WakesleepError, match="sigmoid belief"):
        wakesleep.build_algorithm("wake_sleep", gaussian_model(), variant="mean_field")


@pytest.mark.parametrize("name", ["wake_sleep", "rws", "vimco", "bbvi"])
def test_algorithms_on_continuous_model_and_checkpoint_roundtrip(name):
    """Score-function/importance-weighted algorithms run on real-valued latents too; state_dict round-trips."""
    torch.manual_seed(3)
    model = gaussian_model()
    algo = wakesleep.build_algorithm(name, model)
    x = model.sample(8)[-1]
    grads = algo.wake_gradient(x)
    assert set(grads) == {n for n, _ in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values())
    info = algo.step_recognition(x)
    assert all(math.isfinite(v) for v in info.values())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in algo.recognition_parameters())
    other = wakesleep.build_algorithm(name, gaussian_model())
    other.load_state_dict(algo.state_dict())
    for a, b in zip(algo.proposal.parameters(), other.proposal.parameters(), strict=True):
        assert torch.equal(a, b)
