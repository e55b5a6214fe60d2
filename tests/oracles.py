"""Exact answers used as test oracles: Gaussian marginals of linear-Gaussian chains, enumeration of small
binary models, quadrature of a tiny eq. 13 model."""

from __future__ import annotations

import itertools
import math

import torch

import wakesleep


def linear_gaussian_config(dims=(2, 3, 4), bias=True, seed=0, top_learn=False):
    """z2 ~ N(0, I) -> z1 | z2 ~ N(A z2 + a, D1) -> x | z1 ~ N(C z1 + c, D0)."""
    d2, d1, dx = dims
    return {
        "layers": [
            {"name": "z2", "family": "gaussian", "dim": d2, "learn": top_learn, "learn_variance": top_learn},
            {"name": "z1", "family": "gaussian", "dim": d1, "link": "linear", "bias": bias},
            {"name": "x", "family": "gaussian", "dim": dx, "link": "linear", "bias": bias},
        ],
        "seed": seed,
        "dtype": "float64",
    }


def linear_gaussian_marginal(model):
    """Mean and covariance of x under a linear-Gaussian chain built from ``linear_gaussian_config`` (differentiable)."""
    layers = list(model.layers.values())
    top = layers[0]
    mean = top.link()
    cov = torch.diag(torch.exp(top.log_var))
    for layer in layers[1:]:
        w = layer.link.weight
        b = layer.link.bias if layer.link.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        mean = w @ mean + b
        cov = w @ cov @ w.T + torch.diag(torch.exp(layer.log_var))
    return mean, cov


def linear_gaussian_loglik(model, x):
    mean, cov = linear_gaussian_marginal(model)
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(x)


def enumerate_loglik(model, x):
    """log p(x) of a model whose latents are all Bernoulli, by enumerating every configuration."""
    dims = model.dims[:-1]
    total = sum(dims)
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=total)), dtype=x.dtype)  # [C, total]
    zs, start = [], 0
    for d in dims:
        zs.append(configs[:, start : start + d].unsqueeze(1))  # [C, 1, d]
        start += d
    lj = model.log_joint(x.unsqueeze(0), zs)  # [C, B]
    return torch.logsumexp(lj, dim=0)


def exact_gradient(model, x, loglik_fn):
    """Gradient of (1/B) sum_b log p(x_b), keyed by parameter name."""
    names, params = zip(*model.named_parameters(), strict=True)
    ll = loglik_fn(model, x).mean()
    grads = torch.autograd.grad(ll, params, allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g) for n, p, g in zip(names, params, grads, strict=True)}


def cosine(a, b):
    a, b = a.flatten(), b.flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def perturb(model, scale=0.5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def build(cfg):
    return wakesleep.build_model(cfg)


def sbn_config(dims, seed):
    """Sigmoid belief network with layer sizes ``dims`` (top first, observation last), float64."""
    names = [f"z{len(dims) - 1 - i}" for i in range(len(dims) - 1)] + ["x"]
    layers = [{"name": names[0], "family": "bernoulli", "dim": dims[0]}]
    for name, d in zip(names[1:], dims[1:], strict=True):
        layers.append({"name": name, "family": "bernoulli", "dim": d, "link": "linear", "init_std": 2.0})
    return {"layers": layers, "seed": seed, "dtype": "float64"}


def linear_gaussian_problem(n_points: int = 100):
    """``n_points`` points from the linear-Gaussian model and the model with every parameter moved by N(0, 0.5^2)."""
    truth = build(linear_gaussian_config())
    torch.manual_seed(10)
    x = truth.sample(n_points)[-1]
    model = build(linear_gaussian_config())
    perturb(model, 0.5, seed=3)
    return model, x


def linear_gaussian_posterior_mean(model, x):
    """Exact E[z_1 | x] of the two-layer linear-Gaussian model: mu_1 + Cov(z_1, x) Cov(x)^-1 (x - mu_x)."""
    l2, l1, lx = list(model.layers.values())
    with torch.no_grad():
        a, c = l1.link.weight, lx.link.weight
        cov1 = a @ torch.diag(l2.log_var.exp()) @ a.T + torch.diag(l1.log_var.exp())
        mu1 = a @ l2.link() + l1.link.bias
        mux, covx = linear_gaussian_marginal(model)
        return mu1 + (x - mux) @ torch.linalg.solve(covx, c @ cov1)


def tiny_patch_model_config(seed=2):
    """The eq. 13 model with D2 = D1 = 1 and two pixels: mixture top at +-3 (std 0.1), Laplace z_1 with scale
    softplus(B z_2), Gaussian x with mean Lambda z_1."""
    return {
        "layers": [
            {"name": "z2", "family": "mog", "dim": 1, "means": [[3.0], [-3.0]], "std": 0.1, "learn": False},
            {"name": "z1", "family": "laplace", "dim": 1, "link": "softplus_linear", "bias": False},
            {"name": "x", "family": "gaussian", "dim": 2, "link": "linear", "bias": False},
        ],
        "dtype": "float64",
        "seed": seed,
    }


def tiny_patch_loglik(model, x, z2_grid, z1_grid):
    """log p(x) of a ``tiny_patch_model_config`` model by 2-d quadrature of its own log_joint over the grids."""
    g2, g1 = torch.meshgrid(z2_grid, z1_grid, indexing="ij")
    log_cell = math.log(float(z1_grid[1] - z1_grid[0]) * float(z2_grid[1] - z2_grid[0]))
    with torch.no_grad():
        per_row = [
            torch.logsumexp(model.log_joint(row.expand(g1.numel(), 2), [g2.reshape(-1, 1), g1.reshape(-1, 1)]), 0)
            for row in x
        ]
    return torch.stack(per_row) + log_cell


def assert_same_training_state(a, b) -> None:
    """Two trainers' algorithm states and model parameters are bit for bit equal (resume tests)."""
    sa, sb = a.algorithm.state_dict(), b.algorithm.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for (na, pa), (nb, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb), na
